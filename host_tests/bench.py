"""Benchmarks on the virtual module: python -m host_tests.bench (make bench).

Latency of AT commands through the pty beside a baseline measured in the same run (a bare relay
on the same path: pty, launcher, MicroPython VM and back, with a firmware that only echoes
lines), and the firmware's heap in use at stages of a workload. Prints one table.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from host_tests.module import OK, REPO, Module

N = 1000
VM_HEAP = int(110 * 1024 * 1.6)  # HEAP=110k, scaled for the 64-bit VM (host/launcher.py)


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3


def round_trips(send, n: int = N) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        send()
        times.append(time.perf_counter() - t)
    return percentiles(times)


def baseline() -> tuple[float, float]:
    with Module(root=REPO / "host_tests" / "fake_fw", world=None) as m:
        m.wait_booted(1)

        def relay() -> None:
            m.write(b"AT\r\n")
            m.read_until(b"AT\r\n", timeout=2)

        relay()
        return round_trips(relay)


def used(m: Module) -> int:
    reply = m.cmd("AT+MEMFREE")
    return VM_HEAP - int(reply.split(b":")[1].split(b"\r")[0])


def echo_server() -> int:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        c, _ = srv.accept()
        while data := c.recv(4096):
            c.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def main() -> int:
    base = baseline()
    rows = [("bare relay (baseline)", *base, 1.0)]
    with Module() as m:
        m.sync()
        m.cmd("AT+UARTE=OFF")
        heap = [("after start", used(m))]
        for line in ("AT", "AT+FWVER?"):
            p50, p99 = round_trips(lambda line=line: m.cmd(line))
            rows.append((line, p50, p99, p50 / base[0]))
        m.cmd("AT+WJAP=EMW-TEST,12345678")
        m.read_until(b"STATION_UP\r\n", timeout=10)
        heap.append(("Wi-Fi joined", used(m)))
        m.cmd(f"AT+CIPSTART=0,tcp_client,127.0.0.1,{echo_server()}")
        m.read_until(b"CONNECTED\r\n")
        m.write(b"AT+CIPSEND=0,1000\r" + bytes(1000))
        m.read_until(OK)
        m.read_until(b"+CIPEVENT:SOCKET")
        time.sleep(0.3)
        m.drain()
        heap.append(("TCP link, 1000 bytes echoed", used(m)))
    print(f"{'command':<24}{'p50 ms':>9}{'p99 ms':>9}{'p50/baseline':>14}   ({N} each)")
    for name, p50, p99, ratio in rows:
        print(f"{name:<24}{p50:>9.3f}{p99:>9.3f}{ratio:>14.2f}")
    print(f"\nheap in use (VM heap {VM_HEAP} bytes = HEAP 110k x 1.6 for 64-bit)")
    for stage, n in heap:
        print(f"  {stage:<30}{n:>8} bytes")
    print(f"  {'peak of these':<30}{max(n for _, n in heap):>8} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
