"""Faults from outside (issue 17): peers that freeze, reset or vanish, the AP going away in the
middle of a transfer, names that do not resolve, a data phase broken off or full of noise,
and every link busy at once. The module reports, refuses with ERROR and a reason, recovers
without restarting, and loses or duplicates nothing it acknowledged.

More MQTT broker restarts are in test_mqtt.py (test_broker_restart, test_wifi_loss).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from host_tests.module import TARGET_PORT, WIFI_KEY, WIFI_SSID, Module
from host_tests.mosquitto import Broker, have_mosquitto
from host_tests.netservers import (
    HOST,
    TcpEcho,
    TcpServer,
    TcpSource,
    TlsEcho,
    UdpEcho,
    free_port,
    wait_for,
)
from host_tests.soak import Wire as SoakWire
from host_tests.test_tcpip import (
    UP,
    Wire,
    connect_client,
    ev,
    is_event,
    join,
    ready,
    start,
    stop,
)

CHUNK = 4096
SUBSCRIBED = "+MQTTEVENT:1,SUBSCRIBE,SUCCESS"
OUTCOMES = ("+MQTTEVENT:PUBLISH,SUCCESS", "+MQTTEVENT:PUBLISH,FAIL")


class MqttWire(SoakWire):
    """The soak's reader (MQTT messages as data of "mqtt"), remembering every event read."""

    def __init__(self, m: Module) -> None:
        super().__init__(m)
        self.seen: list[str] = []

    def _keep(self, x) -> None:
        if isinstance(x, str):
            self.seen.append(x)
        super()._keep(x)

    def until(self, event: str, since: int, timeout: float = 30.0) -> None:
        """Read until `event` is among the events seen from index `since` on."""
        end = time.monotonic() + timeout
        while event not in self.seen[since:]:
            assert time.monotonic() < end, f"no {event} after {self.seen[since:]}"
            self.pump(0.2)
        self.events.clear()


class FrozenPeer(TcpServer):
    """Accepts, then reads nothing until thaw(); then keeps everything it reads, per client."""

    def __init__(self) -> None:
        super().__init__(rcvbuf=4096)
        self.thawed = threading.Event()
        self.got: list[bytearray] = []

    def handle(self, conn: socket.socket) -> None:
        got = bytearray()
        self.got.append(got)
        while not self.thawed.wait(0.1):
            if self._stop.is_set():
                return
        while (d := self.recv(conn)) is not None and d:
            got += d

    def thaw(self) -> None:
        self.thawed.set()


def reason(w: Wire) -> str:
    """AT+ERRNO's line; never the internal-error category (a bug, not a refusal)."""
    line = w.one("AT+ERRNO")
    assert line.startswith("+ERRNO:") and not line.startswith("+ERRNO:10,"), line
    return line


def not_restarted(m: Module) -> None:
    if not TARGET_PORT:
        assert m.status()["boots"] == 1
        assert "Traceback" not in m.console()


def cipsend(w: Wire, lid: int, data: bytes, timeout: float = 15.0) -> bool:
    """One AT+CIPSEND; True if answered OK (the data acknowledged), False if ERROR."""
    w.m.write(f"AT+CIPSEND={lid},{len(data)}\r".encode())
    x = w.item(timeout)
    while is_event(x):
        w._keep(x)
        x = w.item(timeout)
    if x == "ERROR":
        return False
    assert x == ">", x
    w.m.write(data)
    r = w.response("CIPSEND data", timeout)
    assert r in (["OK"], ["ERROR"]), r
    return r == ["OK"]


CUT = "link closed"  # in AT+ERRNO's reason: the refused send had part of its data out


def stall(w: Wire, peer: FrozenPeer) -> bool:
    """CIPSENDs to a peer that reads nothing, until one is refused; then the peer reads. True
    if the refusal closed the link (part of that send was out: lwIP holds 5.7 KB, so nearly
    always), else a second send is refused too. Checks that the peer got exactly what was
    acknowledged, in order, once, and at most a first part of the refused send when cut."""
    connect_client(w, 0, peer.port)
    acked = bytearray()
    for i in range(2000):
        data = bytes([i % 256]) * CHUNK
        if i % 100 == 0:
            t = time.monotonic()
            assert w.send("AT") == ["OK"]  # the module answers while its peer is frozen
            assert time.monotonic() - t < 2
        if not cipsend(w, 0, data):
            break
        acked += data
    else:
        raise AssertionError("the peer took everything: nothing tested the stall")
    why = reason(w)
    assert "peer does not take data" in why, why
    cut = CUT in why
    if cut:
        w.wait_event(ev(0, "SERVER", "DISCONNECTED"))
    else:
        assert not cipsend(w, 0, data)  # refused again, at once or after the same wait
        assert "peer does not take data" in reason(w)
    assert w.send("AT") == ["OK"]
    peer.thaw()
    wait_for(lambda: len(peer.got[0]) >= len(acked), 60, "the acknowledged bytes")
    time.sleep(0.5)
    got = bytes(peer.got[0])
    assert got[: len(acked)] == bytes(acked)  # in order, nothing lost, nothing twice
    rest = got[len(acked) :]
    assert rest == data[: len(rest)] if cut else not rest, (len(rest), cut)
    return cut


def test_frozen_peer_loses_nothing_acknowledged_and_the_id_works_again(module):
    w = ready(module)
    with FrozenPeer() as peer:
        stall(w, peer)
        w.ok("AT+CIPSTOP=0")
        w.wait_event(ev(0, "SERVER", "CLOSED"), allow=(ev(0, "SERVER", "DISCONNECTED"),))
    with TcpEcho() as echo:
        connect_client(w, 0, echo.port)
        assert cipsend(w, 0, b"again")
        assert w.recv(0, 5) == b"again"
    not_restarted(module)


# A link cut by a send that gave up part-way connects again with AT+CIPAUTOCONN on, at once.
def test_a_cut_link_with_autoconn_connects_again(module):
    w = ready(module)
    w.ok("AT+CIPAUTOCONN=0,1")
    with FrozenPeer() as peer:
        assert stall(w, peer), "the refused send had nothing out: no cut to test"
        w.wait_event(ev(0, "SERVER", "CONNECTED"))
        assert cipsend(w, 0, b"again")
        wait_for(lambda: len(peer.got) > 1 and bytes(peer.got[1]) == b"again", 10, "again")
        w.ok("AT+CIPAUTOCONN=0,0")
        stop(w, 0)
    not_restarted(module)


# The peer resets its frozen connection: the module notices at once if the stall had not
# closed the link already.
def test_peer_reset_after_a_stall_is_reported(module):
    w = ready(module)
    with FrozenPeer() as peer:
        cut = stall(w, peer)
        peer.reset_all()
        end = time.monotonic() + 10
        while w.status(0) != "+CIPSTATUS:tcp_client,disconnected":
            assert time.monotonic() < end, "the reset is not noticed"
            time.sleep(0.5)
        if not cut:
            w.wait_event(ev(0, "SERVER", "DISCONNECTED"))
        assert not cipsend(w, 0, b"after the reset")
        reason(w)


# AT+WJAPQ takes the station's address: its TCP connections end at once (lwIP aborts them:
# host/board/socket.py), TLS ones and a server's client too (the soft AP is off), and say so;
# none starts without it. A UDP link stays, but with neither interface up a datagram has no
# route, and a server's next client never arrives.
def test_leaving_the_ap_ends_the_stations_tcp_connections(module, pki):
    w = ready(module)
    with TcpEcho() as echo, TlsEcho(pki) as tls, UdpEcho() as uecho:
        connect_client(w, 0, echo.port)
        connect_client(w, 2, tls.port, typ="ssl_client")
        port = free_port()
        start(w, 3, "tcp_server", port)
        peer = socket.create_connection((HOST, port), timeout=5)
        client = "{},{}".format(*peer.getsockname())
        w.wait_event(ev("CLIENT", "CONNECTED", client), timeout=10)
        start(w, 4, "udp_unicast", HOST, uecho.port, free_port(socket.SOCK_DGRAM))
        w.wait_event(ev(4, "UDP", "CONNECTED"))
        w.ok("AT+WJAPQ")
        lost = (ev(0, "SERVER", "DISCONNECTED"), ev(2, "SERVER", "DISCONNECTED"))
        w.expect_set("+WEVENT:STATION_DOWN", *lost, ev("CLIENT", "CLOSED", client))
        peer.close()
        assert w.status(0) == "+CIPSTATUS:tcp_client,disconnected"
        assert not cipsend(w, 0, b"gone")
        assert reason(w) == "+ERRNO:6,link 0 is disconnected"
        assert w.one("AT+CIPERR=0") == "+CIPERR:0,ECONNABORTED"
        assert w.status(4) == "+CIPSTATUS:udp_unicast,connected"
        assert not cipsend(w, 4, b"no route")
        assert reason(w) == "+ERRNO:7,send: EHOSTUNREACH"
        late = socket.create_connection((HOST, port), timeout=5)
        assert late.recv(1) == b""  # closed unseen
        late.close()
        assert w.status(3) == "+CIPSTATUS:tcp_server,connected"
        for lid in (0, 2, 3, 4):
            w.ok(f"AT+CIPSTOP={lid}")
        w.m.write(f"AT+CIPSTART=1,tcp_client,{HOST},{echo.port}\r".encode())
        assert w.response("CIPSTART") == ["ERROR"]
        assert reason(w) == "+ERRNO:6,no Wi-Fi link"
    not_restarted(module)


# A link with AT+CIPAUTOCONN on connects again as soon as the station is back, however long it
# was away (found by exploratory testing: its back-off kept doubling while Wi-Fi was down, and
# it came back up to 30 s after STATION_UP, where a driver waits a few).
def test_an_autoconn_link_is_back_with_the_station(module):
    w = ready(module)
    w.ok("AT+CIPAUTOCONN=0,1")
    with TcpEcho() as echo:
        connect_client(w, 0, echo.port)
        w.ok("AT+WJAPQ")
        w.expect_set("+WEVENT:STATION_DOWN", ev(0, "SERVER", "DISCONNECTED"))
        time.sleep(8)  # retries 1, 2 and 4 s apart would wait 8 s now
        join(w)
        t0 = time.monotonic()
        w.wait_event(ev(0, "SERVER", "CONNECTED"), timeout=20)
        assert time.monotonic() - t0 < 3
        assert cipsend(w, 0, b"back")
        assert w.recv(0, 4) == b"back"
        w.ok("AT+CIPAUTOCONN=0,0")
        stop(w, 0)
    not_restarted(module)


@pytest.mark.virtual_only("the world's control interface (the AP vanishing)")
def test_ap_vanishes_mid_transfer_and_comes_back(module):
    m = module
    w = ready(m)
    w.ok("AT+CIPRECVCFG=0")  # pull mode: what arrived waits in the module
    payload = bytes(range(256)) * 4096  # 1 MiB
    with TcpSource(payload) as src:
        connect_client(w, 1, src.port)
        time.sleep(0.5)  # data flowing
        m.ctl({"op": "ap", "ssid": WIFI_SSID, "set": {"present": False}})
        w.wait_event("+WEVENT:STATION_DOWN", timeout=15, allow=(ev(1, "SERVER", "DISCONNECTED"),))
        got = b""
        while True:  # what arrived before is readable: a whole, in-order prefix
            w.m.write(b"AT+CIPRECV=1,0,1024\r")
            r = w.response("CIPRECV")
            if r[-1] != "OK" or not r[0][1]:
                break
            got += r[0][1]
        assert payload.startswith(got)
        # The station's address went, and lwIP aborted its TCP connections (host/board/socket.py)
        assert not cipsend(w, 1, b"no network")
        reason(w)
        m.ctl({"op": "ap", "ssid": WIFI_SSID, "set": {"present": True}})
        w.wait_event(UP, timeout=40, allow=(ev(1, "SERVER", "DISCONNECTED"),))
    stop(w, 1)
    w.ok("AT+CIPRECVCFG=1")
    with TcpEcho() as echo:
        connect_client(w, 2, echo.port)
        assert cipsend(w, 2, b"back")
        assert w.recv(2, 4) == b"back"
    not_restarted(m)


def test_names_that_do_not_resolve_are_refused_with_a_reason(module):
    w = ready(module)
    w.error("AT+CIPDOMAIN=no-such-host.invalid")
    assert "+ERRNO:" in reason(w)
    start(w, 0, "tcp_client", "no-such-host.invalid", 80)
    w.wait_event(ev(0, "SERVER", "DISCONNECTED"), timeout=20)
    err = w.one("AT+CIPERR=0")
    assert err.startswith("+CIPERR:0,") and len(err) > len("+CIPERR:0,"), err
    stop(w, 0)
    assert w.send("AT") == ["OK"]
    not_restarted(module)


def test_data_phase_broken_off_or_full_of_noise(module):
    w = ready(module)
    with TcpEcho() as echo:
        connect_client(w, 0, echo.port)
        # noise inside a data phase is data: CR, LF, "AT", "+++", Ctrl+Z, every byte value
        noise = b"\r\nAT\r\n+++\x1a\x00\xff" + bytes(range(256)) + b"AT+REBOOT\r"
        assert cipsend(w, 0, noise)
        assert w.recv(0, len(noise)) == noise
        # a data phase that stops half way: ERROR after the idle timeout, nothing sent
        w.m.write(b"AT+CIPSEND=0,100\r")
        assert w.item() == ">"
        w.m.write(b"x" * 40)
        assert w.response("broken data phase", timeout=10) == ["ERROR"]
        assert "+ERRNO:" in reason(w)
        w.pump(0.5)
        assert not w.data[0], "a broken data phase reached the peer"
        assert w.send("AT") == ["OK"]
        assert cipsend(w, 0, b"whole")
        assert w.recv(0, 5) == b"whole"
    not_restarted(module)


def test_every_link_busy_and_more_refused_with_a_reason(module):
    w = ready(module)
    w.ok("AT+CIPRECVCFG=0")  # pull mode: data waits in the module's buffers
    big = bytes(range(256)) * 256  # 64 KiB per link
    with TcpSource(big) as src, TcpEcho() as echo:
        for lid in range(4):
            connect_client(w, lid, src.port)
        port = free_port()
        start(w, 4, "tcp_server", port)
        clients = [socket.create_connection((HOST, port), timeout=5) for _ in range(3)]
        time.sleep(1)
        w.pump(0.5)
        w.error(f"AT+CIPSTART=5,tcp_client,{HOST},{echo.port}")  # no sixth id
        reason(w)
        for line in ("AT+MEMFREE", "AT+CIPSTATUS=0", "AT+WJAPS", "AT+FWVER?"):
            assert w.send(line)[-1] == "OK", line
        # every pull-mode link still yields its data intact
        for lid in range(4):
            w.m.write(f"AT+CIPRECV={lid},0,1024\r".encode())
            r = w.response("CIPRECV")
            assert r[-1] == "OK", r
            item = r[0]
            assert isinstance(item, tuple) and item[0] == "RECV", r
            assert big.startswith(item[1]) and len(item[1]) > 0
        for c in clients:
            c.close()
        for lid in range(5):
            w.ok(f"AT+CIPSTOP={lid}")
    w.pump(1)
    assert w.send("AT") == ["OK"]
    not_restarted(module)


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
def test_broker_restart_while_publishing_loses_and_duplicates_nothing_acknowledged(
    module, tmp_path
):
    module.cmd("AT+UARTE=OFF")
    module.drain()
    w = MqttWire(module)
    w.ok(f"AT+WJAP={WIFI_SSID},{WIFI_KEY}")
    w.wait_event(UP, timeout=30)
    with Broker(tmp_path) as broker:
        w.ok(f"AT+MQTTSOCK={broker.host},{broker.port}")
        w.ok("AT+MQTTSUB=1,fault/t,2")
        w.ok("AT+MQTTSTART")
        w.until(SUBSCRIBED, since=0)
        w.ok("AT+MQTTPUB=fault/t,2")  # QoS 2: exactly once
        sent: list[bytes] = []  # answered OK: each gets one PUBLISH outcome event
        refusals: list[tuple[bytes, str]] = []

        def publish(first: int, count: int, paced: bool = True) -> None:
            # Paced: each publish waits for the previous one's outcome, so the window of
            # unacknowledged publishes never fills (back-pressure there is issue 15's).
            for i in range(first, first + count):
                data = f"msg-{i:03d}".encode()
                r = w.send(f"AT+MQTTSEND={len(data)}", data, 15)
                if r == [">", "OK"]:
                    sent.append(data)
                    end = time.monotonic() + 10
                    while paced and sum(e in OUTCOMES for e in w.seen) < len(sent):
                        assert time.monotonic() < end, f"no outcome for {data!r}"
                        w.pump(0.05)
                else:
                    assert r[-1] == "ERROR", r
                    refusals.append((data, reason(w)))

        publish(0, 20)
        w.pump(2)
        since = len(w.seen)
        broker.restart()
        publish(20, 10, paced=False)  # while the session is lost and comes back
        w.until(SUBSCRIBED, since)
        publish(30, 20)
        w.pump(3)
    outcomes = [e for e in w.seen if e in OUTCOMES]
    assert len(outcomes) == len(sent), (len(outcomes), len(sent))
    acked = [d for d, o in zip(sent, outcomes) if o == OUTCOMES[0]]
    got = bytes(w.data["mqtt"])
    received = [got[i : i + 7] for i in range(0, len(got), 7)]
    assert len(received) == len(set(received)), "a message arrived twice"
    must = [d for d in acked if int(d[4:]) < 20 or int(d[4:]) >= 30]
    late = [x for x in refusals if not 20 <= int(x[0][4:]) < 30]
    assert len(must) == 40, f"a publish with the broker up failed: {late}"
    assert not [d for d in must if d not in received], "an acknowledged message was lost"
    assert set(received) <= set(acked)
    not_restarted(module)
