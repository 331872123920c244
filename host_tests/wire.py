"""The module's output as a strict host driver reads it: one wire reader for the tests.

`Rx` classifies like a real driver: a response runs from its first byte to exactly
`\\r\\nOK\\r\\n` or `\\r\\nERROR\\r\\n`; an event (`\\r\\n+WEVENT:`, `\\r\\n+CIPEVENT:`,
`\\r\\n+MQTTEVENT:`, `\\r\\n+MQTTRECV:`, `\\r\\n+BTEVENT:`, the binary ones read by length) is
accepted only between responses; one inside a response (or inside a `>` data phase) fails the
test, except the events the command itself causes (CAUSED), which the module writes just
before its final result. Bytes between responses that are not an event fail it too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from host_tests.module import ERROR, OK, Module

CRLF = b"\r\n"
EVENT_PREFIXES = (
    b"\r\n+WEVENT:",
    b"\r\n+CIPEVENT:",
    b"\r\n+MQTTEVENT:",
    b"\r\n+MQTTRECV:",
    b"\r\n+BTEVENT:",
)
# The events a command causes and the module knows of at once: part of its response, written
# after its echo (and `>` data), before its final result (README, event order).
CAUSED = {
    "CIPSTART": r"\+CIPEVENT:\d,UDP,CONNECTED",
    "CIPSTOP": r"\+CIPEVENT:(\d,(SERVER|UDP),CLOSED|CLIENT,CLOSED,[0-9.]+,\d+)",
}
_EVENT_LINE = re.compile(rb"\r\n(\+[A-Z]+EVENT:[^\r\n]*)\r\n")

Event = str | tuple  # a text event ("+WEVENT:STATION_UP") or ("SOCKET", id, data) etc.


def command_name(line: str) -> str:
    m = re.match(r"\s*AT\+([A-Z0-9]+)", line)
    return m.group(1) if m else ""


class Rx:
    """The module's output as a strict driver classifies it (see the module docstring)."""

    def __init__(self, m: Module, who: str) -> None:
        self.m = m
        self.who = who
        self.echo = True  # factory default: the command's bytes come back before its response
        self.events: list[Event] = []  # unsolicited items not yet claimed by the persona

    @property
    def buf(self) -> bytearray:
        return self.m._buf

    def _fill(self, deadline: float) -> bool:
        return self.m._fill(deadline - time.monotonic())

    def _want(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.who}: wanted {n} bytes, have {bytes(self.buf)!r}")
            self._fill(deadline)

    def _take(self, n: int, deadline: float) -> bytes:
        self._want(n, deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _scan(self, deadline: float, *subs: bytes) -> tuple[int, bytes]:
        """Index and value of the earliest of subs in the buffer (waits; consumes nothing)."""
        while True:
            hits = [(i, s) for s in subs if (i := self.buf.find(s)) >= 0]
            if hits:
                return min(hits)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.who}: waited for {subs!r}; got {bytes(self.buf)!r}")
            self._fill(deadline)

    def _field(self, deadline: float) -> bytes:
        i, _ = self._scan(deadline, b",")
        return self._take(i + 1, deadline)[:-1]

    def _payload(self, n: int, deadline: float) -> bytes:
        data = self._take(n + 2, deadline)
        assert data[-2:] == CRLF, f"{self.who}: {n} bytes not followed by CRLF: {data[-40:]!r}"
        return data[:-2]

    def _at_event(self, deadline: float) -> bytes | None:
        """The event prefix the buffer starts with, or None if it starts with something else
        (waits for enough bytes to tell)."""
        while True:
            buf = self.buf
            maybe = [p for p in EVENT_PREFIXES if p[: len(buf)] == buf[: len(p)]]
            if not maybe:
                return None
            for p in maybe:
                if len(buf) >= len(p):
                    return p
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.who}: partial item {bytes(buf)!r}")
            self._fill(deadline)

    def _event(self, prefix: bytes, deadline: float) -> Event:
        """Read one event starting at prefix: the binary ones by their length, like drivers."""
        self._take(len(prefix), deadline)
        if prefix == b"\r\n+MQTTRECV:":  # header up to the second comma, then <len> bytes
            sid = int(self._field(deadline))
            n = int(self._field(deadline))
            return ("MQTTRECV", sid, self._payload(n, deadline))
        if prefix == b"\r\n+BTEVENT:" and self.buf.startswith(b"DATA,"):  # DATA,<len>,<data>
            self._take(5, deadline)
            n = int(self._field(deadline))
            return ("BTDATA", self._payload(n, deadline))
        if prefix == b"\r\n+CIPEVENT:":
            i, sep = self._scan(deadline, b",", CRLF)
            word = bytes(self.buf[:i])
            if sep == b"," and word == b"SOCKET":  # header up to the third comma, then <len>
                self._take(i + 1, deadline)
                lid = int(self._field(deadline))
                n = int(self._field(deadline))
                return ("SOCKET", lid, self._payload(n, deadline))
            if sep == b"," and word == b"UDP_BROADCAST":
                self._take(i + 1, deadline)
                ip = self._field(deadline).decode()
                port = int(self._field(deadline))
                lid = int(self._field(deadline))
                n = int(self._field(deadline))
                return ("UDP_BROADCAST", ip, port, lid, self._payload(n, deadline))
        i, _ = self._scan(deadline, CRLF)
        return prefix[2:].decode() + self._take(i + 2, deadline)[:-2].decode()

    def _events_first(self, deadline: float) -> None:
        """Take the events at the head of the stream (between responses)."""
        while (p := self._at_event(deadline)) is not None:
            self.events.append(self._event(p, deadline))

    def response(
        self, what: str, timeout: float = 5.0, *, echo: bytes = b"", opened: bool = False
    ) -> list[str]:
        """The next response as lines: [">"] if it has a prompt, its data lines, then "OK" or
        "ERROR". `echo`: the command bytes expected back first. `opened`: the response began
        already (its `>` was read), so no event may come before the rest."""
        deadline = time.monotonic() + timeout
        if not opened:
            self._events_first(deadline)
        i, final = self._scan(deadline, OK, ERROR)
        body = self._take(i + len(final), deadline)
        assert body.startswith(echo), f"{self.who}: {what!r}: no echo {echo!r} in {body!r}"
        rest = body[len(echo) : -len(final)]
        lines = []
        if rest.startswith(b">"):
            assert not opened, f"{self.who}: second prompt for {what!r}: {body!r}"
            lines.append(">")
            rest = rest[1:]
        rest = self._caused(what, rest)
        for p in EVENT_PREFIXES:
            assert p not in rest, f"{self.who}: event inside the response to {what!r}: {body!r}"
        if rest:
            ok = rest.startswith(CRLF) and rest.endswith(CRLF) and len(rest) >= 4
            assert ok, f"{self.who}: badly framed response to {what!r}: {body!r}"
            lines += [x.decode() for x in rest[2:-2].split(CRLF)]
        return [*lines, final.strip().decode()]

    def _caused(self, what: str, rest: bytes) -> bytes:
        """Move the events `what` caused (they lead `rest`) to self.events."""
        allowed = CAUSED.get(command_name(what))
        while allowed and (m := _EVENT_LINE.match(rest)):
            text = m.group(1).decode()
            if not re.fullmatch(allowed, text):
                break
            self.events.append(text)
            rest = rest[m.end() :]
        return rest

    def prompt(self, timeout: float) -> bool:
        """True if `>` comes (after any events) within timeout; False if nothing else came."""
        deadline = time.monotonic() + timeout
        try:
            self._events_first(deadline)
            self._want(1, deadline)
        except TimeoutError:
            return False
        assert self.buf[0] == ord(">"), f"{self.who}: expected '>', got {bytes(self.buf)!r}"
        del self.buf[0]
        return True

    def pump(self, seconds: float) -> None:
        """Take events for `seconds`; anything else arriving between responses fails."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.buf and not self._fill(deadline):
                continue
            p = self._at_event(deadline + 5)
            assert p is not None, f"{self.who}: stray bytes between responses: {bytes(self.buf)!r}"
            self.events.append(self._event(p, deadline + 5))

    def wait_event(self, want: str | Callable[[Event], bool], timeout: float) -> Event:
        """Claim the first event matching want (a string or a test), reading up to timeout.
        Other events stay in self.events, as a driver's other event handlers would take them."""
        match = want if callable(want) else (lambda e: e == want)
        deadline = time.monotonic() + timeout
        while True:
            for k, e in enumerate(self.events):
                if match(e):
                    return self.events.pop(k)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.who}: no {want!r} within {timeout} s: {self.events}")
            self.pump(min(left, 0.2))

    def socket_data(self, lid: int, n: int, timeout: float = 10.0) -> bytes:
        """Exactly n bytes from +CIPEVENT:SOCKET,<lid>,... events (claimed in order)."""
        out = b""
        while len(out) < n:
            e = self.wait_event(
                lambda e: isinstance(e, tuple) and e[:2] == ("SOCKET", lid), timeout
            )
            out += e[2]
        assert len(out) == n, f"{self.who}: link {lid}: {len(out)} bytes for {n}: {out!r}"
        return out
