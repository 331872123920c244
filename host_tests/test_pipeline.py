"""Event order under a pipelining host (issue 15): every command that causes an event is followed
at once (0-5 ms after the outcome the driver waits for) by another command; the strict reader
(host_tests/wire.py) fails on any event byte between a command and its final result or inside a
`>` data phase. Paced (PACE=1) at 115200 and 921600 baud, echo on (where the contract is
visible byte for byte: nothing may come between the echo and the response) and off.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import pytest

from host_tests.module import Module
from host_tests.netservers import HOST, TcpEcho, UdpEcho, free_port, udp_send
from host_tests.wire import Rx

ROUNDS = 12  # per configuration in make test; ROUNDS_SLOW under the slow marker
ROUNDS_SLOW = 200


class Host:
    """A pipelining driver: the next command goes out 0-5 ms after the outcome it waited for."""

    def __init__(self, m: Module, echo: bool) -> None:
        self.m = m
        self.rx = Rx(m, "pipeline")
        self.rx.echo = echo
        self.rng = random.Random(15)

    def pause(self) -> None:
        time.sleep(self.rng.uniform(0, 0.005))

    def send(self, line: str) -> list[str]:
        self.pause()
        self.m.write(line.encode() + b"\r")
        return self.rx.response(line, 10, echo=line.encode() + b"\r" if self.rx.echo else b"")

    def ok(self, line: str) -> list[str]:
        r = self.send(line)
        assert r[-1] == "OK", (line, r)
        return r[:-1]

    def cipsend(self, lid: int, data: bytes) -> None:
        """The prompt must be the first byte after the command (EWF takes it for `>`)."""
        line = f"AT+CIPSEND={lid},{len(data)}"
        self.pause()
        self.m.write(line.encode() + b"\r")
        head = line.encode() + b"\r>" if self.rx.echo else b">"
        self.rx._events_first(time.monotonic() + 10)  # what the module wrote before our line
        got = self.rx._take(len(head), time.monotonic() + 10)
        assert got == head, f"{line}: {got!r}"
        self.m.write(data)
        assert self.rx.response(line, 10, opened=True) == ["OK"]


def udp_round(h: Host, port: int, k: int) -> None:
    # the UDP link is bound by the command: its CONNECTED event is part of CIPSTART's response
    assert h.ok(f"AT+CIPSTART=1,udp_unicast,{HOST},{port}") == []
    assert h.rx.wait_event("+CIPEVENT:1,UDP,CONNECTED", 0) == "+CIPEVENT:1,UDP,CONNECTED"
    data = b"u%04d" % k
    h.cipsend(1, data)
    assert h.rx.socket_data(1, len(data)) == data
    assert h.ok("AT+CIPSTOP=1") == []
    h.rx.wait_event("+CIPEVENT:1,UDP,CLOSED", 0)


def tcp_round(h: Host, port: int, k: int) -> None:
    # CONNECTED comes later, from the link's task: never inside the CIPSEND that follows
    assert h.ok(f"AT+CIPSTART=0,tcp_client,{HOST},{port}") == []
    data = b"t%04d" % k
    h.cipsend(0, data)
    assert h.rx.socket_data(0, len(data)) == data
    h.rx.wait_event("+CIPEVENT:0,SERVER,CONNECTED", 5)
    assert h.ok("AT+CIPSTATUS=0") == ["+CIPSTATUS:tcp_client,connected"]
    assert h.ok("AT+CIPSTOP=0") == []
    h.rx.wait_event("+CIPEVENT:0,SERVER,CLOSED", 0)


@pytest.fixture(params=[115200, 921600], ids=["115200", "921600"])
def paced(request: pytest.FixtureRequest, tmp_path) -> Iterator[Module]:
    m = Module(tmp_path / "state", pace=True)
    try:
        m.sync()
        if request.param != 115200:
            assert m.cmd(f"AT+UART={request.param},8,1,NONE,NONE").endswith(b"OK\r\n")
            m.write(b"AT+REBOOT\r")
            m.wait_booted(2)
            m.sync()
        assert m.status()["uart"]["baudrate"] == request.param
        m.write(b"AT+WJAP=EMW-TEST,12345678\r")
        m.read_until(b"+WEVENT:STATION_UP", 20)
        m.drain()
        yield m
    finally:
        m.stop()


def run_rounds(m: Module, echo: bool, rounds: int) -> None:
    h = Host(m, True)
    if not echo:
        assert h.ok("AT+UARTE=OFF") == []
        h.rx.echo = False
    with UdpEcho() as u, TcpEcho() as t:
        for k in range(rounds):
            (udp_round if k % 2 else tcp_round)(h, u.port if k % 2 else t.port, k)
    h.rx.pump(0.3)
    assert h.rx.events == [], h.rx.events


@pytest.mark.parametrize("echo", [True, False], ids=["echo", "no-echo"])
def test_no_event_inside_a_response_when_pipelined(paced: Module, echo: bool) -> None:
    run_rounds(paced, echo, ROUNDS)


@pytest.mark.slow
def test_no_event_inside_a_response_200_rounds(paced: Module) -> None:
    run_rounds(paced, True, ROUNDS_SLOW)


def test_a_partial_line_holds_events_for_a_second_at_most(module: Module) -> None:
    """Bytes of an unfinished line hold events; 1 s of silence after its last byte frees them
    (the line itself is kept: finishing it later still runs it)."""
    module.cmd("AT+WJAP=EMW-TEST,12345678")
    module.read_until(b"+WEVENT:STATION_UP", 20)
    lport = free_port(socket.SOCK_DGRAM)
    with UdpEcho() as u:
        module.cmd(f"AT+CIPSTART=1,udp_unicast,{HOST},{u.port},{lport}")
        module.drain()
        module.write(b"AT+FW")  # a partial line
        module.read_until(b"AT+FW")
        t0 = time.monotonic()
        udp_send(lport, b"held")
        module.read_until(b"\r\n+CIPEVENT:SOCKET,1,4,held\r\n", 5)
        assert 0.9 <= time.monotonic() - t0 <= 3
        module.write(b"VER?\r")
        assert module.read_until(b"\r\nOK\r\n").startswith(b"VER?\r\r\n+FWVER:")


@pytest.mark.parametrize("typ", ["udp_unicast", "udp_broadcast"])
def test_udp_without_a_local_port_sends_and_receives(module: Module, typ: str) -> None:
    """EWF's form: AT+CIPSTART=<id>,<udp type>,<ip>,<remote port> (local port: any)."""
    h = Host(module, True)
    h.ok("AT+WJAP=EMW-TEST,12345678")
    h.rx.wait_event("+WEVENT:STATION_UP", 20)
    with UdpEcho() as u:
        assert h.ok(f"AT+CIPSTART=2,{typ},{HOST},{u.port}") == []
        h.rx.wait_event("+CIPEVENT:2,UDP,CONNECTED", 0)
        h.cipsend(2, b"any port")
        if typ == "udp_unicast":
            assert h.rx.socket_data(2, 8) == b"any port"
        else:
            e = h.rx.wait_event(lambda e: isinstance(e, tuple) and e[0] == "UDP_BROADCAST", 5)
            assert e == ("UDP_BROADCAST", HOST, u.port, 2, b"any port")
