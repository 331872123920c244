"""Read and write files on a virtual module's littlefs flash image (STATE/flash.img), through
the MicroPython VM and host/start.py's block device, while the module is stopped or killed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from host_tests.module import REPO, virtual_only

MICROPYTHON = Path(sys.executable).parent / "micropython"

_SCRIPT = """
import sys, vfs, os
sys.path.insert(0, {host!r})
from start import FileBlockDev, _FLASH_SIZE
vfs.mount(vfs.VfsLfs2(FileBlockDev({img!r}, _FLASH_SIZE)), "/flash")
{body}
"""


def _run(state_dir: Path, body: str) -> str:
    virtual_only("the module's flash image")
    script = _SCRIPT.format(
        host=str(REPO / "host"), img=str(Path(state_dir) / "flash.img"), body=body
    )
    r = subprocess.run(
        [str(MICROPYTHON), "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def write(state_dir: Path, path: str, data: bytes) -> None:
    _run(state_dir, f"f = open('/flash/{path}', 'wb'); f.write({data!r}); f.close()")


def read(state_dir: Path, path: str) -> bytes | None:
    out = _run(
        state_dir,
        f"""
try:
    print(repr(open('/flash/{path}', 'rb').read()))
except OSError:
    print('None')
""",
    )
    return eval(out.strip())
