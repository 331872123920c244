"""TCP, UDP and SSL links (spec section 4, issue 4) through the pty against real peers on
127.0.0.1 (host_tests/netservers.py).

The module runs with echo off. `Wire` splits what the module writes into items: response
lines, "OK", "ERROR", ">" prompts, events, and the binary ones: `+CIPEVENT:SOCKET,<id>,<len>,`
+ <len> raw bytes (read as drivers do: the header up to the third comma, then exactly <len>
bytes), `+CIPEVENT:UDP_BROADCAST,<ip>,<port>,<id>,<len>,<data>` and `+CIPRECV=<n>,<data>`.
Received data is kept per link id (Wire.data); an event or data arriving inside a response
fails the test.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tests.module import TEST_HEAP, WIFI_KEY, WIFI_SSID, Module
from host_tests.netservers import (
    HOST,
    Pki,
    TcpEcho,
    TcpSink,
    TcpSource,
    TlsEcho,
    UdpEcho,
    UdpReceiver,
    free_port,
    have_openssl,
    wait_for,
)
from host_tests.ntpserver import NtpServer

HEAP = os.environ.get("EMW_TCPIP_HEAP", TEST_HEAP)
BIN = bytes(range(256)) * 4  # every byte value, 1024 bytes
TRICKY = (
    b"\r\nAT+CIPSTOP=0\r\n+++\r\nOK\r\n\r\nERROR\r\n>\x00\x00\x1a\xff"
    b"+CIPEVENT:SOCKET,0,5,\r\n+++AT\rAT+REBOOT\r\n"
)
PAYLOAD = (BIN + TRICKY) * 3 + b"+++"  # ~3.3 KB: all bytes, line ends, commands, "+++"
assert len(PAYLOAD) <= 4096
UP = "+WEVENT:STATION_UP"
TYPES = ("tcp_client", "tcp_server", "udp_unicast", "udp_broadcast")

Item = str | tuple


def ev(*parts: object) -> str:
    return "+CIPEVENT:" + ",".join(str(p) for p in parts)


def is_event(x: Item) -> bool:
    if isinstance(x, tuple):
        return x[0] in ("SOCKET", "UDP_BROADCAST")
    return x.startswith(("+CIPEVENT:", "+WEVENT:", "+MQTTEVENT:"))


# ----- the module's side of the wire


class Wire:
    def __init__(self, m: Module) -> None:
        self.m = m
        self.events: list[str] = []  # events read while waiting for something else
        self.data: dict[int, bytearray] = defaultdict(bytearray)  # push-mode data per id
        self.bcast: list[tuple[str, int, int, bytes]] = []  # UDP_BROADCAST (ip, port, id, data)
        self.max_chunk = 0  # largest +CIPEVENT:SOCKET payload seen

    # -- bytes

    def _fill_to(self, n: int, timeout: float) -> None:
        buf = self.m._buf
        end = time.monotonic() + timeout
        while len(buf) < n:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"wanted {n} bytes, have {len(buf)}: {bytes(buf[:200])!r}")
            self.m._fill(left)

    def _take(self, n: int, timeout: float) -> bytes:
        self._fill_to(n, timeout)
        buf = self.m._buf
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _field(self, timeout: float) -> bytes:
        return self.m.read_until(b",", timeout)[:-1]

    def _payload(self, n: int, timeout: float) -> bytes:
        data = self._take(n + 2, timeout)
        assert data[-2:] == b"\r\n", f"payload of {n} not followed by CRLF: {data[-40:]!r}"
        return data[:-2]

    def item(self, timeout: float = 5.0) -> Item:
        """The next item: a line (str), ">", ("SOCKET", id, data), ("UDP_BROADCAST", ip, port,
        id, data) or ("RECV", data)."""
        buf = self.m._buf
        while True:
            self._fill_to(1, timeout)
            if buf[0] not in (13, 10):
                break
            del buf[0]
        if buf[0] == 0x3E:
            del buf[0]
            return ">"
        head = self.m.read_until_any([b",", b"\r\n"], timeout)
        if head == b"+CIPEVENT:SOCKET,":
            lid = int(self._field(timeout))
            n = int(self._field(timeout))
            return ("SOCKET", lid, self._payload(n, timeout))
        if head == b"+CIPEVENT:UDP_BROADCAST,":
            ip = self._field(timeout).decode()
            port = int(self._field(timeout))
            lid = int(self._field(timeout))
            n = int(self._field(timeout))
            return ("UDP_BROADCAST", ip, port, lid, self._payload(n, timeout))
        if head.startswith(b"+CIPRECV=") and head.endswith(b","):
            return ("RECV", self._payload(int(head[9:-1]), timeout))
        if head.endswith(b","):
            head += self.m.read_until(b"\r\n", timeout)
        return head[:-2].decode(errors="replace")

    def _keep(self, x: Item) -> None:
        """Store an unsolicited item: data per link, events in order."""
        if isinstance(x, tuple) and x[0] == "SOCKET":
            self.data[x[1]] += x[2]
            self.max_chunk = max(self.max_chunk, len(x[2]))
        elif isinstance(x, tuple):
            self.bcast.append(x[1:])
        else:
            self.events.append(x)

    # -- commands

    def send(self, line: str | bytes, data: bytes | None = None, timeout: float = 5.0) -> list:
        """Write a command (and its data in the same write); return its response items up to
        and including OK / ERROR. Unsolicited items before it are kept; inside it they fail."""
        raw = line.encode() if isinstance(line, str) else line
        self.m.write(raw + b"\r" + (data or b""))
        return self.response(str(line), timeout)

    def response(self, what: str = "", timeout: float = 5.0) -> list:
        out: list[Item] = []
        while True:
            x = self.item(timeout)
            if is_event(x):
                assert not out, f"{x!r} inside the response to {what!r}: {out}"
                self._keep(x)
                continue
            out.append(x)
            if x in ("OK", "ERROR"):
                return out

    def ok(self, line: str) -> None:
        r = self.send(line)
        assert r == ["OK"], f"{line!r} -> {r}"

    def error(self, line: str, data: bytes | None = None) -> None:
        """ERROR for a command; given its data (sent in the same write, as drivers do), ERROR
        once the data is in: a refused data phase takes its data all the same."""
        r = self.send(line, data, timeout=8)  # a wrong ">" would end with the data-phase timeout
        assert r == (["ERROR"] if data is None else [">", "ERROR"]), f"{line!r} -> {r}"

    def query(self, line: str) -> list:
        r = self.send(line)
        assert r[-1] == "OK", f"{line!r} -> {r}"
        return r[:-1]

    def one(self, line: str) -> Item:
        r = self.query(line)
        assert len(r) == 1, f"{line!r} -> {r}"
        return r[0]

    def status(self, lid: int) -> str:
        return self.one(f"AT+CIPSTATUS={lid}")

    def send_data(
        self, lid: int, data: bytes, port: int | None = None, wait_prompt: bool = True
    ) -> None:
        """Send data of any length in CIPSENDs of at most 4096 bytes."""
        for i in range(0, len(data), 4096):
            self._cipsend(lid, data[i : i + 4096], port, wait_prompt)

    def _cipsend(self, lid: int, data: bytes, port: int | None, wait_prompt: bool) -> None:
        head = f"AT+CIPSEND={lid}," + (f"{port}," if port is not None else "") + str(len(data))
        if not wait_prompt:
            r = self.send(head, data, 10)
            assert r == [">", "OK"], f"{head} -> {r}"
            return
        self.m.write(head.encode() + b"\r")
        x = self.item(5)
        while is_event(x):
            self._keep(x)
            x = self.item(5)
        assert x == ">", f"{head} -> {x!r} instead of the prompt"
        self.m.write(data)
        r = self.response(head, 10)
        assert r == ["OK"], f"{head} -> {r}"

    # -- events and data

    def event(self, timeout: float = 5.0) -> str:
        """The next connection/Wi-Fi event (data read meanwhile goes to self.data)."""
        end = time.monotonic() + timeout
        while not self.events:
            x = self.item(max(0.0, end - time.monotonic()))
            assert is_event(x), f"expected an event, got {x!r}"
            self._keep(x)
        return self.events.pop(0)

    def expect(self, *want: str, timeout: float = 5.0) -> None:
        """The next events are exactly `want`, in this order."""
        got = [self.event(timeout) for _ in want]
        assert got == list(want)

    def expect_set(self, *want: str, timeout: float = 5.0) -> None:
        """The next events are `want`, in any order."""
        got = [self.event(timeout) for _ in want]
        assert sorted(got) == sorted(want)

    def wait_event(self, want: str, timeout: float = 10.0, allow: tuple = ()) -> list[str]:
        """Read events until `want`; the ones before it must be in `allow`; returns them."""
        end = time.monotonic() + timeout
        seen = []
        while True:
            x = self.event(max(0.0, end - time.monotonic()))
            if x == want:
                return seen
            assert x in allow, f"unexpected {x!r} while waiting for {want!r} (after {seen})"
            seen.append(x)

    def recv(self, lid: int, n: int, timeout: float = 10.0) -> bytes:
        """Exactly n bytes of push-mode data from link lid."""
        end = time.monotonic() + timeout
        buf = self.data[lid]
        while len(buf) < n:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"link {lid}: wanted {n} bytes, got {len(buf)}: {buf[:80]!r}")
            x = self.item(left)
            assert is_event(x), f"expected data, got {x!r}"
            self._keep(x)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def pump(self, seconds: float) -> None:
        """Read unsolicited items for `seconds`."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                x = self.item(left)
            except TimeoutError:
                return
            assert is_event(x), f"unsolicited {x!r}"
            self._keep(x)

    def quiet(self, seconds: float) -> None:
        assert not self.events, self.events
        self.m.expect_silence(seconds)


# ----- set-up


@pytest.fixture
def m(tmp_path: Path) -> Iterator[Module]:
    mod = Module(tmp_path / "state", heap=HEAP)
    try:
        mod.sync()
        yield mod
    finally:
        mod.stop()


@pytest.fixture
def echo() -> Iterator[TcpEcho]:
    with TcpEcho() as s:
        yield s


STARTUP = (
    ["AT+FWVER?", "AT+UARTE=OFF", "AT"]
    + [f"AT+CIPAUTOCONN={i},0" for i in range(5)]
    + [f"AT+CIPSTOP={i}" for i in range(5)]
    + ["AT+WEVENT=ON", "AT+CIPEVENT=ON", "AT+CIPRECVCFG=1"]
)


def startup(m: Module) -> Wire:
    """A driver's start-up sequence (wire notes), echo off; every command answers OK."""
    m.cmd("AT+UARTE=OFF")
    m.drain()
    w = Wire(m)
    for line in STARTUP:
        r = w.send(line)
        assert r[-1] == "OK", f"{line} -> {r}"
    return w


def join(w: Wire) -> None:
    w.ok(f"AT+WJAP={WIFI_SSID},{WIFI_KEY}")
    w.wait_event(UP, timeout=10)


def ready(m: Module) -> Wire:
    """Start-up sequence (auto-connect off on every id) and Wi-Fi up."""
    w = startup(m)
    join(w)
    return w


@pytest.fixture
def ntp() -> Iterator[NtpServer]:
    s = NtpServer()
    try:
        yield s
    finally:
        s.close()


def ready_with_clock(m: Module, ntp: NtpServer) -> Wire:
    """Wi-Fi up with the tests' NTP server configured: the module sets its clock by itself."""
    w = startup(m)
    w.ok(f"AT+SNTPCFG=+0,{ntp.address}")
    join(w)
    return w


def start(w: Wire, lid: int, typ: str, *params: object) -> None:
    w.ok(f"AT+CIPSTART={lid},{typ}," + ",".join(str(p) for p in params))


def connect_client(w: Wire, lid: int, port: int, typ: str = "tcp_client", host=HOST) -> None:
    start(w, lid, typ, host, port)
    w.wait_event(ev(lid, "SERVER", "CONNECTED"), timeout=10)


def stop(w: Wire, lid: int, kind: str = "SERVER") -> None:
    w.ok(f"AT+CIPSTOP={lid}")
    w.wait_event(ev(lid, kind, "CLOSED"))
    assert w.status(lid).endswith(",close")


def resync(w: Wire, timeout: float = 15.0) -> None:
    """After AT+REBOOT / power cut: AT until OK (keeping events), then echo off."""
    end = time.monotonic() + timeout
    synced = False
    while not synced:
        assert time.monotonic() < end, "no OK after reboot"
        w.m.write(b"AT\r")
        try:
            while True:
                x = w.item(0.3)
                if is_event(x):
                    w._keep(x)
                elif x == "OK":
                    synced = True
                    break
        except TimeoutError:
            pass
    w.m.write(b"AT+UARTE=OFF\r")
    t = time.monotonic() + 0.5
    while time.monotonic() < t:  # extra OKs from ATs queued while booting, the echo
        try:
            x = w.item(0.2)
        except TimeoutError:
            continue
        if is_event(x):
            w._keep(x)


def client(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=5)
    return s


def recv_exact(s: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            raise EOFError(f"peer closed after {len(out)} of {n} bytes")
        out += d
    return out


def is_closed(s: socket.socket, timeout: float = 5.0) -> bool:
    """True if the peer closed or reset s within timeout (no data expected)."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# ----- start-up, parameters, status


def test_startup_sequence_before_wifi(m):
    assert m.cmd("AT+FWVER?").endswith(b"\r\nOK\r\n")  # echo still on: the driver's first line
    w = startup(m)
    assert w.one("AT+CIPRECVCFG?") == "+CIPRECVCFG:1"
    for i in range(5):
        assert w.one(f"AT+CIPAUTOCONN={i}") == "+CIPAUTOCONN:0"
        assert w.status(i) == "+CIPSTATUS:tcp_client,close"
    # no interface up: socket commands fail
    w.error(f"AT+CIPSTART=0,tcp_client,{HOST},80")
    w.error("AT+CIPSEND=0,5", b"hello")
    w.ok("AT+CIPSTOP=0")
    assert w.status(0) == "+CIPSTATUS:tcp_client,close"
    w.quiet(0.3)


def test_factory_defaults(m):
    m.cmd("AT+UARTE=OFF")
    m.drain()
    w = Wire(m)
    assert w.one("AT+CIPRECVCFG?") == "+CIPRECVCFG:1"
    assert w.one("AT+CIPAUTOCONN=3") == "+CIPAUTOCONN:1"
    assert w.one("AT+CIPEVENT?") == "+CIPEVENT=ON"
    w.ok("AT+CIPAUTOCONN=3,0")
    assert w.one("AT+CIPAUTOCONN=3") == "+CIPAUTOCONN:0"
    w.error("AT+SSLCERTGET=0")  # nothing stored
    w.error("AT+SSLCERTGET=3")


BAD = [
    "AT+CIPSTART=5,tcp_client,{h},{p}",
    "AT+CIPSTART=-1,tcp_client,{h},{p}",
    "AT+CIPSTART=x,tcp_client,{h},{p}",
    "AT+CIPSTART=,tcp_client,{h},{p}",
    "AT+CIPSTART=0,tcp_foo,{h},{p}",
    "AT+CIPSTART=0,TCP,{h},{p}",
    "AT+CIPSTART=0,tcp_client,{h}",
    "AT+CIPSTART=0,tcp_client",
    "AT+CIPSTART=0",
    "AT+CIPSTART=0,tcp_client,,{p}",
    "AT+CIPSTART=0,tcp_client,{h},{p},1234,9",
    "AT+CIPSTART=0,tcp_client,{h},0",
    "AT+CIPSTART=0,tcp_client,{h},65536",
    "AT+CIPSTART=0,tcp_client,{h},-1",
    "AT+CIPSTART=0,tcp_client,{h},abc",
    "AT+CIPSTART=0,tcp_client,{h},{p},65536",
    "AT+CIPSTART=0,ssl_client,{h},0",
    "AT+CIPSTART=0,udp_unicast,{h},0,5000",
    "AT+CIPSTART=0,udp_broadcast,{h},70000,5000",
    "AT+CIPSTART=0,udp_broadcast,{h},{p},5000,1",
    "AT+CIPSTART=0,tcp_server",
    "AT+CIPSTART=0,tcp_server,{h},{p},5000,1",
    "AT+CIPSTART=0,tcp_server,70000",
    "AT+CIPSTOP=5",
    "AT+CIPSTOP=x",
    "AT+CIPSTATUS=5",
    "AT+CIPSTATUS=-1",
    "AT+CIPSEND=0,0",
    "AT+CIPSEND=0,x",
    "AT+CIPSEND=0,1073741824",
    "AT+CIPRECVCFG=2",
    "AT+CIPRECVCFG=x",
    "AT+CIPAUTOCONN=5",
    "AT+CIPAUTOCONN=0,2",
    "AT+CIPAUTOCONN=0,1,1",
    "AT+CIPSSLOPT=5,1,0",
    "AT+CIPSSLOPT=0,2,0",
    "AT+CIPSSLOPT=0,1",
    "AT+SSLCERTGET=4",
    "AT+CIPRECV=5,0,10",
]


def test_bad_parameters_change_nothing(m, echo):
    w = ready(m)
    for line in BAD:
        w.error(line.format(h=HOST, p=echo.port))
    for i in range(5):
        assert w.status(i) == "+CIPSTATUS:tcp_client,close"
    assert w.one("AT+CIPRECVCFG?") == "+CIPRECVCFG:1"
    assert w.one("AT+CIPAUTOCONN=0") == "+CIPAUTOCONN:0"
    w.quiet(0.3)
    assert echo.peers == []
    # starting an id that is not stopped
    connect_client(w, 0, echo.port)
    w.error(f"AT+CIPSTART=0,tcp_client,{HOST},{echo.port}")
    w.error(f"AT+CIPSTART=0,udp_unicast,{HOST},{echo.port},0")
    assert w.status(0) == "+CIPSTATUS:tcp_client,connected"
    w.quiet(0.3)
    assert len(echo.peers) == 1
    stop(w, 0)


def test_stop_of_idle_ids(m):
    w = ready(m)
    for i in range(5):
        w.ok(f"AT+CIPSTOP={i}")
        w.ok(f"AT+CIPSTOP={i}")
        assert w.status(i) == "+CIPSTATUS:tcp_client,close"
    w.quiet(0.3)  # no CLOSED event for a link that was not started


# ----- every type on every id


def roundtrip(w: Wire, lid: int, typ: str, echo: TcpEcho, uecho: UdpEcho, urecv: UdpReceiver):
    data = bytes([lid]) + BIN[lid:] + TRICKY
    if typ == "tcp_client":
        connect_client(w, lid, echo.port)
        assert w.status(lid) == "+CIPSTATUS:tcp_client,connected"
        w.send_data(lid, data)
        assert w.recv(lid, len(data)) == data
        stop(w, lid)
    elif typ == "tcp_server":
        port = free_port()
        start(w, lid, typ, port)
        assert w.status(lid) == "+CIPSTATUS:tcp_server,connected"
        with client(port) as c:
            cport = c.getsockname()[1]
            w.wait_event(ev("CLIENT", "CONNECTED", HOST, cport))
            c.sendall(data)
            assert w.recv(lid, len(data)) == data
            w.send_data(lid, data, port=cport)
            assert recv_exact(c, len(data)) == data
        w.wait_event(ev("CLIENT", "CLOSED", HOST, cport))
        stop(w, lid)
    else:
        lport = free_port(socket.SOCK_DGRAM)
        peer = uecho if typ == "udp_unicast" else urecv
        start(w, lid, typ, HOST, peer.port, lport)
        w.wait_event(ev(lid, "UDP", "CONNECTED"))
        assert w.status(lid) == f"+CIPSTATUS:{typ},connected"
        before = len(peer.datagrams)
        w.send_data(lid, BIN)
        wait_for(lambda: len(peer.datagrams) > before, 5, "datagram at the peer")
        assert peer.datagrams[-1] == (BIN, (HOST, lport))
        if typ == "udp_unicast":
            assert w.recv(lid, len(BIN)) == BIN  # echoed
        else:
            urecv.send_to(lport, BIN)
            wait_for(lambda: bool(w.pump(0.05) or w.bcast), 5, "UDP_BROADCAST event")
            assert w.bcast.pop(0) == (HOST, urecv.port, lid, BIN)
        stop(w, lid, "UDP")
    assert w.status(lid) == f"+CIPSTATUS:{typ},close"  # the last type used


def test_every_type_on_every_id(m, echo):
    w = ready(m)
    with UdpEcho() as uecho, UdpReceiver() as urecv:
        for lid in range(5):
            for typ in TYPES:
                roundtrip(w, lid, typ, echo, uecho, urecv)
    assert w.max_chunk <= 1024
    w.quiet(0.3)


def keep_up(w: Wire, lid: int, seconds: float) -> None:
    """The link stays connected and echoes data, once a second."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        data = b"tick %d" % n
        w.send_data(lid, data)
        assert w.recv(lid, len(data)) == data
        assert w.status(lid) == "+CIPSTATUS:tcp_client,connected"
        n += 1
        w.pump(1.0)
    assert not [x for x in w.events if "DISCONNECTED" in x], w.events


# lwIP answers the second connect() (how the first ended) with EISCONN, a name MicroPython's
# errno lacks: the link must not die there.
def test_tcp_client_stays_up(m, echo):
    w = ready(m)
    connect_client(w, 0, echo.port)
    keep_up(w, 0, 5)
    stop(w, 0)


@pytest.mark.slow
def test_tcp_client_stays_up_a_minute(m, echo):
    w = ready(m)
    connect_client(w, 0, echo.port)
    keep_up(w, 0, 60)
    stop(w, 0)


def test_five_links_at_once(m, echo):
    w = ready(m)
    for lid in range(5):
        start(w, lid, "tcp_client", HOST, echo.port)
    w.expect_set(*(ev(i, "SERVER", "CONNECTED") for i in range(5)), timeout=10)
    for lid in range(5):
        assert w.status(lid) == "+CIPSTATUS:tcp_client,connected"
    payloads = {lid: bytes([lid]) * 7 + PAYLOAD[lid * 100 :] for lid in range(5)}
    for _ in range(3):
        for lid in range(5):
            w.send_data(lid, payloads[lid])
    for lid in range(5):
        assert w.recv(lid, 3 * len(payloads[lid])) == payloads[lid] * 3
    assert w.max_chunk <= 1024
    for lid in (3, 0, 4, 1, 2):
        stop(w, lid)
    w.quiet(0.3)


def test_five_links_of_every_type(m, echo, pki):
    w = ready(m)
    tls = TlsEcho(pki)
    with UdpEcho() as uecho, UdpReceiver() as urecv, tls:
        sport = free_port()
        l2, l3 = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        start(w, 0, "tcp_client", HOST, echo.port)
        start(w, 1, "tcp_server", sport)
        start(w, 2, "udp_unicast", HOST, uecho.port, l2)
        start(w, 3, "udp_broadcast", HOST, urecv.port, l3)
        start(w, 4, "ssl_client", HOST, tls.port)
        w.expect_set(
            ev(0, "SERVER", "CONNECTED"),
            ev(2, "UDP", "CONNECTED"),
            ev(3, "UDP", "CONNECTED"),
            ev(4, "SERVER", "CONNECTED"),
            timeout=15,
        )
        with client(sport) as c:
            cport = c.getsockname()[1]
            w.wait_event(ev("CLIENT", "CONNECTED", HOST, cport))
            for _ in range(2):  # interleaved traffic on all five
                w.send_data(0, PAYLOAD)
                w.send_data(1, PAYLOAD, port=cport)
                w.send_data(2, BIN)
                w.send_data(3, BIN)
                w.send_data(4, PAYLOAD)
                c.sendall(PAYLOAD)
                urecv.send_to(l3, BIN)
            assert recv_exact(c, 2 * len(PAYLOAD)) == PAYLOAD * 2
            assert w.recv(0, 2 * len(PAYLOAD)) == PAYLOAD * 2
            assert w.recv(1, 2 * len(PAYLOAD)) == PAYLOAD * 2
            assert w.recv(2, 2 * len(BIN)) == BIN * 2
            assert w.recv(4, 2 * len(PAYLOAD)) == PAYLOAD * 2
            wait_for(lambda: bool(w.pump(0.05)) or len(w.bcast) >= 2, 5, "2 broadcasts")
            assert w.bcast == [(HOST, urecv.port, 3, BIN)] * 2
            assert [d for d, _ in urecv.datagrams] == [BIN, BIN]
        w.wait_event(ev("CLIENT", "CLOSED", HOST, cport))
        for lid, kind in ((0, "SERVER"), (1, "SERVER"), (2, "UDP"), (3, "UDP"), (4, "SERVER")):
            stop(w, lid, kind)
    assert w.max_chunk <= 1024


# ----- sending


def test_binary_both_ways_and_data_with_the_command(m, echo):
    w = ready(m)
    connect_client(w, 0, echo.port)
    full = (PAYLOAD + BIN)[:4096]
    w.send_data(0, full)  # waits for ">"
    assert w.recv(0, 4096) == full
    w.send_data(0, PAYLOAD, wait_prompt=False)  # data in the same write as the command
    assert w.recv(0, len(PAYLOAD)) == PAYLOAD
    for n in (1, 2, 3, 1023, 1024, 1025):
        w.send_data(0, full[-n:])
        assert w.recv(0, n) == full[-n:]
    # pipelined: several commands and their data in one write, each answered in order
    chunks = [bytes([i]) * 10 + b"\r\n+++AT\r" for i in range(8)]
    w.m.write(b"".join(b"AT+CIPSEND=0,%d\r" % len(c) + c for c in chunks))
    for _ in chunks:
        assert w.response("pipelined CIPSEND") == [">", "OK"]
    assert w.recv(0, sum(map(len, chunks))) == b"".join(chunks)
    assert w.max_chunk <= 1024
    assert echo.received == 4096 + len(PAYLOAD) + (1 + 2 + 3 + 1023 + 1024 + 1025) + 8 * 18
    stop(w, 0)


def test_data_right_after_start_is_not_lost(m, echo):
    w = ready(m)
    w.m.write(f"AT+CIPSTART=0,tcp_client,{HOST},{echo.port}\r".encode())
    w.m.write(b"AT+CIPSEND=0,%d\r" % len(PAYLOAD) + PAYLOAD)  # before CONNECTED
    assert w.response("CIPSTART") == ["OK"]
    assert w.response("CIPSEND") == [">", "OK"]
    assert w.recv(0, len(PAYLOAD)) == PAYLOAD
    assert w.event() == ev(0, "SERVER", "CONNECTED")
    stop(w, 0)


def test_send_on_a_link_that_is_not_up(m, echo):
    w = ready(m)
    w.error("AT+CIPSEND=0,5", b"hello")  # never started
    connect_client(w, 0, echo.port)
    wait_for(lambda: len(echo.conns) == 1, 5, "connection")
    echo.reset_all()
    w.wait_event(ev(0, "SERVER", "DISCONNECTED"))
    w.error("AT+CIPSEND=0,5", b"hello")  # disconnected
    w.ok("AT+CIPSTOP=0")
    w.wait_event(ev(0, "SERVER", "CLOSED"))
    w.error("AT+CIPSEND=0,5", b"hello")  # stopped
    w.ok("AT")


# The document writes a send's data right after its command, and drivers do (wire notes): a
# send refused for its link, its length or its certificate's slot still takes its data, up to
# its length or Ctrl+Z, and answers ERROR once. Data is never run as commands.
def test_refused_data_is_never_run_as_commands(m, echo):
    w = ready(m)
    line = b"\rAT+UARTE=ON\r"
    w.error("AT+CIPSEND=5,40", line.ljust(40, b"x"))  # no such link
    assert w.one("AT+ERRNO").startswith("+ERRNO:5,parameter 1"), "the reason is the command's"
    w.error("AT+CIPSEND=2,40", line.ljust(40, b"x"))  # never started
    w.error("AT+CIPSEND=2,7,40", line.ljust(40, b"x"))
    w.error("AT+CIPSEND=0,5000", line * 384 + bytes(8))  # longer than a data phase holds
    assert w.one("AT+ERRNO") == "+ERRNO:5,data length must be 1..4096"
    cert = b"-----BEGIN CERTIFICATE-----\r\n" + line + b"\n-----END CERTIFICATE-----\r\n\x1a"
    w.error("AT+SSLCERTSET=4", cert)  # no such slot
    w.error("AT+SSLCERTSET=0,1", cert)
    assert w.one("AT+UARTE?") == "+UARTE:OFF"
    w.quiet(0.3)
    assert echo.peers == []


def test_send_errors_and_short_data_phase(m, echo):
    w = ready(m)
    w.error("AT+CIPSEND=0,5", b"hello")  # never started
    connect_client(w, 0, echo.port)
    w.error("AT+CIPSEND=0,4097", bytes(4097))
    w.error("AT+CIPSEND=1,5", b"hello")
    t = time.monotonic()
    w.m.write(b"AT+CIPSEND=0,100\r" + b"x" * 40)  # stops short
    assert w.response("short CIPSEND", timeout=10) == [">", "ERROR"]
    assert 4.0 < time.monotonic() - t < 8.0
    errno = w.one("AT+ERRNO")
    assert errno.startswith("+ERRNO:8,"), errno  # E_TIMEOUT
    assert "data phase" in errno
    w.ok("AT")  # the next command works
    time.sleep(0.3)
    assert echo.received == 0  # a failed data phase sends nothing
    w.send_data(0, b"after")
    assert w.recv(0, 5) == b"after"
    stop(w, 0)


def test_send_to_a_slow_reader(m):
    w = ready(m)
    data = random.Random(4).randbytes(400_000)
    with TcpSink(delay=0.002, chunk=8192, rcvbuf=4096) as sink:
        connect_client(w, 0, sink.port)
        w.send_data(0, data)
        wait_for(lambda: sink.total() >= len(data), 30, "all data at the sink")
        assert sink.data(0) == data
        stop(w, 0)


# ----- tcp_server


def test_server_with_several_clients(m):
    w = ready(m)
    port = free_port()
    start(w, 2, "tcp_server", port)
    assert w.status(2) == "+CIPSTATUS:tcp_server,connected"
    cs = [client(port) for _ in range(5)]
    ports = [c.getsockname()[1] for c in cs]
    w.expect_set(*(ev("CLIENT", "CONNECTED", HOST, p) for p in ports), timeout=10)
    # a sixth client is refused (closed), with no event
    extra = client(port)
    assert is_closed(extra)
    extra.close()
    # each client addressed by its port, both ways
    for i, (c, p) in enumerate(zip(cs, ports, strict=True)):
        msg = bytes([i]) * 3 + PAYLOAD[: 500 + i]
        w.send_data(2, msg, port=p)
        assert recv_exact(c, len(msg)) == msg
        c.sendall(msg)
        assert w.recv(2, len(msg)) == msg
    w.error(f"AT+CIPSEND=2,{free_port()},5", b"hello")  # no such client
    w.error("AT+CIPSEND=2,5", b"hello")  # which one?
    assert w.one("AT+ERRNO") == "+ERRNO:5,5 clients: give the remote port"
    # CIPSTOP with a port closes that client only
    w.ok(f"AT+CIPSTOP=2,{ports[1]}")
    assert is_closed(cs[1])
    w.pump(0.5)
    assert w.events in ([], [ev("CLIENT", "CLOSED", HOST, ports[1])]), w.events
    w.events.clear()
    w.error(f"AT+CIPSEND=2,{ports[1]},5", b"hello")
    assert w.status(2) == "+CIPSTATUS:tcp_server,connected"
    # a client leaves
    cs[0].close()
    w.wait_event(ev("CLIENT", "CLOSED", HOST, ports[0]))
    # a new client is accepted again (4 now)
    c5 = client(port)
    p5 = c5.getsockname()[1]
    w.wait_event(ev("CLIENT", "CONNECTED", HOST, p5))
    w.send_data(2, b"hello", port=p5)
    assert recv_exact(c5, 5) == b"hello"
    # CIPSTOP of the server: CLIENT,CLOSED for each, then SERVER,CLOSED
    w.ok("AT+CIPSTOP=2")
    left = [ports[2], ports[3], ports[4], p5]
    got = [w.event() for _ in range(len(left) + 1)]
    assert sorted(got[:-1]) == sorted(ev("CLIENT", "CLOSED", HOST, p) for p in left)
    assert got[-1] == ev(2, "SERVER", "CLOSED")
    for c in (cs[2], cs[3], cs[4], c5):
        assert is_closed(c)
        c.close()
    cs[1].close()
    with pytest.raises(OSError):
        client(port).close()  # not listening any more
    assert w.status(2) == "+CIPSTATUS:tcp_server,close"


@pytest.mark.parametrize("form", ["{id},tcp_server,,,{port}", "{id},tcp_server,{port},"])
def test_server_start_forms(m, form):
    w = ready(m)
    port = free_port()
    w.ok("AT+CIPSTART=" + form.format(id=4, port=port))
    assert w.status(4) == "+CIPSTATUS:tcp_server,connected"
    with client(port) as c:
        cport = c.getsockname()[1]
        w.wait_event(ev("CLIENT", "CONNECTED", HOST, cport))
        w.send_data(4, b"hello")  # no remote port: the only client
        assert recv_exact(c, 5) == b"hello"
    w.wait_event(ev("CLIENT", "CLOSED", HOST, cport))
    w.error("AT+CIPSEND=4,5", b"hello")
    assert w.one("AT+ERRNO").endswith(",no client connected")
    stop(w, 4)


def test_server_listens_once_ok(m):
    w = ready(m)
    port = free_port()
    start(w, 0, "tcp_server", port)
    with client(port) as c:  # at once, no status query in between
        w.wait_event(ev("CLIENT", "CONNECTED", HOST, c.getsockname()[1]))


# ----- peers that go away


def test_peer_reset_close_and_refused(m, echo):
    w = ready(m)
    connect_client(w, 0, echo.port)
    connect_client(w, 1, echo.port)
    wait_for(lambda: len(echo.conns) == 2, 5, "two connections at the echo server")
    w.send_data(0, b"zero")
    assert w.recv(0, 4) == b"zero"
    # peer resets every connection
    echo.reset_all()
    w.expect_set(ev(0, "SERVER", "DISCONNECTED"), ev(1, "SERVER", "DISCONNECTED"), timeout=5)
    assert w.status(0) == "+CIPSTATUS:tcp_client,disconnected"
    w.quiet(1.5)  # auto-connect is off: no retry
    assert len(echo.peers) == 2
    stop(w, 0)
    stop(w, 1)
    # peer closes normally (FIN)
    connect_client(w, 3, echo.port)
    wait_for(lambda: len(echo.conns) == 1, 5, "a connection")
    echo.close_all()
    w.wait_event(ev(3, "SERVER", "DISCONNECTED"))
    assert w.status(3) == "+CIPSTATUS:tcp_client,disconnected"
    stop(w, 3)
    # nobody listening
    start(w, 4, "tcp_client", HOST, free_port())
    w.wait_event(ev(4, "SERVER", "DISCONNECTED"), timeout=10)
    assert w.status(4) == "+CIPSTATUS:tcp_client,disconnected"
    assert w.one("AT+CIPERR=4").startswith("+CIPERR:4,")
    stop(w, 4)


def test_cipevent_off_silences_connection_events_not_data(m, echo):
    w = ready(m)
    w.ok("AT+CIPEVENT=OFF")
    start(w, 0, "tcp_client", HOST, echo.port)
    wait_for(lambda: len(echo.peers) == 1, 5, "connection")
    w.send_data(0, BIN)
    assert w.recv(0, len(BIN)) == BIN
    w.ok("AT+CIPSTOP=0")
    w.quiet(0.5)
    w.ok("AT+CIPEVENT=ON")
    connect_client(w, 0, echo.port)
    stop(w, 0)


def test_domain_needs_an_interface(m):
    """lwIP has no DNS server before an interface is up: no name resolves before a join."""
    w = startup(m)
    w.error("AT+CIPDOMAIN=localhost")
    assert w.one("AT+ERRNO").endswith("cannot resolve localhost")
    assert w.query("AT+CIPDOMAIN=127.0.0.1")[1:] == ["127.0.0.1"]  # no DNS needed
    join(w)
    assert "127.0.0.1" in w.query("AT+CIPDOMAIN=localhost")[1:]


def test_domain(m, echo):
    w = ready(m)
    r = w.query("AT+CIPDOMAIN=localhost")
    assert r[0].startswith("+CIPDOMAIN:")
    n = int(r[0].split(":")[1])
    assert n == len(r) - 1 >= 1
    assert "127.0.0.1" in r[1:]
    w.error("AT+CIPDOMAIN=no-such-host.invalid")
    w.error("AT+CIPDOMAIN=")
    connect_client(w, 0, echo.port, host="localhost")
    stop(w, 0)


# ----- UDP


def test_udp_broadcast_receives_from_anyone(m):
    w = ready(m)
    lport = free_port(socket.SOCK_DGRAM)
    with UdpReceiver() as r1, UdpReceiver() as r2:
        start(w, 1, "udp_broadcast", HOST, r1.port, lport)
        w.wait_event(ev(1, "UDP", "CONNECTED"))
        r1.send_to(lport, BIN)
        r2.send_to(lport, TRICKY)
        r2.send_to(lport, b"\x00")
        wait_for(lambda: bool(w.pump(0.05)) or len(w.bcast) >= 3, 5, "3 broadcasts")
        assert w.bcast == [
            (HOST, r1.port, 1, BIN),
            (HOST, r2.port, 1, TRICKY),
            (HOST, r2.port, 1, b"\x00"),
        ]
        w.send_data(1, TRICKY, port=r2.port)  # the port is ignored for UDP
        wait_for(lambda: bool(r1.datagrams), 5, "datagram")
        assert r1.datagrams == [(TRICKY, (HOST, lport))]
        assert r2.datagrams == []
        stop(w, 1, "UDP")


def test_udp_local_port_any(m):
    w = ready(m)
    with UdpEcho() as u:
        start(w, 0, "udp_unicast", HOST, u.port, 0)
        w.wait_event(ev(0, "UDP", "CONNECTED"))
        w.send_data(0, BIN)
        assert w.recv(0, len(BIN)) == BIN
        assert u.datagrams[0][1][1] != 0
        stop(w, 0, "UDP")


# ----- pull mode


def test_pull_mode_tcp(m, echo):
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")
    assert w.one("AT+CIPRECVCFG?") == "+CIPRECVCFG:0"
    connect_client(w, 0, echo.port)
    assert w.one("AT+CIPRECV=0,0,100") == ("RECV", b"")  # nothing yet
    w.send_data(0, PAYLOAD)
    time.sleep(0.5)
    w.quiet(0.1)  # no push event
    got = b""
    while len(got) < len(PAYLOAD):
        x = w.one(f"AT+CIPRECV=0,{echo.port},700")
        assert x[0] == "RECV" and len(x[1]) <= 700
        if not x[1]:
            time.sleep(0.05)
        got += x[1]
    assert got == PAYLOAD
    assert w.one("AT+CIPRECV=0,0,100") == ("RECV", b"")
    w.ok("AT+CIPRECVCFG=1")
    w.send_data(0, b"pushed")
    assert w.recv(0, 6) == b"pushed"
    stop(w, 0)


# Switched to push mode, the host gets what pull mode held first, then what comes after, in
# order (found by exploratory testing: the held bytes waited for an AT+CIPRECV a host in push
# mode never sends, and newer data went out ahead of them). TCP, a closed peer's leftover, UDP.
def test_push_mode_sends_what_pull_mode_held_first(m, echo):
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")
    connect_client(w, 0, echo.port)
    with TcpSource(BIN) as src:
        start(w, 1, "tcp_client", HOST, src.port)
        w.expect(ev(1, "SERVER", "CONNECTED"))
        w.expect(ev(1, "SERVER", "DISCONNECTED"))
    w.send_data(0, b"first")
    time.sleep(0.5)
    w.quiet(0.1)
    w.ok("AT+CIPRECVCFG=1")
    assert w.recv(0, 5) == b"first"
    assert w.recv(1, len(BIN)) == BIN
    w.send_data(0, b"second")
    assert w.recv(0, 6) == b"second"
    stop(w, 0)
    stop(w, 1)


def test_pull_mode_data_outlives_the_peer(m):
    # A server sends and closes at once: what it sent can still be read after DISCONNECTED.
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")
    with TcpSource(BIN) as src:
        start(w, 0, "tcp_client", HOST, src.port)
        w.expect(ev(0, "SERVER", "CONNECTED"))
        w.expect(ev(0, "SERVER", "DISCONNECTED"))
    assert w.one("AT+CIPSTATUS=0") == "+CIPSTATUS:tcp_client,disconnected"
    assert w.one("AT+CIPRECV=0,0,4096") == ("RECV", BIN)
    assert w.one("AT+CIPRECV=0,0,4096") == ("RECV", b"")


def test_pull_len_larger_than_the_buffer(m, echo):
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")
    connect_client(w, 0, echo.port)
    w.send_data(0, (BIN * 4)[:3000])
    time.sleep(0.5)
    x = w.one("AT+CIPRECV=0,0,4096")  # n <= len: what is buffered, at most 2048
    assert x[0] == "RECV" and 0 < len(x[1]) <= 2048
    assert x[1] == (BIN * 4)[: len(x[1])]
    stop(w, 0)


def test_pull_mode_server_clients_by_port(m):
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")
    port = free_port()
    start(w, 1, "tcp_server", port)
    assert w.status(1) == "+CIPSTATUS:tcp_server,connected"
    with client(port) as a, client(port) as b:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        w.expect_set(ev("CLIENT", "CONNECTED", HOST, pa), ev("CLIENT", "CONNECTED", HOST, pb))
        a.sendall(b"from a" + BIN)
        b.sendall(b"from b")
        time.sleep(0.5)
        assert w.one(f"AT+CIPRECV=1,{pb},100") == ("RECV", b"from b")
        got = b""
        while len(got) < 6 + len(BIN):
            x = w.one(f"AT+CIPRECV=1,{pa},2048")
            assert x[0] == "RECV"
            got += x[1]
        assert got == b"from a" + BIN
    w.expect_set(ev("CLIENT", "CLOSED", HOST, pa), ev("CLIENT", "CLOSED", HOST, pb))
    stop(w, 1)


def test_pull_mode_buffer_is_bounded_and_tcp_pushes_back(m):
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")
    size = 48 << 20  # more than the kernel buffers of both ends on loopback
    payload = random.Random(1).randbytes(1 << 20) * 48
    with TcpSource(payload, linger=True) as src:
        connect_client(w, 0, src.port)
        time.sleep(2)
        sent = src.sent
        assert sent < size, "the module kept reading its socket"
        x = w.one("AT+CIPRECV=0,0,2048")
        assert x[0] == "RECV" and len(x[1]) == 2048  # full buffer, bounded
        assert x[1] == payload[:2048]
        got = x[1]
        for _ in range(50):
            x = w.one("AT+CIPRECV=0,0,2048")
            got += x[1]
        assert got == payload[: len(got)]
        assert len(got) > 2048
        stop(w, 0)


def test_pull_mode_udp_drops_are_counted(m):
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")
    lport = free_port(socket.SOCK_DGRAM)
    with UdpReceiver() as r:
        start(w, 0, "udp_unicast", HOST, r.port, lport)
        w.wait_event(ev(0, "UDP", "CONNECTED"))
        assert w.one("AT+CIPDROPS=0") == "+CIPDROPS:0,0"
        grams = [bytes([i]) * 500 for i in range(10)]
        for g in grams:
            r.send_to(lport, g)
            time.sleep(0.02)
        time.sleep(0.5)
        got = b""
        while True:
            x = w.one("AT+CIPRECV=0,0,2048")
            if not x[1]:
                break
            got += x[1]
        drops = int(w.one("AT+CIPDROPS=0").split(",")[1])
        assert 0 < drops and len(got) == (10 - drops) * 500
        assert got == b"".join(grams[: 10 - drops])  # the first ones kept, in order
        stop(w, 0, "UDP")


# ----- transparent mode


def test_transparent_mode(m, echo):
    w = ready(m)
    connect_client(w, 1, echo.port)
    connect_client(w, 3, echo.port)
    w.ok("AT+UARTFOMAT=1024,100")
    w.ok("AT+CIPSENDRAW")  # the lowest connected id: 1
    time.sleep(0.3)
    stream = PAYLOAD + b"abc+++def" + BIN + b"+++" + BIN
    for i in range(0, len(stream), 300):
        w.m.write(stream[i : i + 300])
    got = b""
    end = time.monotonic() + 10
    while len(got) < len(stream) and time.monotonic() < end:
        got += w.m.read(timeout=0.5)
    assert got == stream  # raw, no event framing; "+++" inside the stream is data
    time.sleep(0.3)
    w.m.write(b"+++")  # alone: leaves
    assert w.m.read_until(b"\r\nOK\r\n", timeout=3) == b"\r\nOK\r\n"
    assert echo.received == len(stream)  # the exit "+++" is not sent
    w.ok("AT")
    assert w.status(1) == "+CIPSTATUS:tcp_client,connected"
    w.send_data(1, b"command mode")
    assert w.recv(1, 12) == b"command mode"
    stop(w, 1)
    stop(w, 3)


def test_transparent_framing_and_events_held(m):
    w = ready(m)
    with TcpSink() as sink, TcpEcho() as other:
        connect_client(w, 0, sink.port)
        connect_client(w, 2, other.port)
        w.ok("AT+UARTFOMAT=64,300")
        w.ok("AT+CIPSENDRAW")
        time.sleep(0.5)
        t = time.monotonic()
        w.m.write(b"0123456789")  # under the length: sent after 300 ms idle
        time.sleep(0.15)
        assert sink.total() == 0, "a short frame went out before the idle time"
        wait_for(lambda: sink.total() == 10, 3, "the idle frame")
        assert sink.log[0][0] - t >= 0.25
        time.sleep(0.5)
        t = time.monotonic()
        w.m.write(bytes(range(64)))  # the length: sent at once
        wait_for(lambda: sink.total() == 74, 3, "the full frame")
        assert sink.log[-1][0] - t < 0.25
        # no event while transparent: link 2's peer goes away
        other.reset_all()
        time.sleep(1.0)
        assert w.m.read(timeout=0.1) == b""
        w.m.write(b"+++")
        assert w.m.read_until(b"\r\nOK\r\n", timeout=3).endswith(b"\r\nOK\r\n")
        assert sink.data(0) == b"0123456789" + bytes(range(64))
        w.pump(0.5)
        w.events = [e for e in w.events if e != ev(2, "SERVER", "DISCONNECTED")]
        assert w.events == []
        w.ok("AT")
        stop(w, 0)


# Frames shorter than "+++": it still leaves transparent mode (found by exploratory testing:
# with AT+UARTFOMAT=3 it went to the link as data, and only a power cut got the module back).
@pytest.mark.parametrize("length", [1, 3])
def test_transparent_escape_with_tiny_frames(m, echo, length):
    w = ready(m)
    connect_client(w, 1, echo.port)
    w.ok(f"AT+UARTFOMAT={length},100")
    w.ok("AT+CIPSENDRAW")
    time.sleep(0.3)
    stream = b"ab++c+++d"
    w.m.write(stream)
    assert w.m.read_until(stream, timeout=5) == stream  # echoed back through the link
    time.sleep(0.3)
    w.m.write(b"++")
    time.sleep(0.3)
    w.m.write(b"+")  # "++" went after its silence: this "+" alone is data too
    assert w.m.read_until(b"+++", timeout=5) == b"+++"
    time.sleep(0.3)
    w.m.write(b"+++")
    assert w.m.read_until(b"\r\nOK\r\n", timeout=3) == b"\r\nOK\r\n"
    assert echo.received == len(stream) + 3
    w.ok("AT")
    stop(w, 1)


# ... while a byte that cannot be the escape goes at once, as its frame is full.
def test_tiny_frames_go_at_once(m):
    w = ready(m)
    with TcpSink() as sink:
        connect_client(w, 0, sink.port)
        w.ok("AT+UARTFOMAT=1,500")
        w.ok("AT+CIPSENDRAW")
        time.sleep(0.7)
        t = time.monotonic()
        w.m.write(b"a")  # after a silence, not "+": no wait for the 500 ms idle time
        wait_for(lambda: sink.total() == 1, 3, "the frame")
        assert sink.log[0][0] - t < 0.4
        time.sleep(0.7)
        w.m.write(b"+++")
        assert w.m.read_until(b"\r\nOK\r\n", timeout=3) == b"\r\nOK\r\n"
        assert sink.data(0) == b"a"
        stop(w, 0)


def test_transparent_needs_a_connected_link(m):
    w = ready(m)
    w.error("AT+CIPSENDRAW")
    w.ok("AT")


# ----- TLS


def set_cert(w: Wire, kind: int, pem: bytes) -> None:
    w.m.write(f"AT+SSLCERTSET={kind}\r".encode())
    x = w.item()
    assert x == ">", x
    w.m.write(pem + b"\x1a")
    assert w.response("SSLCERTSET") == ["OK"]


def pem_lines(b: bytes | str) -> list[str]:
    s = b.decode() if isinstance(b, bytes) else b
    return [x for x in s.replace("\r", "\n").split("\n") if x]


def test_certificates_stored_and_read_back(m, pki):
    m.cmd("AT+UARTE=OFF")
    m.drain()
    w = Wire(m)
    set_cert(w, 0, pki.ca_pem)
    r = w.query("AT+SSLCERTGET=0")
    assert r[0].startswith("+SSLCERTGET:")
    text = "\n".join(r)[len("+SSLCERTGET:") :]
    assert pem_lines(text) == pem_lines(pki.ca_pem)
    crlf = pki.wrong_ca_pem.replace(b"\n", b"\r\n")
    set_cert(w, 0, crlf)  # replaces
    assert pem_lines("\n".join(w.query("AT+SSLCERTGET=0"))[12:]) == pem_lines(crlf)
    w.error("AT+SSLCERTGET=1")
    # kept across a power cut
    m.kill()
    m.wait_booted(2)
    resync(w)
    assert pem_lines("\n".join(w.query("AT+SSLCERTGET=0"))[12:]) == pem_lines(crlf)


def test_certificate_stored_under_flashlock_outlives_the_group_release(m, pki):
    """Under FLASHLOCK a certificate is held in RAM until reboot, not in the tcpip group's
    modules, which AT+MEMFREE (or any other group's command) releases."""
    m.cmd("AT+UARTE=OFF")
    m.drain()
    w = Wire(m)
    w.ok("AT+FLASHLOCK=ON")
    set_cert(w, 0, pki.ca_pem)
    w.query("AT+MEMFREE")
    w.query("AT+UART?")  # another group loads: tcpip is released
    assert pem_lines("\n".join(w.query("AT+SSLCERTGET=0"))[12:]) == pem_lines(pki.ca_pem)
    m.kill()
    m.wait_booted(2)
    resync(w)
    w.error("AT+SSLCERTGET=0")  # never written to flash


def refused_cert(w: Wire, kind: int, data: bytes) -> str:
    """AT+SSLCERTSET with data it must refuse: ERROR, and the reason AT+ERRNO gives."""
    w.m.write(f"AT+SSLCERTSET={kind}\r".encode())
    assert w.item() == ">"
    w.m.write(data + b"\x1a")
    assert w.response("SSLCERTSET") == ["ERROR"]
    return w.one("AT+ERRNO")


# A PEM pasted into a terminal comes with CR line endings: stored with LF, and it works.
def test_certificate_line_endings(m, pki, ntp):
    w = ready_with_clock(m, ntp)
    lf = pki.ca_pem.replace(b"\r\n", b"\n")
    for pasted in (lf.replace(b"\n", b"\r"), lf.replace(b"\n", b"\r\n"), lf):
        set_cert(w, 0, pasted)
        r = w.query("AT+SSLCERTGET=0")
        assert "\n".join(r)[len("+SSLCERTGET:") :].strip() == lf.decode().strip()
    set_cert(w, 0, pki.ca_pem.replace(b"\n", b"\r"))
    w.ok("AT+CIPSSLOPT=0,1,0")
    with TlsEcho(pki) as tls:
        connect_client(w, 0, tls.port, typ="ssl_client")
        stop(w, 0)


def test_certificate_garbage_is_refused_and_nothing_stored(m, pki):
    m.cmd("AT+UARTE=OFF")
    m.drain()
    w = Wire(m)
    assert refused_cert(w, 0, b"hello") == "+ERRNO:5,not a readable X.509 certificate"
    w.error("AT+SSLCERTGET=0")  # nothing stored
    lines = pki.ca_pem.split(b"\n")
    broken = b"\n".join(lines[:2] + lines[3:])  # a line of the body missing
    assert refused_cert(w, 0, broken).startswith("+ERRNO:5,not a ")
    set_cert(w, 0, pki.ca_pem)
    assert refused_cert(w, 0, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert "BEGIN CERTIFICATE" in "\n".join(w.query("AT+SSLCERTGET=0"))  # the good one stays
    assert refused_cert(w, 2, pki.ca_pem) == "+ERRNO:5,not a readable private key"
    assert refused_cert(w, 2, b"\x30\x03\x02\x01\x00") == "+ERRNO:5,not a readable private key"
    w.error("AT+SSLCERTGET=2")
    set_cert(w, 2, pki.key_path.read_bytes())
    set_cert(w, 1, pki.cert_path.read_bytes())
    assert refused_cert(w, 1, b"") == "+ERRNO:5,empty certificate"


def test_tls_right_and_wrong_ca(m, pki, ntp):
    w = ready_with_clock(m, ntp)
    with TlsEcho(pki) as tls:
        set_cert(w, 0, pki.wrong_ca_pem)
        w.ok("AT+CIPSSLOPT=0,1,0")
        start(w, 0, "ssl_client", HOST, tls.port)
        w.wait_event(ev(0, "SERVER", "DISCONNECTED"), timeout=15)
        assert w.status(0) == "+CIPSTATUS:ssl_client,disconnected"
        # one line of plain words (mbedTLS's text has LFs in it)
        assert w.one("AT+CIPERR=0") == "+CIPERR:0,certificate not signed by a trusted CA"
        assert tls.handshakes == 0
        stop(w, 0)
        # the right CA
        set_cert(w, 0, pki.ca_pem)
        start(w, 0, "ssl_client", HOST, tls.port)
        w.wait_event(ev(0, "SERVER", "CONNECTED"), timeout=15)
        assert w.status(0) == "+CIPSTATUS:ssl_client,connected"
        w.send_data(0, PAYLOAD)
        assert w.recv(0, len(PAYLOAD)) == PAYLOAD
        w.send_data(0, (BIN * 4)[:4096])
        assert w.recv(0, 4096) == (BIN * 4)[:4096]
        assert w.max_chunk <= 1024
        stop(w, 0)
        # by name (SAN DNS:localhost)
        connect_client(w, 0, tls.port, typ="ssl_client", host="localhost")
        stop(w, 0)
        # no verification: the wrong CA does not matter
        set_cert(w, 0, pki.wrong_ca_pem)
        w.ok("AT+CIPSSLOPT=1,0,0")
        connect_client(w, 1, tls.port, typ="ssl_client")
        w.send_data(1, BIN)
        assert w.recv(1, len(BIN)) == BIN
        stop(w, 1)


def rtc_year(w: Wire) -> int:
    return int(w.one("AT+RTCGET").split(":", 1)[1][:4])


# The RTC reads 2000-01-01 after power-on; a CA-verified link waits until the module has the
# time from SNTP (it asks by itself once the station is up), then connects.
def test_verified_link_after_power_on_gets_the_time(m, pki, ntp):
    w = startup(m)
    assert rtc_year(w) == 2000
    set_cert(w, 0, pki.ca_pem)
    w.ok("AT+CIPSSLOPT=0,1,0")
    w.ok(f"AT+SNTPCFG=+0,{ntp.address}")
    m.kill()  # power cut: the settings stay, the clock is lost
    m.wait_booted(2)
    resync(w)
    assert rtc_year(w) == 2000
    with TlsEcho(pki) as tls:
        join(w)
        start(w, 0, "ssl_client", HOST, tls.port)
        w.wait_event(ev(0, "SERVER", "CONNECTED"), timeout=15)
        assert ntp.requests >= 1
        assert rtc_year(w) >= 2024
        w.send_data(0, PAYLOAD)
        assert w.recv(0, len(PAYLOAD)) == PAYLOAD
        stop(w, 0)


def test_verified_link_without_the_time_says_clock_not_set(m, pki):
    w = startup(m)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # an NTP server that never answers
    silent.bind((HOST, 0))
    try:
        w.ok(f"AT+SNTPCFG=+0,{HOST}:{silent.getsockname()[1]}")
        set_cert(w, 0, pki.ca_pem)
        w.ok("AT+CIPSSLOPT=0,1,0")
        join(w)
        with TlsEcho(pki) as tls:
            start(w, 0, "ssl_client", HOST, tls.port)
            w.wait_event(ev(0, "SERVER", "DISCONNECTED"), timeout=20)
            assert w.one("AT+CIPERR=0") == "+CIPERR:0,clock not set"
            assert tls.handshakes == 0
            stop(w, 0)
            # without verification the dates do not matter
            w.ok("AT+CIPSSLOPT=0,0,0")
            connect_client(w, 0, tls.port, typ="ssl_client")
            stop(w, 0)
    finally:
        silent.close()


def test_tls_links_capped_by_memory(m, pki):
    w = ready(m)
    with TlsEcho(pki) as tls:
        started = []
        for lid in range(5):
            r = w.send(f"AT+CIPSTART={lid},ssl_client,{HOST},{tls.port}")
            assert r in (["OK"], ["ERROR"]), r
            if r == ["OK"]:
                started.append(lid)
                x = w.wait_event(ev(lid, "SERVER", "CONNECTED"), timeout=15)
                assert x == []
        assert started == [0, 1]  # two TLS sessions at once, refused before any handshake
        assert w.one("AT+ERRNO") == "+ERRNO:6,no memory for another TLS session"
        assert tls.handshakes == 2
        w.ok("AT")
        for lid in started:
            w.send_data(lid, BIN)
            assert w.recv(lid, len(BIN)) == BIN
        for lid in started:
            stop(w, lid)
        assert m.status()["boots"] == 1  # no crash


# ----- auto-connect


def test_autoconn_restore_after_reboot(m, echo):
    w = ready(m)
    w.ok("AT+CIPAUTOCONN=0,1")
    w.ok("AT+CIPAUTOCONN=2,1")
    assert w.one("AT+CIPAUTOCONN=0") == "+CIPAUTOCONN:1"
    assert w.one("AT+CIPAUTOCONN=1") == "+CIPAUTOCONN:0"
    sport = free_port()
    lport = free_port(socket.SOCK_DGRAM)
    connect_client(w, 0, echo.port)
    connect_client(w, 1, echo.port)  # auto-connect off: not restored
    start(w, 2, "tcp_server", sport)
    w.ok("AT+CIPAUTOCONN=4,1")
    with UdpEcho() as u:
        start(w, 4, "udp_unicast", HOST, u.port, lport)
        w.wait_event(ev(4, "UDP", "CONNECTED"))
        w.ok("AT+REBOOT")
        m.wait_booted(2)
        resync(w)
        got = []
        for _ in range(3):
            got.append(w.event(timeout=15))
        got = [e for e in got if e != UP]
        while len(got) < 2:
            e = w.event(timeout=15)
            if e != UP:
                got.append(e)
        assert sorted(got) == sorted([ev(0, "SERVER", "CONNECTED"), ev(4, "UDP", "CONNECTED")])
        assert w.status(0) == "+CIPSTATUS:tcp_client,connected"
        assert w.status(1) == "+CIPSTATUS:tcp_client,close"
        assert w.status(2) == "+CIPSTATUS:tcp_server,connected"
        assert w.status(4) == "+CIPSTATUS:udp_unicast,connected"
        assert w.one("AT+CIPAUTOCONN=0") == "+CIPAUTOCONN:1"
        w.send_data(0, BIN)
        assert w.recv(0, len(BIN)) == BIN
        w.send_data(4, BIN)
        assert w.recv(4, len(BIN)) == BIN
        with client(sport) as c:
            w.wait_event(ev("CLIENT", "CONNECTED", HOST, c.getsockname()[1]))
        w.pump(0.3)
        w.events.clear()
        # stopped by the host: not restored
        stop(w, 0)
        stop(w, 4, "UDP")
        w.ok("AT+REBOOT")
        m.wait_booted(3)
        resync(w)
        w.pump(2)
        assert ev(0, "SERVER", "CONNECTED") not in w.events
        assert w.status(0) == "+CIPSTATUS:tcp_client,close"
        assert w.status(2) == "+CIPSTATUS:tcp_server,connected"


def test_autoconn_reconnects_after_drop(m):
    w = ready(m)
    w.ok("AT+CIPAUTOCONN=0,1")
    echo = TcpEcho()
    port = echo.port
    try:
        connect_client(w, 0, port)
        wait_for(lambda: len(echo.conns) == 1, 5, "connection")
        echo.reset_all()
        w.expect(ev(0, "SERVER", "DISCONNECTED"))
        t = time.monotonic()
        w.wait_event(ev(0, "SERVER", "CONNECTED"), timeout=5)
        assert 0.5 < time.monotonic() - t < 3.5  # back-off starts at 1 s
        w.send_data(0, BIN)
        assert w.recv(0, len(BIN)) == BIN
        # the server goes away for a while, then comes back on the same port
        echo.stop()
        w.expect(ev(0, "SERVER", "DISCONNECTED"))
        time.sleep(4)  # refused retries at 1 and 2 s: announced once per outage, as Wi-Fi's
        echo = TcpEcho(port)
        w.wait_event(ev(0, "SERVER", "CONNECTED"), timeout=12)
        w.send_data(0, BIN)
        assert w.recv(0, len(BIN)) == BIN
        stop(w, 0)
        w.quiet(1.5)  # stopped: no retrying
    finally:
        echo.stop()


# ----- back-pressure


def test_push_mode_1mb_from_a_source(m):
    w = ready(m)
    payload = random.Random(2).randbytes(1 << 20)
    with TcpSource(payload) as src:
        connect_client(w, 0, src.port)
        assert w.recv(0, len(payload), timeout=60) == payload
        w.wait_event(ev(0, "SERVER", "DISCONNECTED"))
    assert w.max_chunk <= 1024


@pytest.mark.slow
def test_push_mode_10mb_with_a_slow_reader(m):
    w = ready(m)
    size = 10 << 20
    payload = random.Random(3).randbytes(size)
    want = hashlib.sha256(payload).hexdigest()
    h = hashlib.sha256()
    got = 0
    with TcpSource(payload) as src:
        connect_client(w, 0, src.port)
        sent_at_1mb = None
        while got < size:
            x = w.item(timeout=30)
            if isinstance(x, tuple) and x[0] == "SOCKET":
                assert x[1] == 0 and 0 < len(x[2]) <= 1024
                h.update(x[2])
                got += len(x[2])
                if got < 2 << 20:
                    time.sleep(0.004)  # the host reads slowly: ~250 KB/s at most
                if sent_at_1mb is None and got >= 1 << 20:
                    sent_at_1mb = src.sent
            else:
                assert is_event(x), x
                w._keep(x)
        assert got == size
        assert h.hexdigest() == want, "data corrupted or out of order"
        print(f"source had sent {sent_at_1mb} bytes when the host had read 1 MB")
        w.wait_event(ev(0, "SERVER", "DISCONNECTED"), timeout=10)
        w.ok("AT")
