"""Layer 2: MicroPython-VM scripts (host_tests/vm/) on the pinned VM: the heap's cases."""

from host_tests.module import run_vm_script


def test_output_paths_allocate_nothing(mpy):
    run_vm_script(mpy, "host_tests/vm/test_engine_heap.py", "176k", "host_tests/vm")


def test_a_fragmented_heap_gives_smaller_stream_buffers(mpy):
    run_vm_script(mpy, "host_tests/vm/test_stream_buffers.py", "320k", "host/board")


def test_an_update_that_fails_out_of_memory_ends_idle(mpy):
    run_vm_script(mpy, "host_tests/vm/test_ota_failure.py", "256k", "host/board")
