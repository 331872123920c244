"""MQTT benchmark on the virtual module: python -m host_tests.bench_mqtt.

Against a local Mosquitto broker (host_tests/mosquitto.py), beside baselines measured in the
same run with the Mosquitto clients:

- publish rate: N messages of SIZE bytes, AT+MQTTPUB once, then AT+MQTTSEND=<SIZE> with its
  data and a wait for OK, one message at a time (as a driver does), at QoS 0 and 1; every one
  must answer OK (a full window of QoS 1 publishes makes the data phase wait for room, never
  fail). A mosquitto_sub started before checks that all arrive; the time runs from the
  first write to the last message it prints, after one warm-up message. Baseline:
  `mosquitto_pub -l`, connected and warmed up the same way, given the N lines at once.
- latency through the broker, ROUNDS round trips each way at QoS 0 and 1 (after one warm-up
  message): a line to `mosquitto_pub -l` until +MQTTRECV arrives on the pty, AT+MQTTSEND until
  mosquitto_sub prints the message; baseline: a line to mosquitto_pub until mosquitto_sub
  prints it.

Needs mosquitto and mosquitto-clients. Prints one table.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from host_tests.bench import percentiles
from host_tests.module import OK, Module
from host_tests.mosquitto import Broker, have_mosquitto

N = 500  # messages per publish-rate run through the module
# ... and through mosquitto_pub, which sends 500 in a few ms: a single 40 ms TCP stall (Nagle
# and delayed ACK on the clients' sockets) would then decide the rate.
N_BASE = 5000
SIZE = 64  # bytes per message
ROUNDS = 200  # round trips per latency run
QOS = (0, 1)
REPEAT = 3  # publish-rate runs of each kind; the table shows the median


def payload(i: int, size: int = SIZE) -> bytes:
    """Message i: its number, padded to size bytes (printable: mosquitto clients use lines)."""
    return (b"%06d" % i).ljust(size, b".")


_ids = itertools.count(1)  # client ids: b<n>-<role>, unique in the broker log
_procs: list[subprocess.Popen] = []  # the Mosquitto clients, ended in main() whatever happens


def spawn(args: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(args, **kw)
    _procs.append(p)
    return p


def wait_log(broker: Broker, text: str, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while text not in broker.log():
        if time.monotonic() > end:
            raise TimeoutError(f"{text!r} not in the broker log")
        time.sleep(0.02)


class Subscriber:
    """mosquitto_sub on one topic; a thread stamps each payload line with its arrival time."""

    def __init__(self, broker: Broker, role: str, topic: str, qos: int) -> None:
        cid = f"b{next(_ids)}-{role}"
        self.proc = spawn(
            ["mosquitto_sub", *broker.client_args(), "-i", cid, "-t", topic, "-q", str(qos)],
            stdout=subprocess.PIPE,
        )
        self.got: list[tuple[float, bytes]] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_log(broker, f"SUBACK to {cid}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = time.perf_counter()
            with self._cv:
                self.got.append((t, line.rstrip(b"\n")))
                self._cv.notify_all()

    def wait(self, count: int, timeout: float = 10) -> bool:
        """Wait until count messages have arrived; False if they do not within timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: len(self.got) >= count, timeout)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class Publisher:
    """mosquitto_pub -l: each line written to its stdin goes out as one message."""

    def __init__(self, broker: Broker, role: str, topic: str, qos: int) -> None:
        cid = f"b{next(_ids)}-{role}"
        self.proc = spawn(
            ["mosquitto_pub", *broker.client_args(), "-i", cid, "-t", topic, "-q", str(qos), "-l"],
            stdin=subprocess.PIPE,
        )
        wait_log(broker, f"as {cid} ")

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


class Wire:
    """Parses what the module sends (echo off), in order: ">" prompts, "OK", "ERROR", event
    lines, and +MQTTRECV messages as (sub id, payload). Events are counted as they pass."""

    RECV = b"+MQTTRECV:"

    def __init__(self, m: Module) -> None:
        self.m = m
        self.events: dict[str, int] = {}

    def _parse(self) -> str | tuple[int, bytes] | None:
        buf = self.m._buf
        while buf[:1] in (b"\r", b"\n"):
            del buf[:1]
        if not buf:
            return None
        if buf[:1] == b">":
            del buf[:1]
            return ">"
        if buf.startswith(self.RECV):
            c1 = buf.find(b",", len(self.RECV))
            c2 = buf.find(b",", c1 + 1) if c1 > 0 else -1
            if c2 < 0:
                return None
            n = int(buf[c1 + 1 : c2])
            end = c2 + 1 + n + 2
            if len(buf) < end:
                return None
            if buf[end - 2 : end] != b"\r\n":
                raise AssertionError(f"+MQTTRECV payload not followed by CRLF: {bytes(buf)!r}")
            msg = int(buf[len(self.RECV) : c1]), bytes(buf[c2 + 1 : end - 2])
            del buf[:end]
            return msg
        i = buf.find(b"\r\n")
        if i < 0:
            return None
        line = bytes(buf[:i]).decode()
        del buf[: i + 2]
        return line

    def item(self, timeout: float = 5.0) -> str | tuple[int, bytes]:
        end = time.monotonic() + timeout
        while (x := self._parse()) is None:
            left = end - time.monotonic()
            if left <= 0 or not self.m._fill(left):
                raise TimeoutError(f"stalled at {bytes(self.m._buf[:60])!r}")
        if isinstance(x, str) and x.startswith("+"):
            self.events[x] = self.events.get(x, 0) + 1
        return x

    def until(self, want: str | tuple[int, bytes], timeout: float = 5.0) -> list:
        """Items up to and including want (events are counted on the way)."""
        got = []
        while True:
            got.append(x := self.item(timeout))
            if x == want:
                return got
            if x == "ERROR" or isinstance(x, tuple):
                raise AssertionError(f"waiting for {want!r}, got {x!r} after {got[:-1]}")

    def send(self, line: str, data: bytes = b"") -> bool:
        """Send a command (and its data); True if it answers OK, False for ERROR."""
        self.m.write(line.encode() + b"\r" + data)
        while (x := self.item()) not in ("OK", "ERROR"):
            if isinstance(x, tuple):
                raise AssertionError(f"{x!r} inside the response to {line!r}")
        return x == "OK"

    def ok(self, line: str, data: bytes = b"") -> None:
        if not self.send(line, data):
            self.m.write(b"AT+ERRNO\r")
            raise AssertionError(f"{line!r} -> ERROR {self.until('OK')[:-1]}")

    def count(self, event: str) -> int:
        return self.events.get(event, 0)


PUB_OK = "+MQTTEVENT:PUBLISH,SUCCESS"


def connect(m: Module, broker: Broker) -> Wire:
    """Echo off, Wi-Fi joined, connected to the broker."""
    m.sync()
    m.write(b"AT+UARTE=OFF\r")
    m.read_until(OK)
    w = Wire(m)
    w.ok("AT+WJAP=EMW-TEST,12345678")
    w.until("+WEVENT:STATION_UP", timeout=20)
    w.ok(f"AT+MQTTSOCK={broker.host},{broker.port}")
    w.ok("AT+MQTTCID=bench-module")
    w.ok("AT+MQTTSTART")
    w.until("+MQTTEVENT:CONNECT,SUCCESS", timeout=10)
    return w


def delivered(sub: Subscriber, start: float, n: int) -> tuple[float, int]:
    """Messages/s from start to the last of messages 1..n at sub (message 0 is the warm-up),
    and how many of them arrived intact."""
    sub.wait(n + 1, timeout=10)
    time.sleep(0.2)  # and nothing more (duplicates)
    sub.stop()
    intact = len({p for _, p in sub.got[1:]} & {payload(i) for i in range(1, n + 1)})
    if len(sub.got) != n + 1 or intact != n:
        print(f"  !! {len(sub.got) - 1} messages arrived, {intact} of {n} intact", file=sys.stderr)
    return n / (sub.got[-1][0] - start) if len(sub.got) > 1 else 0.0, intact


def warm_up(sub: Subscriber) -> None:
    """Message 0 has gone through: the connections are past their first packets."""
    if not sub.wait(1, timeout=5) or sub.got[0][1] != payload(0):
        raise AssertionError(f"the warm-up message did not arrive: {sub.got}")


def module_send(w: Wire, i: int) -> None:
    w.ok(f"AT+MQTTSEND={SIZE}", payload(i))


def module_rate(broker: Broker, w: Wire, qos: int) -> tuple[float, int, float, int]:
    """(msg/s arrived, arrived, msg/s answered OK, PUBLISH,SUCCESS events)."""
    topic = f"bench/rate/module/{qos}"
    sub = Subscriber(broker, "rate-sub", topic, qos)
    w.ok(f"AT+MQTTPUB={topic},{qos}")
    before = w.count(PUB_OK) + 1
    module_send(w, 0)
    w.until(PUB_OK)
    warm_up(sub)
    t = time.perf_counter()
    for i in range(1, N + 1):
        module_send(w, i)
    oks = time.perf_counter() - t
    end = time.monotonic() + 10
    while w.count(PUB_OK) - before < N and (left := end - time.monotonic()) > 0:
        try:
            w.item(left)
        except TimeoutError:
            break
    rate, got = delivered(sub, t, N)
    return rate, got, N / oks, w.count(PUB_OK) - before


def baseline_rate(broker: Broker, qos: int) -> tuple[float, int]:
    """mosquitto_pub -l, connected and warmed up, is given N_BASE lines at once."""
    topic = f"bench/rate/base/{qos}"
    sub = Subscriber(broker, "rate-sub", topic, qos)
    pub = Publisher(broker, "rate-pub", topic, qos)
    pub.send(payload(0) + b"\n")
    warm_up(sub)
    t = time.perf_counter()
    pub.send(b"".join(payload(i) + b"\n" for i in range(1, N_BASE + 1)))
    pub.stop()
    return delivered(sub, t, N_BASE)


def median_run(runs: list[tuple]) -> tuple:
    """The run with the median rate; arrived: the fewest of all runs."""
    mid = sorted(runs)[len(runs) // 2]
    return (mid[0], min(r[1] for r in runs), *mid[2:])


def round_trips(send, arrived) -> tuple[float, float]:
    """p50 and p99 in ms of ROUNDS messages: send(i), then arrived(i) says when it arrived."""
    times = []
    for i in range(ROUNDS + 1):  # message 0 is the warm-up
        t = time.perf_counter()
        send(i)
        times.append(arrived(i) - t)
    return percentiles(times[1:])


def arrival(sub: Subscriber):
    def at(i: int) -> float:
        if not sub.wait(i + 1, timeout=5) or sub.got[i][1] != payload(i):
            raise AssertionError(f"message {i} did not arrive: {sub.got[-3:]}")
        return sub.got[i][0]

    return at


def latency_in(broker: Broker, w: Wire, qos: int) -> tuple[float, float]:
    """mosquitto_pub line -> broker -> module -> +MQTTRECV on the pty."""
    topic = f"bench/lat/in/{qos}"
    sid = 1 + qos
    w.ok(f"AT+MQTTSUB={sid},{topic},{qos}")
    w.until(f"+MQTTEVENT:{sid},SUBSCRIBE,SUCCESS")
    pub = Publisher(broker, "lat-pub", topic, qos)

    def recv(i: int) -> float:
        w.until((sid, payload(i)))
        return time.perf_counter()

    result = round_trips(lambda i: pub.send(payload(i) + b"\n"), recv)
    pub.stop()
    w.ok(f"AT+MQTTUNSUB={sid}")
    return result


def latency_out(broker: Broker, w: Wire, qos: int) -> tuple[float, float]:
    """AT+MQTTSEND on the pty -> module -> broker -> mosquitto_sub prints it."""
    topic = f"bench/lat/out/{qos}"
    sub = Subscriber(broker, "lat-sub", topic, qos)
    w.ok(f"AT+MQTTPUB={topic},{qos}")
    result = round_trips(lambda i: w.ok(f"AT+MQTTSEND={SIZE}", payload(i)), arrival(sub))
    sub.stop()
    return result


def latency_base(broker: Broker, qos: int) -> tuple[float, float]:
    """mosquitto_pub line -> broker -> mosquitto_sub prints it."""
    topic = f"bench/lat/base/{qos}"
    sub = Subscriber(broker, "lat-sub", topic, qos)
    pub = Publisher(broker, "lat-pub", topic, qos)
    result = round_trips(lambda i: pub.send(payload(i) + b"\n"), arrival(sub))
    pub.stop()
    sub.stop()
    return result


def measure() -> tuple[list, list]:
    rates, lat = [], []
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp, Broker(Path(tmp)) as broker:
        with Module() as m:
            w = connect(m, broker)
            for qos in QOS:
                mod, base = [], []
                for _ in range(REPEAT):
                    base.append(baseline_rate(broker, qos))
                    mod.append(module_rate(broker, w, qos))
                rate, got, *extra = median_run(mod)
                b_rate, b_got = median_run(base)
                rates.append(("module AT+MQTTSEND", qos, rate, rate / b_rate, got, N, *extra))
                rates.append(("mosquitto_pub -l (baseline)", qos, b_rate, 1.0, b_got, N_BASE))
            for qos in QOS:
                base = latency_base(broker, qos)
                for name, run in (
                    ("mosquitto_pub -> module", latency_in),
                    ("module -> mosquitto_sub", latency_out),
                ):
                    p50, p99 = run(broker, w, qos)
                    lat.append((name, qos, p50, p99, p50 / base[0]))
                lat.append(("mosquitto_pub -> _sub (baseline)", qos, *base, 1.0))
    return rates, lat


def main() -> int:
    if not have_mosquitto() or not shutil.which("mosquitto_sub"):
        print("needs mosquitto and mosquitto-clients", file=sys.stderr)
        return 1
    try:
        rates, lat = measure()
    finally:
        for p in _procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    print(f"MQTT via a local mosquitto, {SIZE}-byte messages (publish: median of {REPEAT} runs)")
    print(f"{'publish':<30}{'QoS':>4}{'msg/s':>8}{'/base':>7}{'arrived':>11}"
          f"{'OK/s':>7}{'events':>7}")  # fmt: skip
    for name, qos, rate, ratio, got, n, *more in rates:
        extra = "{:>7.0f}{:>7}".format(*more) if more else ""
        print(f"{name:<30}{qos:>4}{rate:>8.0f}{ratio:>7.3f}{f'{got}/{n}':>11}{extra}")
    print("  msg/s: sent to arrived at mosquitto_sub; OK/s: AT+MQTTSEND answered OK; events:")
    print("  +MQTTEVENT:PUBLISH,SUCCESS")
    print(f"\n{'latency, ' + str(ROUNDS) + ' round trips':<34}{'QoS':>4}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'p50/base':>10}")  # fmt: skip
    for name, qos, p50, p99, ratio in lat:
        print(f"{name:<34}{qos:>4}{p50:>9.3f}{p99:>9.3f}{ratio:>10.2f}")
    # The module's publishes must all arrive; a baseline that lost some (mosquitto_pub at QoS 0
    # under load) shows that in its row and fails nothing.
    mine = [r for r in rates if not r[0].endswith("(baseline)")]
    return 0 if all(got == n for _, _, _, _, got, n, *_ in mine) else 1


if __name__ == "__main__":
    sys.exit(main())
