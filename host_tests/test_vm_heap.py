"""Layer 2: MicroPython-VM scripts (host_tests/vm/test_engine_heap.py) run on the pinned VM."""

import subprocess

from host_tests.module import REPO


def test_output_paths_allocate_nothing(mpy):
    r = subprocess.run(
        [mpy, "-X", "heapsize=176k", str(REPO / "host_tests/vm/test_engine_heap.py"), str(REPO)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"MICROPYPATH": f"{REPO}/host_tests/vm:.frozen"},
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
