"""Soak: DURATION seconds of mixed traffic on every link, MQTT and Bluetooth, at HEAP=110k.

    python -m host_tests.soak [--duration 3600] [--period 3] [--heap 110k] [--in-turn]
    make soak [DURATION=3600] [HEAP=110k] [TURN=1]

Every period it records the free heap (AT+MEMFREE), the round trip of AT, and the latency of
each kind of event (TCP and TLS echo, UDP echo, a PC client of the module's TCP server, an
MQTT message to its own subscription, a phone's write over BLE), into build/soak.csv, and
plots them over time in build/soak.png. It passes when the module ends as responsive as it
started (median AT round trip of the last tenth at most twice the first tenth's, or 20 ms
more), the free heap has no downward trend after the first tenth (least-squares slope times
the duration above -2 KB), nothing failed and the module never restarted.

With --in-turn (virtual module only) each sample is one round of every feature in turn, as
host_tests/test_memory.py runs them (Wi-Fi, five links with two TLS, transparent mode, MQTT
over TLS with six subscriptions, SNTP, provisioning, OTA, BT with a phone, Wi-Fi quit), with
the round's duration and AT+MEMFREE after it: build/soak-turn.csv and build/soak-turn.png, the
same verdict. Every feature fits 110k in turn, not at once (README, Memory).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import re
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from host_tests.module import REPO, TARGET_PORT, WIFI_KEY, WIFI_SSID, Module
from host_tests.mosquitto import Broker, have_mosquitto
from host_tests.netservers import HOST, Pki, TcpEcho, TlsEcho, UdpEcho, free_port, have_openssl
from host_tests.test_tcpip import Wire as TcpWire
from host_tests.test_tcpip import connect_client, ev, start

OUT = REPO / "build"
TOPIC = "soak/loop"
COLUMNS = ["t", "memfree", "at_ms", "tcp_ms", "udp_ms", "server_ms", "tls_ms", "tcp2_ms",
           "mqtt_ms", "bt_ms", "errors"]  # fmt: skip
TURN_COLUMNS = ["t", "memfree", "at_ms", "round_ms", "errors"]
_DATA_HEADS = {b"+MQTTRECV:": "mqtt", b"+BTEVENT:DATA,": "bt"}


class Wire(TcpWire):
    """test_tcpip's reader, plus +MQTTRECV:<id>,<len>,<data> and +BTEVENT:DATA,<len>,<data>,
    kept as data of the channels "mqtt" and "bt"."""

    def item(self, timeout: float = 5.0):
        buf = self.m._buf
        end = time.monotonic() + timeout
        head = bytes(buf[:16]).lstrip(b"\r\n")
        while not head or any(len(head) < len(p) and p.startswith(head) for p in _DATA_HEADS):
            if not self.m._fill(end - time.monotonic()):
                break  # the base class reports the timeout
            head = bytes(buf[:16]).lstrip(b"\r\n")
        for prefix, channel in _DATA_HEADS.items():
            if head.startswith(prefix):
                self.m.read_until(prefix, timeout)
                if channel == "mqtt":
                    self._field(timeout)  # the subscription id
                n = int(self._field(timeout))
                return ("SOCKET", channel, self._payload(n, timeout))
        return super().item(max(0.0, end - time.monotonic()))


def timed(fn: Callable[[], object]) -> float:
    t = time.monotonic()
    fn()
    return (time.monotonic() - t) * 1000


class Soak:
    def __init__(self, m: Module, w: Wire, stack: contextlib.ExitStack, tmp: Path) -> None:
        self.m, self.w = m, w
        self.echo = stack.enter_context(TcpEcho())
        self.uecho = stack.enter_context(UdpEcho())
        self.checks: list[tuple[str, Callable[[], None]]] = []
        self.errors = 0
        self.phone = None
        self.setup_failures: list[str] = []
        self._links()
        features = [("TLS", have_openssl(), lambda: self._tls(stack, tmp)),
                    ("MQTT", have_mosquitto(), lambda: self._mqtt(stack, tmp)),
                    ("BT", not TARGET_PORT, lambda: self._bt(stack))]  # fmt: skip
        for name, available, setup in features:
            if not available:
                continue
            try:
                setup()
            except (AssertionError, TimeoutError, OSError) as e:
                self.m.drain()
                self.setup_failures.append(f"{name}: {e!r} ({self.w.one('AT+ERRNO')})")

    def _echo(self, lid: int | str, size: int) -> Callable[[], None]:
        data = bytes(range(256)) * (size // 256 + 1)

        def check() -> None:
            self.w.send_data(lid, data[:size])
            assert self.w.recv(lid, size) == data[:size]

        return check

    def _links(self) -> None:
        w = self.w
        connect_client(w, 0, self.echo.port)
        start(w, 1, "udp_unicast", HOST, self.uecho.port, free_port(socket.SOCK_DGRAM))
        w.wait_event(ev(1, "UDP", "CONNECTED"))
        port = free_port()
        start(w, 2, "tcp_server", port)
        self.client = socket.create_connection((HOST, port), timeout=10)
        w.wait_event(ev("CLIENT", "CONNECTED", HOST, self.client.getsockname()[1]))
        connect_client(w, 4, self.echo.port)
        self.checks += [("tcp_ms", self._echo(0, 512)), ("udp_ms", self._echo(1, 256)),
                        ("server_ms", self._server), ("tcp2_ms", self._echo(4, 1024))]  # fmt: skip

    def _server(self) -> None:
        data = b"from a client of the module's server " * 8
        self.client.sendall(data)
        assert self.w.recv(2, len(data)) == data

    def _tls(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        pki = Pki(tmp / "pki")
        tls = stack.enter_context(TlsEcho(pki))
        self.w.m.write(b"AT+SSLCERTSET=0\r")
        assert self.w.item() == ">"
        self.w.m.write(pki.ca_pem + b"\x1a")
        assert self.w.response("SSLCERTSET") == ["OK"]
        self.w.ok("AT+CIPSSLOPT=3,1,0")
        connect_client(self.w, 3, tls.port, typ="ssl_client")
        self.checks.append(("tls_ms", self._echo(3, 512)))

    def _mqtt(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        broker = stack.enter_context(Broker(tmp / "broker"))
        w = self.w
        for line in (f"AT+MQTTSOCK={broker.host},{broker.port}", f"AT+MQTTSUB=1,{TOPIC},1"):
            w.ok(line)
        w.ok("AT+MQTTSTART")
        w.wait_event(
            "+MQTTEVENT:CONNECT,SUCCESS", timeout=15, allow=("+MQTTEVENT:1,SUBSCRIBE,SUCCESS",)
        )
        w.ok(f"AT+MQTTPUB={TOPIC},1")
        self.checks.append(("mqtt_ms", self._mqtt_loop))

    def _mqtt_loop(self) -> None:
        data = b"soak message \x00\r\n+++ " * 4
        r = self.w.send(f"AT+MQTTSEND={len(data)}", data, 10)
        assert r == [">", "OK"], r
        assert self.w.recv("mqtt", len(data), 10) == data

    def _bt(self, stack: contextlib.ExitStack) -> None:
        from host_tests.test_bt import Phone, discoverable, hci_port

        self.phone = stack.enter_context(contextlib.closing(Phone(hci_port(self.m))))
        self.phone.connect(self.phone.find(discoverable(self.m)))
        self.phone.pair(123456)
        self.m.read_until(b"+BTEVENT:CONNECTION,ON\r\n", 15)
        self.phone.subscribe()
        self.checks.append(("bt_ms", self._bt_loop))

    def _bt_loop(self) -> None:
        data = b"phone says hello"
        self.phone.write(data)
        assert self.w.recv("bt", len(data), 10) == data
        r = self.w.send(f"AT+BTSEND={len(data)}", data, 10)
        assert r == [">", "OK"], r
        assert self.phone.wait_received(len(data)).endswith(data)

    def sample(self, t: float) -> dict[str, float | int | str]:
        row: dict[str, float | int | str] = {"t": round(t, 1)}
        row["at_ms"] = round(timed(lambda: self.w.send("AT")), 2)
        for column, check in self.checks:
            try:
                row[column] = round(timed(check), 2)
            except (AssertionError, TimeoutError, OSError) as e:
                self.errors += 1
                print(f"{t:.0f} s: {column} failed: {e}", file=sys.stderr)
                self.w.pump(1)
                self.w.data.clear()
        free = self.w.one("AT+MEMFREE")
        row["memfree"] = int(re.sub(r"\D", "", free))
        self.w.events.clear()  # PUBLISH,SUCCESS and the like: not measured
        row["errors"] = self.errors
        return row


class InTurn:
    """One round of every feature in turn per sample (test_memory's steps and peers)."""

    def __init__(self, m: Module, stack: contextlib.ExitStack, tmp: Path) -> None:
        from host_tests.test_bt import Phone, hci_port
        from host_tests.test_memory import Host, in_turn, peers

        self.h = Host(m)
        self.phone = stack.enter_context(contextlib.closing(Phone(hci_port(m))))
        self.steps = in_turn(stack.enter_context(peers(tmp)), self.phone)
        self.failed: list[str] = []
        self.setup_failures: list[str] = []
        self.rounds = 0

    def sample(self, t: float) -> dict[str, float | int | str]:
        from host_tests.test_memory import run

        before = len(self.failed)
        self.rounds += 1
        row: dict[str, float | int | str] = {"t": round(t, 1)}
        row["round_ms"] = round(
            timed(lambda: run(self.h, self.phone, self.rounds, self.steps, self.failed))
        )
        for failure in self.failed[before:]:
            print(f"{t:.0f} s: {failure}", file=sys.stderr)
        row["at_ms"] = round(timed(lambda: self.h.cmd("AT")), 2)
        row["memfree"] = self.h.memfree()
        row["errors"] = len(self.failed)
        return row


def trend_per_s(rows: list[dict], key: str) -> float:
    xs = [float(r["t"]) for r in rows]
    ys = [float(r[key]) for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def verdict(rows: list[dict], duration: float, restarted: bool, setup: list[str]) -> list[str]:
    """What failed (empty: pass)."""
    tenth = max(1, len(rows) // 10)
    first = statistics.median(float(r["at_ms"]) for r in rows[:tenth])
    last = statistics.median(float(r["at_ms"]) for r in rows[-tenth:])
    slope = trend_per_s(rows[tenth:], "memfree") if len(rows) > tenth + 2 else 0.0
    out = [f"could not start {x}" for x in setup]
    if last > max(2 * first, first + 20):
        out.append(f"AT round trip grew: {first:.1f} ms -> {last:.1f} ms")
    if slope * duration < -2048:
        out.append(f"free heap trends down: {slope * 3600:.0f} B/h")
    if rows and rows[-1]["errors"]:
        out.append(f"{rows[-1]['errors']} failed checks")
    if restarted:
        out.append("the module restarted")
    return out


def plot(rows: list[dict], columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [float(r["t"]) / 60 for r in rows]
    fig, (heap, lat) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    heap.plot(t, [int(r["memfree"]) / 1000 for r in rows])
    heap.set_ylabel("free heap (kB, AT+MEMFREE)")
    heap.grid(True)
    for key in columns[2:-1]:
        ys = [(tt, float(r[key])) for tt, r in zip(t, rows) if r.get(key, "") != ""]
        if ys:
            lat.plot([a for a, _ in ys], [b for _, b in ys], label=key.removesuffix("_ms"))
    lat.set_yscale("log")
    lat.set_ylabel("round trip / event latency (ms)")
    lat.set_xlabel("minutes")
    lat.legend(ncol=4, fontsize="small")
    lat.grid(True, which="both")
    fig.suptitle("EMW AT firmware soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@contextlib.contextmanager
def running(heap: str) -> Iterator[Module]:
    with Module(heap=heap) as m:
        m.sync()
        yield m


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--period", type=float, default=3)
    ap.add_argument("--heap", default="110k")
    ap.add_argument("--in-turn", action="store_true", help="every feature in turn per sample")
    args = ap.parse_args()
    if args.in_turn and TARGET_PORT:
        sys.exit("--in-turn needs the virtual module (the world's control, the PC's BT radio)")
    OUT.mkdir(exist_ok=True)
    name, columns = ("soak-turn", TURN_COLUMNS) if args.in_turn else ("soak", COLUMNS)
    rows: list[dict] = []
    with contextlib.ExitStack() as stack, running(args.heap) as m:
        m.cmd("AT+UARTE=OFF")
        m.drain()
        tmp = stack.enter_context(_tmpdir())
        if args.in_turn:
            soak: Soak | InTurn = InTurn(m, stack, tmp)
        else:
            w = Wire(m)
            w.ok("AT+CIPRECVCFG=1")
            w.ok(f"AT+WJAP={WIFI_SSID},{WIFI_KEY}")
            w.wait_event("+WEVENT:STATION_UP", timeout=30)
            soak = Soak(m, w, stack, tmp)
        start = time.monotonic()
        with open(OUT / f"{name}.csv", "w", newline="") as f:
            out = csv.DictWriter(f, columns, restval="")
            out.writeheader()
            while (t := time.monotonic() - start) < args.duration:
                rows.append(soak.sample(t))
                out.writerow(rows[-1])
                f.flush()
                time.sleep(max(0.0, args.period - (time.monotonic() - start - t)))
        restarted = not TARGET_PORT and m.status()["boots"] != 1
    plot(rows, columns, OUT / f"{name}.png")
    failed = verdict(rows, args.duration, restarted, soak.setup_failures)
    first, last = rows[0], rows[-1]
    print(f"{len(rows)} samples over {args.duration:.0f} s; free heap {first['memfree']} -> "
          f"{last['memfree']} B; AT {first['at_ms']} -> {last['at_ms']} ms; "
          f"errors {last['errors']}; build/{name}.csv, build/{name}.png")  # fmt: skip
    for line in failed:
        print("FAIL", line)
    return 1 if failed else 0


@contextlib.contextmanager
def _tmpdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="soak-") as d:
        yield Path(d)


if __name__ == "__main__":
    sys.exit(main())
