"""Layer 2: MicroPython-VM scripts (host_tests/vm/test_engine_heap.py) run on the pinned VM."""

from host_tests.module import run_vm_script


def test_output_paths_allocate_nothing(mpy):
    run_vm_script(mpy, "host_tests/vm/test_engine_heap.py", "176k", "host_tests/vm")
