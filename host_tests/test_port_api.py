"""The firmware takes from the board's modules only what the ESP32 port of the oldest supported
MicroPython provides (host/esp32_port_api.json, read from that version's C source).

CPython, no VM: the firmware's source is read with `ast`. What is checked:
- `mod.NAME` and `from mod import NAME` for the board modules (module-level attributes);
- `mod.Type.NAME` (class constants such as machine.Pin.IN) and `mod.Type(...).NAME`;
- `x.NAME` where x is bound to `mod.Type(...)` (or to `Type(...)` after `from mod import Type`):
  a plain name within the function that binds it, a `self.attr` within the file. The firmware
  keeps such a binding to one type (naming convention), so `x.NAME` is a method or attribute
  of that type.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = json.loads((ROOT / "host" / "esp32_port_api.json").read_text())
MODULES = set(API["modules"])


def sources(root: Path = ROOT) -> list[Path]:
    fw, lib = sorted((root / "firmware").rglob("*.py")), sorted((root / "lib").rglob("*.py"))
    return [*fw, *lib, root / "boot.py", root / "main.py"]


class Uses(ast.NodeVisitor):
    """(module or type, name, where) of every board attribute a file takes."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.mods: dict[str, str] = {}  # local name -> board module
        self.names: dict[str, str] = {}  # local name -> "mod.Type" (from mod import Type)
        self.selfs: dict[str, str] = {}  # "self.attr" -> "mod.Type"
        self.scopes: list[dict[str, str]] = [{}]  # plain names bound to "mod.Type", per function
        self.found: list[tuple[str, str, str]] = []

    def use(self, owner: str, name: str, node: ast.AST) -> None:
        self.found.append((owner, name, f"{self.where}:{node.lineno}"))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name in MODULES:
                self.mods[a.asname or a.name] = a.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module in MODULES:
            for a in node.names:
                self.use(node.module, a.name, node)
                if f"{node.module}.{a.name}" in API["types"]:
                    self.names[a.asname or a.name] = f"{node.module}.{a.name}"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scopes.append({})
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    # "mod.Type" that an expression names (mod.Type, or Type imported from mod), or None.
    def type_named(self, e: ast.AST) -> str | None:
        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name):
            mod = self.mods.get(e.value.id)
            if mod and f"{mod}.{e.attr}" in API["types"]:
                return f"{mod}.{e.attr}"
        if isinstance(e, ast.Name):
            return self.names.get(e.id)
        return None

    # The type of the object an expression gives, when known.
    def type_of(self, e: ast.AST) -> str | None:
        if isinstance(e, ast.Call):
            return self.type_named(e.func)
        if isinstance(e, ast.Name):
            for scope in reversed(self.scopes):
                if e.id in scope:
                    return scope[e.id]
            return None
        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
            return self.selfs.get("self." + e.attr)
        return None

    def visit_Assign(self, node: ast.Assign) -> None:
        t = self.type_of(node.value) if isinstance(node.value, ast.Call) else None
        for target in node.targets:
            if isinstance(target, ast.Name):
                if t:
                    self.scopes[-1][target.id] = t
                else:
                    self.scopes[-1].pop(target.id, None)
            elif t and isinstance(target, ast.Attribute) and ast.unparse(target.value) == "self":
                self.selfs["self." + target.attr] = t
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        v = node.value
        if isinstance(v, ast.Name) and v.id in self.mods:
            self.use(self.mods[v.id], node.attr, node)
        else:
            t = self.type_named(v) or self.type_of(v)
            if t:
                self.use(t, node.attr, node)
        self.generic_visit(node)


def uses(root: Path = ROOT) -> list[tuple[str, str, str]]:
    found = []
    for f in sources(root):
        v = Uses(str(f.relative_to(root)))
        v.visit(ast.parse(f.read_text(), str(f)))
        found += v.found
    return found


def missing(root: Path = ROOT) -> list[str]:
    out = []
    for owner, name, where in uses(root):
        if owner in API["modules"]:
            have = API["modules"][owner]["attributes"]
        else:
            have = API["types"][owner]["methods"]
        if name not in have:
            out.append(f"{where}: {owner}.{name}")
    return out


def test_every_board_attribute_exists_on_the_oldest_port():
    assert missing() == []


def test_the_reader_sees_what_it_must():
    found = {(o, n) for o, n, _ in uses()}
    for want in [
        ("socket", "getaddrinfo"),
        ("errno", "EINPROGRESS"),
        ("socket.socket", "connect"),
        ("network.WLAN", "isconnected"),
        ("ssl.SSLContext", "load_verify_locations"),
        ("machine.RTC", "datetime"),
        ("esp32.Partition", "RUNNING"),
    ]:
        assert want in found, want


def test_it_catches_a_name_the_port_lacks(tmp_path):
    (tmp_path / "firmware").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "boot.py").write_text("")
    (tmp_path / "main.py").write_text("")
    (tmp_path / "firmware" / "x.py").write_text(
        "import errno\nimport network\nfrom socket import socket\n"
        "def f():\n    s = socket()\n    s.shutdown()\n    w = network.WLAN(0)\n"
        "    w.ipconfig('addr4')\n    w.scan_ex()\n    return errno.EISCONN\n"
    )
    assert missing(tmp_path) == [
        "firmware/x.py:6: socket.socket.shutdown",
        "firmware/x.py:9: network.WLAN.scan_ex",
        "firmware/x.py:10: errno.EISCONN",
    ]


def test_the_list_names_its_sources():
    assert API["micropython"] == "v1.24.0"
    for part in (API["modules"], API["types"]):
        for name, entry in part.items():
            assert entry["sources"], name
