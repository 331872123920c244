"""Run the simulated-radio test script (host_tests/vm/test_network_sim.py) on the MicroPython VM."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
SCRIPT = ROOT / "host_tests" / "vm" / "test_network_sim.py"


def test_network_sim(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["MICROPYPATH"] = f"{ROOT / 'host' / 'board'}:.frozen"
    env["EMW_WORLD"] = str(tmp_path / "world.json")
    proc = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=256k", str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.rstrip().endswith("OK"), out
