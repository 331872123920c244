"""Benchmarks on the virtual module: python -m host_tests.bench (make bench).

Latency of AT commands through the pty beside a baseline measured in the same run (a bare relay
on the same path: pty, launcher, MicroPython VM and back, with a firmware that only echoes
lines), the firmware's heap in use at stages of a workload and its peak over every feature at
once, and the VM's CPU time (user + system of the MicroPython process) per AT round trip and per
relayed MB. Prints tables, each figure beside the previous run's (build/bench.json).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from host.launcher import WORD_SCALE_64
from host_tests import test_memory
from host_tests.module import OK, REPO, Module
from host_tests.test_bt import Phone, hci_port

N = 1000
VM_HEAP = int(110 * 1024 * WORD_SCALE_64)  # HEAP=110k on the measured model (host/launcher.py)
PEAK_HEAP = "512k"  # the all-features session's heap: room for all of it, to see its peak
LAST = REPO / "build" / "bench.json"  # this run's figures, shown beside the next run's


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


def used(m: Module, vm_heap: int = VM_HEAP) -> int:
    reply = m.cmd("AT+MEMFREE")
    return vm_heap - int(reply.split(b":")[1].split(b"\r")[0])


def vm_cpu(m: Module) -> float:
    """User + system CPU seconds of the module's MicroPython process (the launcher's child)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, _, rest = text.partition(" (")[2].rpartition(") ")
        fields = rest.split()  # from field 3 (state) on: ppid is [1], utime [11], stime [12]
        if comm == "micropython" and int(fields[1]) == m.proc.pid:
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError("no MicroPython process under the launcher")


def peak_session() -> int:
    """Peak heap in use (VM bytes) over every feature in turn and then all at once, sampled
    after each step with AT+MEMFREE (test_memory's session, one round, at PEAK_HEAP)."""
    vm_heap = int(int(PEAK_HEAP[:-1]) * 1024 * WORD_SCALE_64)
    with tempfile.TemporaryDirectory() as tmp, test_memory.peers(Path(tmp)) as w:
        with Module(Path(tmp) / "state", heap=PEAK_HEAP) as m:
            m.sync()
            m.cmd("AT+UARTE=OFF")
            h = test_memory.Host(m)
            phone = Phone(hci_port(m))
            peak = 0
            try:
                steps = test_memory.in_turn(w, phone) + test_memory.all_at_once(w, phone)
                for _, step in steps:
                    step(h)
                    peak = max(peak, vm_heap - h.memfree())
            finally:
                phone.close()
            return peak


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


TOTAL = 256 * 1024  # bytes per throughput run
CHUNK = 1024


def relay_throughput(pace: bool) -> float:
    """Bytes/s of lines echoed by the bare relay (the fake echo firmware), same pty path."""
    with Module(root=REPO / "host_tests" / "fake_fw", world=None, pace=pace) as m:
        m.wait_booted(1)
        if pace:
            m.write(b"!baud 921600\n")
            m.read_until(b"baud ok\n")
        line = b"x" * (CHUNK - 1) + b"\n"
        t = time.perf_counter()
        got = 0
        for _ in range(TOTAL // CHUNK):
            m.write(line)
            got += len(m.read_until(b"\n", timeout=10))
        return got / (time.perf_counter() - t)


def socket_module(pace: bool) -> Module:
    m = Module(pace=pace)
    m.sync()
    m.cmd("AT+UARTE=OFF")
    if pace:
        m.cmd("AT+UART=921600,8,1,NONE,NONE")
        m.cmd("AT+REBOOT")
        m.sync()
    m.cmd("AT+WJAP=EMW-TEST,12345678")
    m.read_until(b"STATION_UP\r\n", timeout=10)
    m.cmd(f"AT+CIPSTART=0,tcp_client,127.0.0.1,{echo_server()}")
    m.read_until(b"CONNECTED\r\n")
    return m


class Wire:
    """Parses what the module sends in order: prompts, OKs, +CIPEVENT:SOCKET,0 payloads."""

    EVENT = b"\r\n+CIPEVENT:SOCKET,0,"

    def __init__(self, m: Module) -> None:
        self.m = m
        self.prompts = self.oks = self.data = 0

    def until(self, prompts: int = 0, oks: int = 0, data: int = 0) -> None:
        buf = self.m._buf
        while self.prompts < prompts or self.oks < oks or self.data < data:
            if buf.startswith(b">"):
                del buf[:1]
                self.prompts += 1
            elif buf.startswith(OK):
                del buf[:6]
                self.oks += 1
            elif buf.startswith(self.EVENT) and buf.find(b",", len(self.EVENT)) > 0:
                comma = buf.find(b",", len(self.EVENT))
                n = int(buf[len(self.EVENT) : comma])
                end = comma + 1 + n + 2
                if len(buf) < end:
                    self.m._fill(10)
                    continue
                del buf[:end]
                self.data += n
            elif len(buf) >= len(self.EVENT) and not self.EVENT.startswith(bytes(buf[:2])):
                raise AssertionError(f"unexpected output {bytes(buf[:40])!r}")
            elif not self.m._fill(10):
                raise TimeoutError(f"stalled at {bytes(buf[:40])!r}")


# VM CPU ms per MB relayed (both ways) by the last throughput run, per path and pacing.
cpu_per_mb: dict[str, float] = {}


def cipsend_throughput(pace: bool) -> tuple[float, int]:
    with socket_module(pace) as m:
        cpu = vm_cpu(m)
        wire = Wire(m)
        data = bytes(range(256)) * (CHUNK // 256)
        t = time.perf_counter()
        for i in range(1, TOTAL // CHUNK + 1):
            m.write(b"AT+CIPSEND=0,%d\r" % CHUNK)
            wire.until(prompts=i)
            m.write(data)
            wire.until(oks=i)
        wire.until(data=TOTAL)
        rate = TOTAL / (time.perf_counter() - t)
        cpu_per_mb["CIPSEND 1024"] = (vm_cpu(m) - cpu) / (2 * TOTAL / 1e6) * 1e3
        return rate, TOTAL - wire.data


def transparent_throughput(pace: bool) -> tuple[float, int]:
    with socket_module(pace) as m:
        m.cmd("AT+UARTFOMAT=1024,50")
        m.cmd("AT+CIPSENDRAW")
        cpu = vm_cpu(m)
        data = bytes(range(256)) * (CHUNK // 256)
        t = time.perf_counter()
        got = 0
        for _ in range(TOTAL // CHUNK):
            m.write(data)
            while len(m._buf) < CHUNK:
                m._fill(10)
            del m._buf[:CHUNK]
            got += CHUNK
        rate = TOTAL / (time.perf_counter() - t)
        cpu_per_mb["transparent"] = (vm_cpu(m) - cpu) / (2 * TOTAL / 1e6) * 1e3
        return rate, TOTAL - got


def main() -> int:
    figures: dict[str, float] = {}
    throughput = []
    for pace in (False, True):
        base = relay_throughput(pace)
        for name, run in (
            ("CIPSEND 1024", cipsend_throughput),
            ("transparent", transparent_throughput),
        ):
            rate, lost = run(pace)
            throughput.append((name, "921600" if pace else "unpaced", rate, rate / base, lost))
            figures[f"VM CPU ms per MB, {name}, {'921600' if pace else 'unpaced'}"] = cpu_per_mb[
                name
            ]
        throughput.append(("bare relay", "921600" if pace else "unpaced", base, 1.0, 0))
    base = baseline()
    rows = [("bare relay (baseline)", *base, 1.0)]
    with Module() as m:
        m.sync()
        m.cmd("AT+UARTE=OFF")
        heap = [("after start", used(m))]
        cpu = vm_cpu(m)
        for line in ("AT", "AT+FWVER?"):
            p50, p99 = round_trips(lambda line=line: m.cmd(line))
            rows.append((line, p50, p99, p50 / base[0]))
        figures["VM CPU ms per AT round trip"] = (vm_cpu(m) - cpu) / (2 * N) * 1e3
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
    peak = peak_session()
    figures["all-features peak heap, VM bytes"] = peak
    figures["all-features peak heap, ESP32 bytes (model)"] = round(peak / WORD_SCALE_64)
    print(
        f"\nheap in use (VM heap {VM_HEAP} bytes = HEAP 110k x {WORD_SCALE_64}, the measured factor)"
    )
    for stage, n in heap:
        print(f"  {stage:<30}{n:>8} bytes")
    print(f"  {'peak of these':<30}{max(n for _, n in heap):>8} bytes")
    last = json.loads(LAST.read_text()) if LAST.exists() else {}
    print(f"\n{'figure':<52}{'now':>12}{'previous':>12}")
    for name, value in figures.items():
        before = last.get(name)
        print(
            f"{name:<52}{value:>12.3f}"
            + (f"{before:>12.3f}" if before is not None else f"{'-':>12}")
        )
    LAST.parent.mkdir(exist_ok=True)
    LAST.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"\nthroughput pty -> link -> TCP echo -> pty, {TOTAL // 1024} KB each way")
    print(f"{'path':<16}{'UART':>9}{'KB/s':>10}{'/relay':>8}{'lost':>6}")
    for name, pace, rate, ratio, lost in throughput:
        print(f"{name:<16}{pace:>9}{rate / 1024:>10.1f}{ratio:>8.2f}{lost:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
