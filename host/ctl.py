"""Talk to a running virtual module's control port.

    python -m host.ctl [--state DIR] status | wake | kill | stop | world [FILE] |
                       ap SSID key=value... | ap SSID --remove

Values in key=value are JSON when they parse as JSON (rssi=-60, hidden=true), else strings.
The launcher checks every change against the world's schema (host/WORLD.md) and refuses what
does not fit it, with the reason (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any


def request(port: int, req: dict[str, Any]) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        line = s.makefile("rb").readline()
    if not line:
        raise ConnectionError("no reply from the launcher")
    return json.loads(line)


def value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host.ctl", description=__doc__.split("\n")[0])
    p.add_argument("--state", default="build/state", help="the launcher's state folder")
    p.add_argument("op", choices=["status", "wake", "kill", "stop", "world", "ap"])
    p.add_argument("args", nargs="*", help="world: a file to load; ap: SSID key=value...")
    p.add_argument("--remove", action="store_true", help="ap: remove the access point")
    a = p.parse_args(argv)
    try:
        port = int((Path(a.state) / "control.port").read_text())
    except (OSError, ValueError):
        p.error(f"no launcher running with state folder {a.state}")
    req: dict[str, Any] = {"op": a.op}
    if a.op == "world" and a.args:
        req["world"] = json.loads(Path(a.args[0]).read_text())
    elif a.op == "ap":
        if not a.args:
            p.error("ap needs an SSID")
        req["ssid"] = a.args[0]
        if a.remove:
            req["remove"] = True
        else:
            pairs = [arg.partition("=") for arg in a.args[1:]]
            if any(not eq for _, eq, _ in pairs):
                p.error("ap settings are key=value")
            req["set"] = {k: value(v) for k, _, v in pairs}
    reply = request(port, req)
    if not reply.get("ok"):
        print(f"refused: {reply.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
