"""Wire fuzzer: command lines made from the document's examples, mutated, sent to a module in
batches; after each batch the module must answer AT, not have restarted, still hold its open
link, and keep every setting that no accepted line was allowed to change.

    python -m host_tests.fuzz [--lines 100000] [--seed 1] [--batch 500]   # make fuzz

Also used by host_tests/test_fuzz_wire.py with a bounded count. On a serial port (EMW_PORT)
the same checks run, except the boot counter and the console (virtual module only).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from dataclasses import dataclass, field

from firmware import at
from host_tests.module import ERROR, OK, REPO, TARGET_PORT, WIFI_KEY, WIFI_SSID, Module
from host_tests.netservers import HOST, TcpSink

UNKNOWN = b"(no memory to answer)"  # a check's reply when the module had no heap to give it

SPEC = REPO.parent / "shared" / "spec" / "AT-command-set-v2.md"
WATCH_ID = 4  # the link the fuzzer keeps open to a sink and checks after every batch

# Never sent: they restart, sleep, leave command mode or are one-way by design, or drop the
# station (and so the watched link). Matched anywhere in a line, so no mutation makes one.
NEVER = (b"REBOOT", b"FACTORY", b"STANDBY", b"SENDRAW", b"SECRETS", b"WJAP", b"SMARTSTART",
         b"OTASTART")  # fmt: skip
# Commands that may stop or reuse the watched link: sent only when WATCH_ID is not among
# their digits.
LINK_CONTROL = (b"CIPSTOP", b"CIPSTART", b"CIPAUTOCONN")
# Settings checked after every batch: each must be unchanged unless a line of that command
# name was answered OK in the batch.
SENTINELS = ("WSAP", "MQTTAUTH", "MQTTSOCK", "MQTTCID", "MQTTKEEPALIVE", "UARTFOMAT",
             "CIPRECVCFG", "WEVENT", "CIPEVENT", "SNTPCFG", "BTNAME", "UART", "WSCANOPT",
             "SMARTKEY", "FLASHLOCK", "MQTTSSL", "WSAPIP", "OTAURL")  # fmt: skip

VALUES = ["0", "1", "2", "3", "4", "5", "-1", "65535", "65536", "4294967296", "9" * 40, "+7",
          "ON", "OFF", "on", "EN", "DN", "NONE", "CTSRTS", "115200", "8", "EMW-TEST", "",
          '""', '"a,b"', '"', "\\,", "\\\\", "a\\", "tcp_client", "tcp_server", "udp_unicast",
          "udp_broadcast", HOST, "256.1.1.1", "localhost", "x" * 300, "é" * 5, "日本",
          "topic/#", "+", "\x00", " 1", "1 ", "0x10", "1e3", "\uff11"]  # fmt: skip
NOISE = bytes(range(256))


def templates() -> list[str]:
    """The document's command forms (`AT+...` in backquotes), one per distinct text."""
    text = SPEC.read_text() if SPEC.exists() else ""
    found = sorted(set(re.findall(r"`(AT\+[A-Z]+[^`]*)`", text)))
    return [t.replace("\\r", "").split("\r")[0] for t in found] or ["AT+FWVER?"]


@dataclass
class Generator:
    rng: random.Random
    forms: list[str] = field(default_factory=templates)

    def _fill(self, form: str) -> str:
        form = re.sub(
            r"\[([^\]]*)\]", lambda m: m.group(1) if self.rng.random() < 0.5 else "", form
        )
        return re.sub(r"<[^>]*>|para-\d", lambda _: self.rng.choice(VALUES), form)

    def _mutate(self, line: bytes) -> bytes:
        r = self.rng
        b = bytearray(line)
        for _ in range(r.randint(1, 4)):
            pos = r.randint(0, len(b))
            kind = r.randrange(7)
            if kind == 0 and b:
                del b[pos : pos + r.randint(1, 4)]
            elif kind == 1:
                b[pos:pos] = bytes(r.choice(NOISE) for _ in range(r.randint(1, 6)))
            elif kind == 2:
                b[pos:pos] = r.choice([b",", b'"', b"\\", b"\\,", b"=", b"?", b"=?", b"+++"])
            elif kind == 3:
                b[pos:pos] = r.choice(VALUES).encode()
            elif kind == 4:
                b += b"," * r.randint(1, 40)
            elif kind == 5:
                b[pos:pos] = b"9" * r.randint(10, 400)
            else:
                b = b[:pos]
        return bytes(b)

    def line(self) -> bytes:
        r = self.rng.random()
        if r < 0.05:  # binary noise (a CR or LF inside ends a line: that is the point)
            return bytes(self.rng.choice(NOISE) for _ in range(self.rng.randint(1, 80)))
        if r < 0.07:
            return self.rng.choice([b"+++", b"AT+++", b"+++AT", b"++", b"AT+"])
        if r < 0.08:
            return b"AT+" + b"A" * self.rng.choice([1100, 5000])  # overlong
        line = self._fill(self.rng.choice(self.forms)).encode()
        return line if r < 0.4 else self._mutate(line)

    def data(self, length: int) -> bytes:
        """A data phase: mostly exact; sometimes overlong (the rest is command-mode input);
        rarely truncated (the module gives up after 5 s of silence)."""
        body = bytes(self.rng.choice(NOISE) for _ in range(min(length, 64)))
        body = (body * (length // max(1, len(body)) + 1))[:length]
        r = self.rng.random()
        if r < 0.003:
            return body[: length // 2]
        return body + b"AT+FWVER?\r" if r < 0.1 else body


def allowed(line: bytes) -> bool:
    if any(name in line for name in NEVER):
        return False
    return not any(name in line for name in LINK_CONTROL) or str(WATCH_ID).encode() not in line


def name_of(line: bytes) -> str | None:
    try:
        return at.parse(line.split(b"\r")[0].split(b"\n")[0])[0]
    except at.AtError:
        return None


def data_length(line: bytes) -> int | None:
    """What a `>` prompt after this line waits for: a byte count, or -1 for Ctrl+Z."""
    try:
        name, _op, params = at.parse(line)
    except at.AtError:
        return None
    if name == "SSLCERTSET":
        return -1
    try:
        return int(params[-1]) if params and params[-1] is not None else None
    except ValueError:
        return None


@dataclass
class Finding:
    line: bytes
    what: str


@dataclass
class Fuzzer:
    m: Module
    rng: random.Random
    sink_port: int
    sent: int = 0
    findings: list[Finding] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gen = Generator(self.rng)

    def _reply(self, timeout: float = 3.0) -> bytes:
        try:
            return self.m.read_until_any([OK, ERROR, b">"], timeout)
        except TimeoutError:
            return b""

    def setup(self) -> None:
        m = self.m
        m.cmd("AT+CIPRECVCFG=1")
        m.cmd(f"AT+WJAP={WIFI_SSID},{WIFI_KEY}")
        m.read_until(b"+WEVENT:STATION_UP", timeout=30)
        m.cmd(f"AT+CIPSTART={WATCH_ID},tcp_client,{HOST},{self.sink_port}")
        m.read_until(f"+CIPEVENT:{WATCH_ID},SERVER,CONNECTED".encode(), timeout=10)
        m.drain()

    def snapshot(self) -> dict[str, bytes]:
        out = {}
        for name in SENTINELS:
            r = self.query(f"AT+{name}?")
            lines = (x for x in r.split(b"\r\n") if x.startswith(b"+"))
            out[name] = r if r == UNKNOWN else b"\n".join(lines)
        return out

    def query(self, line: str) -> bytes:
        """A check's command. Refused for lack of memory, it proves nothing either way: that
        is recorded as an out-of-memory find (issue 14), and the reply stands as unknown."""
        r = self.m.cmd(line, timeout=5)
        if r.endswith(ERROR):
            why = self.m.cmd("AT+ERRNO")
            if b"out of memory" in why:
                self.findings.append(Finding(line.encode(), why.decode(errors="replace")))
                return UNKNOWN
        return r

    def send_one(self, line: bytes) -> bool:
        """Send one line (and its data phase); True if it was answered OK."""
        m = self.m
        m.write(line + b"\r")
        self.sent += 1
        r = self._reply()
        if r.endswith(b">"):
            n = data_length(line)
            if n == -1:
                m.write(self.gen.data(self.rng.randint(0, 3000)) + b"\x1a")
            elif n is not None and 0 <= n <= 100_000:
                m.write(self.gen.data(n))
            r = self._reply(8.0)  # an unknown length ends by the 5 s idle timeout
            m.drain(0.1)  # replies to what an overlong data phase left in command mode
        elif b"\r" in line or b"\n" in line:
            m.drain(0.1)  # the replies to the other lines inside it
        if r.endswith(ERROR):
            e = m.cmd("AT+ERRNO", timeout=5)
            if b"+ERRNO:10," in e:  # E_INTERNAL: an unexpected exception in a handler
                self.findings.append(Finding(line, e.decode(errors="replace")))
        return r.endswith(OK)

    def batch(self, count: int) -> None:
        before = self.snapshot()
        accepted: set[str] = set()
        done = 0
        while done < count:
            line = self.gen.line()
            if not allowed(line):
                continue
            done += 1
            if self.send_one(line):
                accepted.add(name_of(line) or "")
        self.check(before, accepted)

    def check(self, before: dict[str, bytes], accepted: set[str]) -> None:
        m = self.m
        m.write(b"\r")
        m.drain(0.3)
        try:
            m.sync(15)
        except TimeoutError as e:
            self.findings.append(Finding(b"", f"no OK to AT after a batch: {e}"))
            raise
        m.cmd("AT+UARTE=OFF")
        m.drain()
        if not TARGET_PORT:
            boots = m.status()["boots"]
            if boots != 1:
                self.findings.append(Finding(b"", f"the module restarted (boot {boots})"))
            if "Traceback" in m.console():
                self.findings.append(Finding(b"", "a traceback in the console log"))
        st = self.query(f"AT+CIPSTATUS={WATCH_ID}")
        if st != UNKNOWN and b",connected" not in st:
            self.findings.append(Finding(b"", f"the watched link is gone: {st!r}"))
        after = self.snapshot()
        for name in SENTINELS:
            unknown = UNKNOWN in (before[name], after[name])
            if name not in accepted and not unknown and after[name] != before[name]:
                self.findings.append(
                    Finding(b"", f"{name} changed: {before[name]!r} -> {after[name]!r}")
                )

    def run(self, lines: int, batch: int, progress: bool = False) -> None:
        self.setup()
        while self.sent < lines:
            self.batch(min(batch, lines - self.sent))
            if progress:
                print(f"{self.sent} lines, {len(self.findings)} finds", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--heap", default="110k", help="the virtual module's heap (HEAP of make run)")
    args = ap.parse_args()
    start = time.monotonic()
    with TcpSink() as sink, Module(heap=args.heap) as m:
        m.sync()
        fz = Fuzzer(m, random.Random(args.seed), sink.port)
        try:
            fz.run(args.lines, args.batch, progress=True)
        finally:
            print(f"{fz.sent} lines in {time.monotonic() - start:.0f} s, seed {args.seed}")
            for f in fz.findings:
                print(f"FIND {f.what}: {f.line!r}")
    return 1 if fz.findings else 0


if __name__ == "__main__":
    sys.exit(main())
