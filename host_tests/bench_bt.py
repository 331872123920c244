"""Bluetooth serial throughput on the virtual module: python -m host_tests.bench_bt.

The module's NUS link to a bumble phone (host_tests.test_bt.Phone) on the virtual radio, both
ways: host -> phone as AT+BTSEND=<n> blocks (the phone counts notification bytes) and phone ->
host as writes with response to the RX characteristic (the pty gets +BTEVENT:DATA events), then
the same in transparent mode (AT+BTSENDRAW, left with +++). The UART is unpaced (a pty at
memory speed), so this measures the firmware and the virtual radio, not a baud rate. Prints one
table.
"""

from __future__ import annotations

import sys
import threading
import time

from host_tests.module import ERROR, OK, Module
from host_tests.test_bt import Phone, hci_port, paired

TOTAL = 256 * 1024  # bytes per run
STALL = 5.0  # seconds without progress before a run counts the rest as lost
EVENT = b"\r\n+BTEVENT:DATA,"
DATA = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(TOTAL))


def wait_phone(p: Phone, n: int) -> None:
    """Until the phone has n bytes, or nothing more came for STALL seconds."""
    last, since = -1, time.monotonic()
    while len(p.received) < n:
        if len(p.received) != last:
            last, since = len(p.received), time.monotonic()
        elif time.monotonic() - since > STALL:
            return
        time.sleep(0.002)


def read_events(m: Module, n: int) -> bytes:
    """Payloads of +BTEVENT:DATA,<len>,<data> until n bytes, or a stall; nothing else allowed."""
    buf, out = m._buf, bytearray()
    while len(out) < n:
        comma = buf.find(b",", len(EVENT)) if buf.startswith(EVENT) else -1
        if comma > 0:
            size = int(buf[len(EVENT) : comma])
            end = comma + 1 + size + 2
            if len(buf) >= end:
                if buf[end - 2 : end] != b"\r\n":
                    raise AssertionError(f"event not closed: {bytes(buf[end - 10 : end])!r}")
                out += buf[comma + 1 : end - 2]
                del buf[:end]
                continue
        elif len(buf) >= len(EVENT) and not buf.startswith(EVENT):
            raise AssertionError(f"unexpected output {bytes(buf[:40])!r}")
        if not m._fill(STALL):
            break
    return bytes(out)


def read_raw(m: Module, n: int) -> bytes:
    """n raw bytes from the pty, or what came before a stall."""
    while len(m._buf) < n and m._fill(STALL):
        pass
    out = bytes(m._buf[:n])
    del m._buf[:n]
    return out


def result(name: str, t: float, got: bytes) -> tuple[str, float, int, bool]:
    """(name, bytes/s, bytes lost, what came is the start of what was sent)."""
    return name, len(got) / (time.perf_counter() - t), TOTAL - len(got), DATA.startswith(got)


def btsend(m: Module, p: Phone, n: int) -> tuple[str, float, int, bool]:
    p.received.clear()
    t = time.perf_counter()
    for i in range(0, TOTAL, n):
        m.write(b"AT+BTSEND=%d\r" % n)
        m.read_until(b">", 10)
        m.write(DATA[i : i + n])
        reply = m.read_until_any([OK, ERROR], 10)
        if not reply.endswith(OK):
            raise AssertionError(f"AT+BTSEND after {i} bytes: {reply!r}")
    wait_phone(p, TOTAL)
    return result(f"AT+BTSEND={n}", t, bytes(p.received))


def phone_writes(p: Phone) -> threading.Thread:
    # Writes with response of MTU-3 bytes, one after another (Phone.write), in a thread.
    th = threading.Thread(target=p.write, args=(DATA,), daemon=True)
    th.start()
    return th


def events(m: Module, p: Phone) -> tuple[str, float, int, bool]:
    t = time.perf_counter()
    th = phone_writes(p)
    got = read_events(m, TOTAL)
    row = result("+BTEVENT:DATA", t, got)
    th.join(30)
    return row


def transparent(m: Module, p: Phone) -> list[tuple[str, float, int, bool]]:
    assert m.cmd("AT+UARTFOMAT=1024,50").endswith(OK)  # 1024 divides TOTAL: no idle cuts
    assert m.cmd("AT+BTSENDRAW").endswith(OK)
    p.received.clear()
    t = time.perf_counter()
    for i in range(0, TOTAL, 1024):
        m.write(DATA[i : i + 1024])
    wait_phone(p, TOTAL)
    rows = [result("BTSENDRAW", t, bytes(p.received))]
    t = time.perf_counter()
    th = phone_writes(p)
    rows.append(result("BTSENDRAW", t, read_raw(m, TOTAL)))
    th.join(30)
    time.sleep(0.2)
    m.drain()
    m.write(b"+++")  # alone, with silence around it
    assert m.read_until(OK, 3) == OK
    assert m.cmd("AT").endswith(OK)
    return rows


def main() -> int:
    with Module() as m:
        m.sync()
        p = Phone(hci_port(m))
        try:
            paired(m, p)
            mtu = p.connection.att_mtu
            out = [btsend(m, p, n) for n in (1024, 4096)]
            into = [events(m, p)]
            raw_out, raw_in = transparent(m, p)
            out.append(raw_out)
            into.append(raw_in)
            p.disconnect()
        finally:
            p.close()
    print(f"BLE serial (NUS) with a bumble phone: {TOTAL // 1024} KB per run, unpaced pty,")
    print(f"ATT MTU {mtu} ({mtu - 3}-byte notifications and writes); lost must be 0")
    print(f"{'direction':<16}{'path':<16}{'KB/s':>9}{'lost':>7}{'intact':>8}")
    for direction, rows in (("host -> phone", out), ("phone -> host", into)):
        for name, rate, lost, intact in rows:
            ok = "yes" if intact else "NO"
            print(f"{direction:<16}{name:<16}{rate / 1024:>9.1f}{lost:>7}{ok:>8}")
    return int(any(lost or not intact for _, _, lost, intact in out + into))


if __name__ == "__main__":
    sys.exit(main())
