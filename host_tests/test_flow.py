"""Flow control end to end (issue 15): a host that stops reading the UART.

The launcher models the host side of the wire: the pty is the host's receive buffer. With
CTS/RTS, a full pty deasserts CTS, the firmware's UART writes stop, the firmware stops reading
the TCP socket and the peer's window closes: nothing is lost however long the pause. Without
flow control the wire drops what the host's buffer cannot hold; the launcher counts it, the
module writes whole frames only, and it answers commands again as soon as the host reads.
"""

from __future__ import annotations

import re
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from host_tests.module import OK, Module
from host_tests.mosquitto import Broker, have_mosquitto
from host_tests.netservers import HOST, TcpSource
from host_tests.wire import Rx

MIB = 1024 * 1024
HEADER = re.compile(rb"\r\n\+CIPEVENT:SOCKET,0,(\d+),")


def pattern(n: int) -> bytes:
    """n bytes in which every slice of 8 bytes or more occurs once (a counter)."""
    return b"".join(struct.pack(">I", i) for i in range(n // 4))


class SourceOnRequest(TcpSource):
    """Sends the payload once the client has sent a byte (so it all comes in the mode the
    client is in by then)."""

    def handle(self, conn) -> None:
        if self.recv(conn, 1):
            super().handle(conn)


def restart_with(m: Module, uart: str) -> None:
    assert m.cmd(f"AT+UART={uart}").endswith(OK)
    boots = m.status()["boots"]
    m.write(b"AT+REBOOT\r")
    m.wait_booted(boots + 1)
    m.sync()


def join(m: Module) -> None:
    m.cmd("AT+UARTE=OFF")
    m.cmd("AT+WJAP=EMW-TEST,12345678")
    m.read_until(b"+WEVENT:STATION_UP", 20)
    m.drain()


@pytest.fixture
def cts(tmp_path) -> Iterator[Module]:
    m = Module(tmp_path / "state")
    try:
        m.sync()
        restart_with(m, "115200,8,1,NONE,CTSRTS")
        assert m.status()["uart"]["flow"] == 3
        join(m)
        yield m
    finally:
        m.stop()


def download(m: Module, size: int, pauses: dict[int, float], raw: bool = False) -> None:
    """A size-byte download from a TCP peer, the host not reading for pauses[offset] seconds
    once it has offset bytes; byte-exact, nothing dropped. (The peer is held back too, but
    on the PC only once the loopback TCP buffers, megabytes, are full: lwIP's window on the
    board is a few KB.)"""
    payload = pattern(size)
    rx = Rx(m, "flow")
    rx.echo = False
    with SourceOnRequest(payload) as src:
        m.write(f"AT+CIPSTART=0,tcp_client,{HOST},{src.port}\r")
        assert rx.response("AT+CIPSTART", 5) == ["OK"]
        rx.wait_event("+CIPEVENT:0,SERVER,CONNECTED", 10)
        if raw:
            m.write(b"AT+CIPSENDRAW\r")
            assert rx.response("AT+CIPSENDRAW", 5) == ["OK"]
            m.write(b"g")  # a frame, at the AT+UARTFOMAT idle time
        else:
            m.write(b"AT+CIPSEND=0,1\rg")
            assert rx.response("AT+CIPSEND", 5) == [">", "OK"]
        got = bytearray()
        for at, seconds in sorted(pauses.items()):
            got += take(rx, raw, at - len(got))
            time.sleep(seconds)  # the host stops reading
        got += take(rx, raw, size - len(got))
        assert got == payload
    assert m.status()["dropped"] == 0


def take(rx: Rx, raw: bool, n: int) -> bytes:
    if not raw:
        return rx.socket_data(0, n, timeout=60)
    out = bytearray()
    while len(out) < n:
        want = min(n - len(out), 65536)
        out += rx._take(min(want, max(1, len(rx.buf))), time.monotonic() + 60)
    return bytes(out)


def test_cts_download_with_pauses_arrives_byte_exact(cts: Module) -> None:
    download(cts, 4 * MIB, {MIB: 3.0, 2 * MIB: 10.0})


def test_cts_download_in_transparent_mode_arrives_byte_exact(cts: Module) -> None:
    download(cts, 4 * MIB, {MIB: 3.0}, raw=True)


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
def test_cts_mqtt_qos1_messages_survive_a_pause(cts: Module, tmp_path) -> None:
    """400 KB of QoS 1 messages published while the host does not read for 3 s: the module
    stops reading the broker while CTS is held, and every message arrives once, in order."""
    rx = Rx(cts, "flow")
    rx.echo = False
    payloads = [b"%04d" % i + b"x" * 996 for i in range(400)]
    with Broker(tmp_path) as b:
        for line in (f"AT+MQTTSOCK={b.host},{b.port}", "AT+MQTTSUB=0,flow/#,1", "AT+MQTTSTART"):
            cts.write(line.encode() + b"\r")
            assert rx.response(line, 5) == ["OK"]
        rx.wait_event("+MQTTEVENT:CONNECT,SUCCESS", 10)
        pub = subprocess.Popen(
            ["mosquitto_pub", *b.client_args(), "-t", "flow/a", "-q", "1", "-l"],
            stdin=subprocess.PIPE,
        )
        pub.communicate(b"\n".join(payloads) + b"\n", timeout=30)
        time.sleep(3)  # the host stops reading
        got = [rx.wait_event(lambda e: e[:2] == ("MQTTRECV", 0), 30)[2] for _ in payloads]
        assert got == payloads
        rx.pump(0.5)
        assert not [e for e in rx.events if e[:1] == ("MQTTRECV",)]  # none twice
    assert cts.status()["dropped"] == 0


@pytest.mark.slow
def test_cts_download_with_a_minute_pause_arrives_byte_exact(cts: Module) -> None:
    download(cts, 4 * MIB, {MIB: 60.0})


def test_without_flow_control_loss_is_counted_frames_stay_whole(tmp_path) -> None:
    with Module(tmp_path / "state", pace=True) as m:
        m.sync()
        restart_with(m, "921600,8,1,NONE,NONE")
        join(m)
        payload = pattern(4 * MIB)
        with TcpSource(payload) as src:
            m.write(f"AT+CIPSTART=0,tcp_client,{HOST},{src.port}\r")
            m.read_until(b"+CIPEVENT:0,SERVER,CONNECTED", 10)
            m.read_until(b"+CIPEVENT:SOCKET", 10)
            time.sleep(3)  # not reading: the pty fills, the rest of the wire is lost
            assert m.status()["dropped"] > 0
            m.drain(0)  # the host reads again: what its buffer held
            t0 = time.monotonic()
            m.write(b"AT\r")
            rest = m.read_until(OK, 5)
            assert time.monotonic() - t0 < 1.0, "AT not answered within 1 s of reading again"
            rest += m.read(65536, 1.0)
        frames = whole_frames(rest, payload)
        assert frames >= 5, rest[:300]
        assert "dropping UART output" in m.console()


def whole_frames(wire: bytes, payload: bytes) -> int:
    """Frames after the first header are whole, each a contiguous slice of the payload
    following the one before; the count of them (the first may have been cut by the loss)."""
    heads = list(HEADER.finditer(wire))
    count = 0
    end = None
    for h in heads[1:]:
        n = int(h.group(1))
        data = wire[h.end() : h.end() + n]
        if len(data) < n:
            break  # the read stopped inside this one
        assert wire[h.end() + n : h.end() + n + 2] == b"\r\n", wire[h.start() : h.end() + 40]
        at = payload.find(data)
        assert at >= 0, "a frame is not a slice of the payload"
        assert end is None or at == end, "frames after the loss are not consecutive"
        end = at + n
        count += 1
    return count
