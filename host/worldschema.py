"""The world file's schema (host/WORLD.md): what the launcher accepts before it writes world.json.

A value the simulated radio cannot use (rssi "abc", an unknown key) is refused with a short
reason instead of reaching the firmware, where every scan would fail.
"""

from __future__ import annotations

import re
from typing import Any

SECURITY = (
    "OPEN",
    "WEP",
    "WPA",
    "WPA2",
    "WPA/WPA2",
    "WPA2-ENT",
    "WPA3",
    "WPA2/WPA3",
    "WAPI",
    "OWE",
)
REFUSE = (None, "assoc", "handshake", "dhcp")
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
IPV4 = re.compile(r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)\Z")


class WorldError(ValueError):
    pass


def _int(lo: int, hi: int):
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"a whole number from {lo} to {hi}"

    return check


def _kind(t: type, what: str):
    return lambda v: None if isinstance(v, t) else what


def _pattern(rx: re.Pattern, what: str):
    return lambda v: None if isinstance(v, str) and rx.match(v) else what


def _one_of(choices: tuple):
    return lambda v: None if v in choices else "one of " + ", ".join(map(str, choices))


def _ssid(v: Any) -> str | None:
    ok = isinstance(v, str) and 1 <= len(v.encode()) <= 32
    return None if ok else "text of 1 to 32 bytes"


MS = _int(0, 600000)
IP = _pattern(IPV4, "an IPv4 address")
DHCP = {"ip": IP, "pool": IP, "mask": IP, "gateway": IP, "dns": IP}
AP = {
    "ssid": _ssid,
    "bssid": _pattern(MAC, "a MAC address aa:bb:cc:dd:ee:ff"),
    "channel": _int(1, 14),
    "rssi": _int(-127, 0),
    "security": _one_of(SECURITY),
    "password": _kind(str, "text"),
    "hidden": _kind(bool, "true or false"),
    "present": _kind(bool, "true or false"),
    "assoc_ms": MS,
    "dhcp_ms": MS,
    "wrong_key_reason": _one_of((15, 2, 202, 204, 205)),
    "refuse": _one_of(REFUSE),
    "dhcp": DHCP,
}
STATION = {
    "mac": _pattern(MAC, "a MAC address aa:bb:cc:dd:ee:ff"),
    "ip": IP,
    "ssid": _ssid,
    "key": _kind(str, "text"),
}
SOFTAP = {"stations": [STATION]}
WORLD = {
    "scan_ms": MS,
    "noap_ms": MS,
    "noap_reason": _one_of((201, 210, 211, 212)),
    "assoc_ms": MS,
    "dhcp_ms": MS,
    "aps": [AP],
    "softap": SOFTAP,
}


def check(value: Any, schema: Any, where: str) -> None:
    """Raise WorldError naming the first thing in value that schema does not allow."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise WorldError(f"{where}: must be a JSON object")
        for key, v in value.items():
            if key not in schema:
                raise WorldError(f"{where}: unknown key {key!r} (known: {', '.join(schema)})")
            check(v, schema[key], f"{where}.{key}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise WorldError(f"{where}: must be a JSON list")
        for i, v in enumerate(value):
            check(v, schema[0], f"{where}[{i}]")
    else:
        why = schema(value)
        if why:
            raise WorldError(f"{where}: {value!r} is not {why}")


def check_world(world: Any) -> None:
    check(world, WORLD, "world")
    for i, ap in enumerate(world.get("aps", [])):
        if "ssid" not in ap:
            raise WorldError(f"world.aps[{i}]: an AP needs an ssid")
    for i, st in enumerate(world.get("softap", {}).get("stations", [])):
        if "mac" not in st:
            raise WorldError(f"world.softap.stations[{i}]: a station needs a mac")


def check_ap(ap: Any) -> None:
    check(ap, AP, f"ap {ap.get('ssid')!r}" if isinstance(ap, dict) else "ap")
