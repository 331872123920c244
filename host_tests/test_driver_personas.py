"""Driver personas (STYLE.md "Three test layers", layer 3): the module driven through its pty the
way real host drivers drive it, as /work/shared/spec/wire-notes.md records them.

python-gsmmodem's test/fakemodems.py scripts one fake modem per model for a real driver; this
is the mirror image: each persona is a small scripted driver of one family (the bytes it sends,
how it waits, what it matches), run end to end against the real firmware on a fresh module
(echo ON, as after AT+FACTORY) and real peers on 127.0.0.1.

Every persona reads the module through `Rx` (host_tests/wire.py), a strict classifier like a
real driver's: events only between responses, except those a command causes, just before its
final result.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from host_tests.module import ERROR, OK, Module
from host_tests.mosquitto import Broker, have_mosquitto
from host_tests.netservers import HOST, TcpEcho, free_port, wait_for
from host_tests.wire import Event, Rx

# Binary that looks like the protocol: finals, event prefixes, prompts, commas, Ctrl+Z
TRICKY = (
    b"\r\nOK\r\n\r\nERROR\r\n>,,\r\n+CIPEVENT:SOCKET,0,5,\r\n+WEVENT:STATION_DOWN\r\n"
    b"\r\n+MQTTRECV:0,3,\r\nAT+CIPSTOP=0\r+++\x00\x1a\xff"
)
BIN = bytes(range(256))

# ----- the persona base


class Driver:
    """A driver: writes commands as its family does and classifies replies with Rx."""

    name = "driver"
    eol = b"\r"

    def __init__(self, m: Module) -> None:
        self.m = m
        self.rx = Rx(m, self.name)

    def send(self, line: str, *, lead: bytes = b"", eol: bytes | None = None, timeout=5.0):
        """Write lead + line + eol; the response lines (ending "OK"/"ERROR")."""
        head = lead + line.encode() + b"\r"
        raw = lead + line.encode() + (self.eol if eol is None else eol)
        self.m.write(raw)
        return self.rx.response(line, timeout, echo=head if self.rx.echo else b"")

    def ok(self, line: str, **kw) -> list[str]:
        r = self.send(line, **kw)
        assert r[-1] == "OK", f"{self.name}: {line!r} -> {r}"
        return r[:-1]

    def echo_off(self) -> None:
        assert self.send("AT+UARTE=OFF") == ["OK"]  # echoed: the setting acts after the line
        self.rx.echo = False

    def join(self, line: str = "AT+WJAP=EMW-TEST,12345678", timeout: float = 20.0) -> None:
        assert self.ok(line) == []  # answers at once; joining is asynchronous
        self.rx.wait_event("+WEVENT:STATION_UP", timeout)

    def sync(self, period: float = 0.2, timeout: float = 15.0) -> None:
        """`AT` every `period` until an OK comes, then flush the input (echoes, extra OKs)."""
        end = time.monotonic() + timeout
        while True:
            assert time.monotonic() < end, f"{self.name}: no OK to AT within {timeout} s"
            self.m.write(b"AT\r")
            try:
                self.m.read_until(OK, period)
                break
            except TimeoutError:
                continue
        self.m.drain(0.3)


# ----- 1. Mbed MXCHIP driver


class MbedMxchip(Driver):
    """Mbed's MXCHIP driver: factory reset re-sent until OK, `AT` polled, echo off, push mode;
    CIPSEND right after CIPSTART's OK; socket data read by the header up to the third comma."""

    name = "mbed"

    def reset(self) -> None:
        for _ in range(50):  # AT+FACTORY every 200 ms until its OK
            self.m.write(b"AT+FACTORY\r")
            try:
                self.m.read_until(OK, 0.2)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("mbed: AT+FACTORY never answered OK")
        self.sync(period=0.5)
        self.rx.echo = True  # factory default

    def cipsend(self, lid: int, data: bytes) -> None:
        line = f"AT+CIPSEND={lid},{len(data)}"
        self.m.write(line.encode() + b"\r")
        assert self.rx.prompt(5), f"mbed: no '>' for {line}"
        self.m.write(data)
        assert self.rx.response(line, 10, opened=True) == ["OK"]


def test_mbed_mxchip(module: Module) -> None:
    d = MbedMxchip(module)
    d.reset()
    d.echo_off()
    assert d.ok("AT+CIPRECVCFG=1") == []
    d.join()
    # queries with and without "?" answer the same
    mac = d.ok("AT+WMAC")
    assert mac == d.ok("AT+WMAC?")
    assert re.fullmatch(r"\+WMAC:[0-9A-F]{12}", mac[0]), mac
    ver = d.ok("AT+FWVER")
    assert ver == d.ok("AT+FWVER?")
    assert len(ver) == 1 and ver[0].startswith("+FWVER:"), ver
    assert 1 <= len(ver[0][len("+FWVER:") :]) <= 32, ver
    # the malformed line of its info dump: the driver drops the reply, the module carries on
    assert d.send("AT+AT+WDHCP?") == ["ERROR"]
    assert d.ok("AT+WDHCP?")[0].startswith("+WDHCP:")
    with TcpEcho() as echo:
        # CIPSEND at once after CIPSTART's OK, not waiting for the CONNECTED event
        assert d.ok(f"AT+CIPSTART=0,tcp_client,{HOST},{echo.port}") == []
        first = TRICKY + BIN
        d.cipsend(0, first)
        assert d.rx.socket_data(0, len(first)) == first
        d.rx.wait_event("+CIPEVENT:0,SERVER,CONNECTED", 5)
        second = BIN[::-1] * 4  # 1024 bytes
        d.cipsend(0, second)
        assert d.rx.socket_data(0, len(second)) == second
        assert d.ok("AT+CIPSTOP=0") == []
        d.rx.wait_event("+CIPEVENT:0,SERVER,CLOSED", 5)
        assert d.ok("AT+CIPSTATUS=0") == ["+CIPSTATUS:tcp_client,close"]
    d.rx.pump(0.3)
    assert d.rx.events == [], d.rx.events


# ----- 2. Microsoft EWF MXCHIP EMW3080B adapter


class EwfEmw3080(Driver):
    """EWF's EMW3080B adapter: its start-up sequence, CIPSTATUS polling, `\\r\\r` line ends and
    a leading `\\r`; CIPSEND re-sent when `>` is not seen within 50 ms (one product driver)."""

    name = "ewf"
    eol = b"\r\r"  # the extra \r is an empty line: no reply

    def __init__(self, m: Module) -> None:
        super().__init__(m)
        self.resends = 0

    def start(self) -> None:
        assert self.send("AT", eol=b"\r") == ["OK"]  # echo on: the "\r\r" comes after echo off
        fw = self.ok("AT+FWVER?", eol=b"\r")
        assert len(fw) == 1 and 1 <= len(fw[0].partition(":")[2]) <= 32, fw
        assert self.send("AT+UARTE=OFF", eol=b"\r") == ["OK"]
        self.rx.echo = False
        assert self.ok("AT") == []
        for i in range(5):
            assert self.ok(f"AT+CIPAUTOCONN={i},0") == []
        for i in range(5):
            assert self.ok(f"AT+CIPSTOP={i}") == []  # OK although never started
        for line in ("AT+WEVENT=ON", "AT+CIPEVENT=ON", "AT+CIPRECVCFG=1"):
            assert self.ok(line) == []

    def mac(self) -> str:
        r = self.ok("AT+WMAC?")
        assert len(r) == 1 and r[0].startswith("+WMAC:"), r
        mac = r[0][6:]
        assert re.fullmatch(r"[0-9A-F]{12}", mac), r
        return mac

    def status(self, lid: int) -> str:
        r = self.ok(f"AT+CIPSTATUS={lid}", lead=b"\r")
        assert len(r) == 1 and r[0].startswith("+CIPSTATUS:"), r
        return r[0].split(",")[-1]

    def cipsend(self, lid: int, data: bytes, together: bool = False) -> None:
        line = f"AT+CIPSEND={lid},{len(data)}"
        cmd = line.encode() + b"\r"  # the data starts right after this \r: no "\r\r" here
        if together:  # data in the same write as the command, not waiting for ">"
            self.m.write(cmd + data)
            assert self.rx.response(line, 10) == [">", "OK"]
            return
        self.m.write(cmd)
        while not self.rx.prompt(0.05):  # the product driver's 50 ms, then the command again
            self.resends += 1
            assert self.resends <= 3, f"ewf: no '>' for {line} after {self.resends} sends"
            self.m.write(cmd)
        self.m.write(data)
        r = self.rx.response(line, 10, opened=True)
        assert r == ["OK"], f"ewf: {line} -> {r} (re-sends so far: {self.resends})"


def test_ewf_emw3080b_adapter(module: Module) -> None:
    d = EwfEmw3080(module)
    d.start()
    mac = d.mac()
    assert d.ok("AT+WMAC") == [f"+WMAC:{mac}"]
    d.join()
    st = d.status(0)
    assert st.startswith("close") and st[2] == "o", st  # both checks drivers use
    with TcpEcho() as echo:
        assert d.ok(f"AT+CIPSTART=0,tcp_client,{HOST},{echo.port}") == []
        end = time.monotonic() + 10
        while (st := d.status(0)) != "connected":  # polled, events meanwhile are kept
            assert st == "connecting", st
            assert time.monotonic() < end, "ewf: link 0 never connected"
            time.sleep(0.05)
        d.rx.wait_event("+CIPEVENT:0,SERVER,CONNECTED", 5)
        sends = [b"hello", TRICKY, BIN * 4, b"\n" + TRICKY[::-1], b"x" * 4096]
        for k, data in enumerate(sends):
            d.cipsend(0, data, together=k % 2 == 1)
            assert d.rx.socket_data(0, len(data)) == data
        assert d.ok("AT+CIPSTOP=0", lead=b"\r") == []
        d.rx.wait_event("+CIPEVENT:0,SERVER,CLOSED", 5)
        assert d.status(0).startswith("close")
    d.rx.pump(0.3)
    assert d.rx.events == [], d.rx.events


# ----- 3. AliOS Things MK3060 / RT-Thread mw31


class AliosMk3060(Driver):
    """AliOS MK3060 and RT-Thread mw31: a TCP server addressed per client by remote port,
    pipelined CIPSENDs with their data, `\\,` in parameters; foreign commands along the way."""

    name = "alios"

    def pipelined_sends(self, lid: int, parts: list[tuple[int, bytes]]) -> None:
        """Several CIPSENDs, each with its data, in one write; each answers > and OK in order."""
        lines = [f"AT+CIPSEND={lid},{port},{len(data)}" for port, data in parts]
        self.m.write(b"".join(x.encode() + b"\r" + data for x, (_, data) in zip(lines, parts)))
        for x in lines:
            assert self.rx.response(x, 10) == [">", "OK"], x


def recv_exact(s: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, f"peer closed after {len(out)} of {n} bytes"
        out += chunk
    return out


def test_alios_mk3060_rtthread_server(module: Module) -> None:
    d = AliosMk3060(module)
    d.echo_off()
    # commands written for other modules: ERROR, and the module carries on
    assert d.send("AT+RST") == ["ERROR"]
    assert d.send('AT+CWJAP="x","y"') == ["ERROR"]
    assert d.ok("AT") == []
    # "\," is a literal comma: the SSID is "Cafe Wi-Fi, 2nd floor"
    d.join(r"AT+WJAP=Cafe Wi-Fi\, 2nd floor,espresso42")
    ip = d.ok("AT+WJAPIP?")
    assert ip == ["+WJAPIP:172.16.5.77,255.255.0.0,172.16.0.1,8.8.8.8"], ip
    port = free_port()
    assert d.ok(f"AT+CIPSTART=1,tcp_server,{port}") == []
    cs = [socket.create_connection((HOST, port), timeout=5) for _ in range(2)]
    try:
        ports = [c.getsockname()[1] for c in cs]
        for p in ports:
            d.rx.wait_event(f"+CIPEVENT:CLIENT,CONNECTED,{HOST},{p}", 10)
        # data from each client, one after the other
        for k, c in enumerate(cs):
            msg = bytes([k]) * 7 + TRICKY + BIN
            c.sendall(msg)
            assert d.rx.socket_data(1, len(msg)) == msg
        assert d.send('AT+CWJAP="x","y"') == ["ERROR"]
        # pipelined: a CIPSEND to each client (by remote port) with its data, back to back
        parts = [(ports[0], b"to-0:" + TRICKY), (ports[1], b"to-1:" + BIN), (ports[0], b"!")]
        d.pipelined_sends(1, parts)
        assert recv_exact(cs[0], len(parts[0][1]) + 1) == parts[0][1] + b"!"
        assert recv_exact(cs[1], len(parts[1][1])) == parts[1][1]
        assert d.send("AT+RST") == ["ERROR"]
        assert d.ok("AT+CIPSTATUS=1") == ["+CIPSTATUS:tcp_server,connected"]
        # stopping the server closes its clients, then the server
        assert d.ok("AT+CIPSTOP=1") == []
        for p in ports:
            d.rx.wait_event(f"+CIPEVENT:CLIENT,CLOSED,{HOST},{p}", 5)
        d.rx.wait_event("+CIPEVENT:1,SERVER,CLOSED", 5)
        for c in cs:
            c.settimeout(5)
            assert c.recv(1) == b""
    finally:
        for c in cs:
            c.close()
    assert d.ok("AT+CIPSTATUS=1") == ["+CIPSTATUS:tcp_server,close"]
    d.rx.pump(0.3)
    assert d.rx.events == [], d.rx.events


# ----- 4. MQTT cloud client (Aliyun-style credentials)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not have_mosquitto():
        pytest.skip("mosquitto not installed")
    with Broker(tmp_path, user="dev1&prod1", password="0123abcd") as b:
        yield b


class MqttCloud(Driver):
    """A cloud SDK's MQTT glue: Aliyun-style client id with `\\,`, MQTTSTART and the CONNECT
    event, SUBSCRIBE by sub id, MQTTSEND with a leading `\\r` and the payload plus a `\\r`."""

    name = "mqtt"

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.ok(f"AT+MQTTPUB={topic},1") == []
        line = f"AT+MQTTSEND={len(payload)}"
        self.m.write(b"\r" + line.encode() + b"\r")
        assert self.rx.prompt(5), f"mqtt: no '>' for {line}"
        self.m.write(payload + b"\r")  # the trailing \r is an empty line: no reply
        assert self.rx.response(line, 10, opened=True) == ["OK"]


def test_mqtt_cloud_client(module: Module, broker: Broker) -> None:
    d = MqttCloud(module)
    d.echo_off()
    d.join()
    mac = d.ok("AT+WMAC?")[0][6:]
    cid = f"{mac}|securemode=3\\,signmethod=hmacsha1|"
    assert d.ok("AT+MQTTAUTH=dev1&prod1,0123abcd") == []
    assert d.ok(f"AT+MQTTSOCK={HOST},{broker.port}") == []
    assert d.ok(f"AT+MQTTCID={cid}") == []
    assert d.ok("AT+MQTTSTART") == []
    d.rx.wait_event("+MQTTEVENT:CONNECT,SUCCESS", 15)
    wait_for(lambda: f"as {cid.replace(chr(92), '')}" in broker.log(), 5, "client id at broker")
    assert d.ok("AT+MQTTSTATUS=connect") == ["+MQTTSTATUS:CONNECT,SUCCESS"]
    topic = "/prod1/dev1/user/get"
    assert d.ok(f"AT+MQTTSUB=0,{topic},1") == []
    d.rx.wait_event("+MQTTEVENT:0,SUBSCRIBE,SUCCESS", 10)
    for payload in (b'{"id":1,"params":{"on":1}}', TRICKY + BIN):
        d.publish(topic, payload)
        d.rx.wait_event("+MQTTEVENT:PUBLISH,SUCCESS", 10)
        got = d.rx.wait_event(lambda e: isinstance(e, tuple) and e[0] == "MQTTRECV", 10)
        assert got == ("MQTTRECV", 0, payload)
    assert d.ok("AT+MQTTSTATUS=connect") == ["+MQTTSTATUS:CONNECT,SUCCESS"]
    d.rx.pump(0.3)
    assert d.rx.events == [], d.rx.events


# ----- the classifier itself: it must be as strict as the docstring says


class FakeWire:
    """Stands in for Module in Rx: _fill() hands out scripted chunks, one per call."""

    def __init__(self, *chunks: bytes) -> None:
        self._buf = bytearray()
        self.chunks = list(chunks)

    def _fill(self, timeout: float) -> bool:
        if not self.chunks:
            time.sleep(min(max(timeout, 0.0), 0.01))
            return False
        self._buf += self.chunks.pop(0)
        return True


def fake(*chunks: bytes, echo: bool = False) -> Rx:
    rx = Rx(cast(Module, FakeWire(*chunks)), "t")
    rx.echo = echo
    return rx


def test_rx_classifies_like_a_driver() -> None:
    sock = b"\r\n+CIPEVENT:SOCKET,0,7,\r\nOK\r\n,\r\n"
    up = b"\r\n+WEVENT:STATION_UP\r\n"
    rx = fake(up, sock[:9], sock[9:], b"\r\n+WMAC:C8", b"93\r\n", OK)
    assert rx.response("AT+WMAC?") == ["+WMAC:C893", "OK"]
    assert rx.events == ["+WEVENT:STATION_UP", ("SOCKET", 0, b"\r\nOK\r\n,")]
    rx = fake(b"AT\r\r\nOK\r\n", b"\r\n+MQTTRECV:2,3,a\r\n\r\n", b">\r\nERROR\r\n", echo=True)
    assert rx.response("AT", echo=b"AT\r") == ["OK"]
    assert rx.response("AT+MQTTSEND=1") == [">", "ERROR"]
    assert rx.events == [("MQTTRECV", 2, b"a\r\n")]


@pytest.mark.parametrize(
    "wire",
    [
        b"\r\n+CIPSTATUS:tcp_client,close\r\n\r\n+CIPEVENT:0,SERVER,CLOSED\r\n\r\nOK\r\n",
        b"\r\n+WJAPIP:1.2.3.4\r\n\r\n+WEVENT:STATION_DOWN\r\n\r\nOK\r\n",
        b">\r\n+MQTTEVENT:PUBLISH,SUCCESS\r\n\r\nOK\r\n",
        b"\r\n+FWVER:1.0\r\n\r\n+CIPEVENT:SOCKET,1,2,hi\r\n\r\nOK\r\n",
        b"\r\nOK\r\njunk",  # the OK is fine; pump() rejects the bytes after it
        b"\r\nOK\r\n\r\n+CIPEVENT:SOCKET,0,4,abcdef\r\n",  # data longer than its <len>
        b"+FWVER:1.0\r\n\r\nOK\r\n",  # no blank line before the data line
    ],
)
def test_rx_rejects_what_drivers_choke_on(wire: bytes) -> None:
    rx = fake(wire)
    with pytest.raises((AssertionError, TimeoutError)):
        rx.response("AT+X", timeout=0.2)
        rx.pump(0.1)
