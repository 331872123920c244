"""Wi-Fi management (section 3) through the pty, on the simulated radio."""

from __future__ import annotations

import json
import re
import time

import pytest

from host_tests.module import ERROR, OK, Module

UP = b"\r\n+WEVENT:STATION_UP\r\n"
DOWN = b"\r\n+WEVENT:STATION_DOWN\r\n"


def reply(*lines: bytes) -> bytes:
    return b"".join(b"\r\n" + line for line in lines) + b"\r\n" + OK


@pytest.fixture
def m(module: Module) -> Module:
    module.cmd("AT+UARTE=OFF")
    return module


def join(m: Module, ssid: str = "EMW-TEST", key: str = "12345678") -> None:
    assert m.cmd(f"AT+WJAP={ssid},{key}") == OK
    assert m.read_until(UP, timeout=10) == UP


def ap(m: Module, ssid: str, **changes) -> None:
    assert m.ctl({"op": "ap", "ssid": ssid, "set": changes})["ok"]


def test_versions_and_mac(m):
    got = m.cmd("AT+WFVER")
    assert re.fullmatch(rb"\r\n\+WFVER:mpy_[0-9][^\r\n,]*\r\n" + OK, got), got
    assert m.cmd("AT+WFVER?") == got
    mac = m.cmd("AT+WMAC?")
    assert re.fullmatch(rb"\r\n\+WMAC:[0-9A-F]{12}\r\n" + OK, mac), mac
    assert m.cmd("AT+WMAC") == mac


def test_scan_normal_and_advanced(m):
    assert m.cmd("AT+WSCANOPT?") == reply(b"+WSCANOPT:0")
    got = m.cmd("AT+WSCAN").split(b"\r\n")
    n = int(got[1].split(b":")[1])
    rows = got[2 : 2 + n]
    assert len(rows) == n >= 4
    assert b"EMW-TEST,-42" in rows and b"EMW-OPEN,-55" in rows
    assert b"Cafe Wi-Fi\\, 2nd floor,-67" in rows  # a comma in an SSID reads back escaped
    rssis = [int(r.rsplit(b",", 1)[1]) for r in rows]
    assert rssis == sorted(rssis, reverse=True)
    assert m.cmd("AT+WSCANOPT=1") == OK
    assert m.cmd("AT+WSCANOPT") == reply(b"+WSCANOPT:1")
    got = m.cmd("AT+WSCAN=EMW-TEST")
    assert re.fullmatch(
        rb"\r\n\+WSCAN:1\r\nEMW-TEST,([0-9a-f]{2}:){5}[0-9a-f]{2},WPA2_PSK,6,-42\r\n" + OK, got
    ), got
    assert m.cmd("AT+WSCAN=Cafe Wi-Fi\\, 2nd floor").startswith(b"\r\n+WSCAN:1\r\nCafe")
    assert m.cmd("AT+WSCAN=nothing-here") == reply(b"+WSCAN:0")


def test_join_and_query_the_link(m):
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_DOWN")
    assert m.cmd("AT+WJAP?") == reply(b"+WJAP:0,0,0,0")
    assert m.cmd("AT+WJAPIP?") == reply(b"+WJAPIP:0.0.0.0,0.0.0.0,0.0.0.0,0.0.0.0")
    assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK  # answered at once
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:CONNECTING")
    assert m.read_until(UP, timeout=10) == UP
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_UP")
    assert m.cmd("AT+WJAP=?") == reply(b"+WJAP:EMW-TEST,12345678")
    got = m.cmd("AT+WJAP?")
    assert re.fullmatch(rb"\r\n\+WJAP:EMW-TEST,([0-9a-f]{2}:){5}[0-9a-f]{2},6,-42\r\n" + OK, got)
    got = m.cmd("AT+WJAPIP?")
    assert re.fullmatch(rb"\r\n\+WJAPIP:(\d+\.\d+\.\d+\.\d+,){3}\d+\.\d+\.\d+\.\d+\r\n" + OK, got)
    assert b"0.0.0.0" not in got


def test_open_network_without_key(m):
    assert m.cmd("AT+WJAP=EMW-OPEN") == OK
    assert m.read_until(UP, timeout=10) == UP


def test_wrong_password(m):
    assert m.cmd("AT+WJAP=EMW-TEST,wrongpass") == OK
    assert m.read_until(DOWN, timeout=10) == DOWN
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_DOWN,1")
    assert m.cmd("AT+WJAPQ") == OK
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_DOWN")  # no attempt, no failure


def test_unknown_ssid(m):
    assert m.cmd("AT+WJAP=No Such Net,12345678") == OK
    assert m.read_until(DOWN, timeout=10) == DOWN
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_DOWN,2")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (1000, None),  # STAT_IDLE
        (1001, None),  # STAT_CONNECTING
        (1010, None),  # STAT_GOT_IP
        (0, None),
        (2, 1),  # AUTH_EXPIRE
        (15, 1),  # 4WAY_HANDSHAKE_TIMEOUT
        (202, 1),  # AUTH_FAIL (and CONNECTION_FAIL)
        (204, 1),  # HANDSHAKE_TIMEOUT
        (201, 2),  # NO_AP_FOUND
        (210, 2),  # NO_AP_FOUND_W_COMPATIBLE_SECURITY
        (211, 2),  # NO_AP_FOUND_IN_AUTHMODE_THRESHOLD
        (212, 2),  # NO_AP_FOUND_IN_RSSI_THRESHOLD
        (200, 0),  # BEACON_TIMEOUT
        (203, 0),  # ASSOC_FAIL
        (8, 0),  # ASSOC_LEAVE (status() says IDLE for it; any other reason is a failure)
    ],
)
def test_join_error_of_each_status(status, code):
    from firmware.wifi_reasons import join_error

    assert join_error(status) == code


def test_wrong_key_and_missing_ap_reasons_of_esp_idf(m):
    """ESP-IDF ends a wrong key with 15, 2, 202 or 204 depending on the AP, a missing AP with
    201 or 210/211: AT+WJAPS says 1 (wrong key) or 2 (not found) for each."""
    for reason in (15, 2, 202, 204):
        ap(m, "EMW-TEST", wrong_key_reason=reason)
        assert m.cmd("AT+WJAP=EMW-TEST,wrongpass") == OK
        assert m.read_until(DOWN, timeout=10) == DOWN
        assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_DOWN,1"), reason
        assert m.cmd("AT+WJAPQ") == OK
    world = m.ctl({"op": "world"})["world"]
    for reason in (210, 211):
        world["noap_reason"] = reason
        assert m.ctl({"op": "world", "world": world})["ok"]
        assert m.cmd("AT+WJAP=No Such Net,12345678") == OK
        assert m.read_until(DOWN, timeout=10) == DOWN
        assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_DOWN,2"), reason
        assert m.cmd("AT+WJAPQ") == OK


def test_ap_lost_and_back_without_any_command(m):
    join(m)
    ap(m, "EMW-TEST", present=False)
    assert m.read_until(DOWN, timeout=5) == DOWN
    assert m.cmd("AT+WJAPS").startswith(b"\r\n+WJAPS:")
    time.sleep(3)  # several failed retries: STATION_DOWN is announced once
    ap(m, "EMW-TEST", present=True)
    assert m.read_until(UP, timeout=40) == UP
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_UP")


def test_password_change_drops_the_link(m):
    join(m)
    ap(m, "EMW-TEST", password="another-pass")
    assert m.read_until(DOWN, timeout=5) == DOWN


def test_wjapq_stops_retrying(m):
    join(m)
    assert m.cmd("AT+WJAPQ") == OK
    assert m.read_until(DOWN, timeout=3) == DOWN
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_DOWN")
    ap(m, "EMW-TEST", present=False)
    ap(m, "EMW-TEST", present=True)
    m.expect_silence(3)


def test_wevent_off_silences_events(m):
    assert m.cmd("AT+WEVENT=OFF") == OK
    assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK
    m.expect_silence(2)
    assert m.cmd("AT+WJAPS") == reply(b"+WJAPS:STATION_UP")


def test_events_never_land_inside_a_response(m):
    # Keep the module answering back-to-back scans while the join completes.
    m.write(b"AT+WJAP=EMW-TEST,12345678\r")
    stream = b""
    deadline = time.monotonic() + 10
    while UP not in stream and time.monotonic() < deadline:
        m.write(b"AT+WSCAN\rAT+WJAPS\r")
        stream += m.read(timeout=0.05)
    stream += m.drain(0.5)
    assert UP in stream
    # Every event must sit between complete responses.
    before, _, _ = stream.partition(UP)
    assert before.endswith(OK), before[-80:]


def test_credentials_survive_restart_and_rejoin(m):
    join(m)
    assert m.cmd("AT+REBOOT") == OK
    m.sync()
    assert m.read_until(UP, timeout=10) == UP
    assert m.cmd("AT+WJAP=?") == reply(b"+WJAP:EMW-TEST,12345678")


def test_no_rejoin_after_wjapq_and_restart(m):
    join(m)
    m.cmd("AT+WJAPQ")
    m.cmd("AT+REBOOT")
    m.sync()
    m.expect_silence(2)


@pytest.mark.parametrize(
    ("ssid", "key"),
    [("Net, with comma", "pass word 1"), ("S" * 32, "k" * 64), ("sp ace", "a,b\\c d")],
)
def test_ssids_and_keys_with_spaces_commas_and_maximal_lengths(m, ssid, key):
    ap(
        m,
        ssid,
        bssid="02:00:00:00:00:99",
        channel=11,
        rssi=-50,
        security="WPA2",
        password=key,
        present=True,
    )
    esc = lambda s: s.replace("\\", "\\\\").replace(",", "\\,")  # noqa: E731
    join(m, esc(ssid), esc(key))
    assert m.cmd("AT+WJAP=?") == reply(f"+WJAP:{esc(ssid)},{esc(key)}".encode())


@pytest.mark.parametrize(
    "line",
    [
        "AT+WJAP=" + "S" * 33 + ",12345678",
        "AT+WJAP=EMW-TEST," + "k" * 65,
        "AT+WJAP=",
        "AT+WJAP=a,b,c",
        "AT+WJAP",
        "AT+WSAP=" + "S" * 33 + ",12345678",
        "AT+WSAP=",
        "AT+WSAP=a,b,c",
        "AT+WSAPIP=300.1.1.1",
        "AT+WSAPIP=192.168.4.1,255.255.255.0",
        "AT+WSAPIP=1.2.3",
        "AT+WJAPIP=1.2.3.4,255.255.255.0",
        "AT+WJAPIP=1.2.3.4,255.255.255.0,1.2.3.x",
        "AT+WSCANOPT=2",
        "AT+WSCANOPT=advanced",
        "AT+WDHCP=1",
        "AT+WSCAN=" + "S" * 33,
        "AT+WMAC=00:11:22:33:44:55",
        "AT+WJAPS=1",
        "AT+WSAPQ=1",
    ],
)
def test_bad_parameters_answer_error_and_change_nothing(m, line):
    queries = [
        "AT+WJAP=?",
        "AT+WSAP=?",
        "AT+WSAPIP?",
        "AT+WJAPIP?",
        "AT+WSCANOPT?",
        "AT+WDHCP?",
        "AT+WJAPS",
        "AT+WSAPS",
    ]
    before = [m.cmd(q) for q in queries]
    assert m.cmd(line) == ERROR
    assert [m.cmd(q) for q in queries] == before
    m.expect_silence(0.5)


def soft_ap_state(m: Module) -> dict:
    return json.loads((m.state_dir / "world.json.ap.json").read_text())


def test_soft_ap(m):
    assert m.cmd("AT+WSAPS") == reply(b"+WSAPS:AP_DOWN")
    assert m.cmd("AT+WSAP=EMW-MODULE,abcdefgh") == OK
    assert m.read_until(b"\r\n+WEVENT:AP_UP\r\n") == b"\r\n+WEVENT:AP_UP\r\n"
    assert m.cmd("AT+WSAPS") == reply(b"+WSAPS:AP_UP")
    assert m.cmd("AT+WSAP=?") == reply(b"+WSAP:EMW-MODULE,abcdefgh")
    st = soft_ap_state(m)
    assert st["active"] and st["ssid"] == "EMW-MODULE" and "WPA2" in st["security"]
    assert m.cmd("AT+WSAPIP?") == reply(b"+WSAPIP:192.168.4.1,255.255.255.0,192.168.4.1")
    assert m.cmd("AT+WSAPIP=10.0.0.1,255.255.0.0,10.0.0.1") == OK
    assert m.cmd("AT+WSAPIP?") == reply(b"+WSAPIP:10.0.0.1,255.255.0.0,10.0.0.1")
    # A key shorter than 8 means an open AP.
    assert m.cmd("AT+WSAP=EMW-OPEN-AP,1234567") == OK
    m.read_until(b"AP_UP\r\n")
    assert soft_ap_state(m)["security"] == "OPEN"
    assert m.cmd("AT+WSAPQ") == OK
    assert m.read_until(b"\r\n+WEVENT:AP_DOWN\r\n") == b"\r\n+WEVENT:AP_DOWN\r\n"
    assert m.cmd("AT+WSAPS") == reply(b"+WSAPS:AP_DOWN")


def test_soft_ap_and_station_together_and_after_restart(m):
    assert m.cmd("AT+WSAP=EMW-MODULE,abcdefgh") == OK
    m.read_until(b"AP_UP\r\n")
    join(m)
    assert m.cmd("AT+WSAPS") == reply(b"+WSAPS:AP_UP")
    m.cmd("AT+REBOOT")
    m.sync()  # AP_UP may come (and be drained) before the first AT is answered
    m.read_until(UP, timeout=10)
    assert m.cmd("AT+WSAPS") == reply(b"+WSAPS:AP_UP")


def test_static_address(m):
    assert m.cmd("AT+WDHCP?") == reply(b"+WDHCP:ON")
    assert m.cmd("AT+WJAPIP=192.168.31.50,255.255.255.0,192.168.31.1,8.8.8.8") == OK
    assert m.cmd("AT+WDHCP?") == reply(b"+WDHCP:OFF")
    join(m)
    assert m.cmd("AT+WJAPIP?") == reply(
        b"+WJAPIP:192.168.31.50,255.255.255.0,192.168.31.1,8.8.8.8"
    )
    assert m.cmd("AT+WDHCP=ON") == OK
    m.cmd("AT+WJAPQ")
    m.read_until(DOWN)
    join(m)
    assert b"192.168.31.50" not in m.cmd("AT+WJAPIP?")


def test_soft_ap_address_keeps_the_station_resolver(m):
    """lwIP has one resolver; configuring the soft AP (its DHCP server's DNS) leaves it be."""
    join(m)
    before = m.cmd("AT+WJAPIP?")
    assert re.fullmatch(
        rb"\r\n\+WJAPIP:(\d+\.\d+\.\d+\.\d+,){3}\d+\.\d+\.\d+\.\d+\r\n" + OK, before
    )
    assert m.cmd("AT+WSAP=EMW-MODULE,abcdefgh") == OK
    m.read_until(b"AP_UP\r\n")
    assert m.cmd("AT+WSAPIP=192.168.8.1,255.255.255.0,192.168.8.1") == OK
    assert m.cmd("AT+WSAPIP?") == reply(b"+WSAPIP:192.168.8.1,255.255.255.0,192.168.8.1")
    assert m.cmd("AT+WJAPIP?") == before


def test_static_address_without_dns(m):
    """DHCP off with no DNS server stored: the station still joins (esp-netif refuses a
    0.0.0.0 DNS server, so none is set)."""
    assert m.cmd("AT+WJAPIP=192.168.31.50,255.255.255.0,192.168.31.1,0.0.0.0") == OK
    join(m)
    got = m.cmd("AT+WJAPIP?")
    assert got.startswith(b"\r\n+WJAPIP:192.168.31.50,255.255.255.0,192.168.31.1,"), got
