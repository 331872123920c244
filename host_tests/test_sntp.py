"""SNTP and the RTC (section 7): real NTP packets to test servers on 127.0.0.1."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from host_tests.module import ERROR, OK, Module
from host_tests.ntpserver import NtpServer

UP = b"\r\n+WEVENT:STATION_UP\r\n"
DOWN = b"\r\n+WEVENT:STATION_DOWN\r\n"
FACTORY = b"+SNTPCFG:+0,pool.ntp.org,time.google.com"
# The spec's example instant (13:34:35.063568 at +8), in UTC and in 2025: a timestamp before
# 2024 is taken for one of NTP era 1 (after the 2036 wrap), as micropython-lib's ntptime does.
WHEN = datetime(2025, 9, 5, 5, 34, 35, 63568, tzinfo=timezone.utc)
WHEN_FRACTION = -(-(63568 << 32) // 10**6)  # the NTP fraction of .063568 s (rounded up)


def reply(*lines: bytes) -> bytes:
    return b"".join(b"\r\n" + line for line in lines) + b"\r\n" + OK


@pytest.fixture
def servers() -> Iterator[tuple[NtpServer, NtpServer]]:
    a, b = NtpServer(), NtpServer()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def m(module: Module) -> Module:
    module.cmd("AT+UARTE=OFF")
    return module


def join(m: Module) -> None:
    assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK
    assert m.read_until(UP, timeout=10) == UP


def use(m: Module, zone: str, *srv: NtpServer) -> None:
    assert m.cmd("AT+SNTPCFG=" + ",".join([zone, *(s.address for s in srv)])) == OK


def freeze(srv: NtpServer, when: datetime = WHEN) -> None:
    srv.freeze = when.timestamp()
    srv.fraction = WHEN_FRACTION if when.microsecond == 63568 else None


def stamp(got: bytes, name: str = "SNTPTIME") -> datetime:
    """The time of a +SNTPTIME / +RTCGET reply (naive: in the module's configured zone)."""
    hit = re.fullmatch(
        rb"\r\n\+" + name.encode() + rb":(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\r\n" + OK, got
    )
    assert hit, got
    return datetime.strptime(hit.group(1).decode(), "%Y-%m-%dT%H:%M:%S.%f")


def local(when: datetime, hours: float) -> datetime:
    return (when + timedelta(hours=hours)).replace(tzinfo=None)


def errno(m: Module) -> bytes:
    return m.cmd("AT+ERRNO")


# ----- AT+SNTPCFG


def test_config_forms_and_zones(m):
    for q in ("AT+SNTPCFG?", "AT+SNTPCFG=?", "AT+SNTPCFG"):
        assert m.cmd(q) == reply(FACTORY)
    # The zone alone (as drivers send it) keeps the servers.
    assert m.cmd("AT+SNTPCFG=+8") == OK
    assert m.cmd("AT+SNTPCFG?") == reply(b"+SNTPCFG:+8,pool.ntp.org,time.google.com")
    assert m.cmd("AT+SNTPCFG=+8,") == OK  # a trailing empty parameter is tolerated
    assert m.cmd("AT+SNTPCFG?") == reply(b"+SNTPCFG:+8,pool.ntp.org,time.google.com")
    # One domain replaces both.
    assert m.cmd("AT+SNTPCFG=-5,ntp.example.com") == OK
    assert m.cmd("AT+SNTPCFG?") == reply(b"+SNTPCFG:-5,ntp.example.com,")
    assert m.cmd('AT+SNTPCFG="+8","cn.ntp.org.cn","pool.ntp.org"') == OK
    assert m.cmd("AT+SNTPCFG?") == reply(b"+SNTPCFG:+8,cn.ntp.org.cn,pool.ntp.org")
    assert m.cmd("AT+SNTPCFG=+8,10.0.0.1:1234,time-b.nist.gov") == OK
    assert m.cmd("AT+SNTPCFG?") == reply(b"+SNTPCFG:+8,10.0.0.1:1234,time-b.nist.gov")
    zones = {
        "8": "+8",
        "+08": "+8",
        "0": "+0",
        "-0": "+0",
        "+14": "+14",
        "-12": "-12",
        "+5:30": "+5:30",
        "+5.5": "+5:30",
        "5.50": "+5:30",
        "+5:45": "+5:45",
        "+5.75": "+5:45",
        "-9:30": "-9:30",
        "-3.5": "-3:30",
        "+8:00": "+8",
        "+8.0": "+8",
        "+12:45": "+12:45",
        "+14:00": "+14",
        "-12:00": "-12",
    }
    for given, shown in zones.items():
        assert m.cmd("AT+SNTPCFG=" + given) == OK, given
        assert m.cmd("AT+SNTPCFG?") == reply(
            b"+SNTPCFG:" + shown.encode() + b",10.0.0.1:1234,time-b.nist.gov"
        )


BAD_CONFIG = [
    "AT+SNTPCFG=",
    "AT+SNTPCFG=+15",
    "AT+SNTPCFG=-13",
    "AT+SNTPCFG=+14:30",
    "AT+SNTPCFG=-12:30",
    "AT+SNTPCFG=+14.5",
    "AT+SNTPCFG=+5:15",
    "AT+SNTPCFG=+5.25",
    "AT+SNTPCFG=+5:3",
    "AT+SNTPCFG=+5:",
    "AT+SNTPCFG=+5.",
    "AT+SNTPCFG=+",
    "AT+SNTPCFG=++8",
    "AT+SNTPCFG=+100",
    "AT+SNTPCFG=8h",
    "AT+SNTPCFG=UTC",
    "AT+SNTPCFG=,pool.ntp.org",
    "AT+SNTPCFG=+8,,time.google.com",
    "AT+SNTPCFG=+8,bad host",
    "AT+SNTPCFG=+8,a\\,b",
    "AT+SNTPCFG=+8,host:0",
    "AT+SNTPCFG=+8,host:65536",
    "AT+SNTPCFG=+8,:123",
    "AT+SNTPCFG=+8,pool.ntp.org,t\u00e9l\u00e9",
    "AT+SNTPCFG=+8," + "a" * 65,
    "AT+SNTPCFG=+8,a,b,c",
]


def test_bad_config_changes_nothing(m):
    assert m.cmd("AT+SNTPCFG=-3:30,a.example,b.example:999") == OK
    before = m.cmd("AT+SNTPCFG?")
    for line in BAD_CONFIG:
        assert m.cmd(line) == ERROR, line
        code = errno(m)
        assert code.startswith((b"\r\n+ERRNO:4,", b"\r\n+ERRNO:5,")), (line, code)
        assert m.cmd("AT+SNTPCFG?") == before, line
    # The longest domain fits.
    assert m.cmd("AT+SNTPCFG=+8," + "a" * 64) == OK


def test_config_persists_across_reboot_unless_flashlock(m):
    assert m.cmd("AT+SNTPCFG=+5:30,ntp.example.com,10.1.2.3:4567") == OK
    m.cmd("AT+REBOOT")
    m.sync()
    saved = reply(b"+SNTPCFG:+5:30,ntp.example.com,10.1.2.3:4567")
    assert m.cmd("AT+SNTPCFG?") == saved
    assert m.cmd("AT+FLASHLOCK=ON") == OK
    assert m.cmd("AT+SNTPCFG=-8") == OK
    assert m.cmd("AT+SNTPCFG?") == reply(b"+SNTPCFG:-8,ntp.example.com,10.1.2.3:4567")
    m.cmd("AT+REBOOT")
    m.sync()
    assert m.cmd("AT+SNTPCFG?") == saved


def test_other_forms_answer_error(m):
    for line in ("AT+SNTPTIME?", "AT+SNTPTIME=?", "AT+SNTPTIME=1", "AT+RTCGET=1"):
        assert m.cmd(line) == ERROR, line


# ----- AT+SNTPTIME and AT+RTCGET


def test_time_in_zone_with_microseconds_sets_the_rtc(m, servers):
    a, _ = servers
    freeze(a)
    join(m)
    use(m, "+8", a)
    got = stamp(m.cmd("AT+SNTPTIME"))
    # The server's time plus half the (loopback) round trip.
    late = got - local(WHEN, 8)
    assert timedelta(0) <= late < timedelta(milliseconds=50), got
    assert got.strftime("%Y-%m-%dT%H:%M:%S") == "2025-09-05T13:34:35"
    t0 = time.monotonic()
    rtc = stamp(m.cmd("AT+RTCGET"), "RTCGET")
    ran = timedelta(seconds=time.monotonic() - t0 + 0.05)
    assert got <= rtc <= got + ran, (got, rtc)
    assert a.requests == 1
    # The RTC keeps UTC: another zone shows at once, and in every query form.
    assert m.cmd("AT+SNTPCFG=-5") == OK
    rtc5 = stamp(m.cmd("AT+RTCGET"), "RTCGET")
    assert timedelta(hours=-13) <= rtc5 - rtc < timedelta(hours=-13, seconds=1)
    assert stamp(m.cmd("AT+RTCGET?"), "RTCGET") >= rtc5


def test_half_and_three_quarter_hour_zones(m, servers):
    a, _ = servers
    freeze(a)
    join(m)
    for zone, hours in (("+5:30", 5.5), ("-9.5", -9.5), ("+5:45", 5.75), ("+14", 14)):
        use(m, zone, a)
        late = stamp(m.cmd("AT+SNTPTIME")) - local(WHEN, hours)
        assert timedelta(0) <= late < timedelta(milliseconds=50), (zone, late)


def test_live_clock_and_round_trip_compensation(m, servers):
    a, b = servers
    join(m)
    # A live clock: the answer is the host's time now.
    use(m, "+0", a)
    got = stamp(m.cmd("AT+SNTPTIME"))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs(got - now) < timedelta(milliseconds=200), (got, now)
    # A server that holds the request 0.4 s (T3 - T2 = 0.4 s) adds no error...
    a.delay = 0.4
    got = stamp(m.cmd("AT+SNTPTIME"))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs(got - now) < timedelta(milliseconds=100), (got, now)
    # ...while a stopped clock that answers 0.4 s late looks like 0.4 s of network delay: half
    # of it is added (RFC 5905: delay = (T4 - T1) - (T3 - T2)).
    freeze(b)
    b.delay = 0.4
    use(m, "+0", b)
    late = stamp(m.cmd("AT+SNTPTIME")) - local(WHEN, 0)
    assert timedelta(milliseconds=190) <= late < timedelta(milliseconds=260), late


def test_year_2036_wrap_and_2040(m, servers):
    a, _ = servers
    join(m)
    use(m, "+1", a)
    for when in (
        datetime(2036, 2, 7, 6, 28, 15, 500000, tzinfo=timezone.utc),
        datetime(2036, 2, 7, 6, 28, 17, tzinfo=timezone.utc),
        datetime(2040, 2, 29, 23, 30, tzinfo=timezone.utc),
    ):
        freeze(a, when)
        late = stamp(m.cmd("AT+SNTPTIME")) - local(when, 1)
        assert timedelta(0) <= late < timedelta(milliseconds=50), (when, late)
    assert stamp(m.cmd("AT+RTCGET"), "RTCGET").date() == datetime(2040, 3, 1).date()


def test_server_by_name(m, servers):
    a, _ = servers
    freeze(a)
    join(m)
    assert m.cmd(f"AT+SNTPCFG=+8,localhost:{a.port}") == OK
    late = stamp(m.cmd("AT+SNTPTIME")) - local(WHEN, 8)
    assert timedelta(0) <= late < timedelta(milliseconds=50), late


def join_and_settle(m: Module, *srv: NtpServer) -> None:
    """Servers set, then Wi-Fi up; the module's own first SNTP attempt (it asks by itself once
    the station is up, then waits 15 s before a retry) is over before the test counts."""
    use(m, "+8", *srv)
    join(m)
    deadline = time.monotonic() + 10
    while srv[-1].requests < 1:
        assert time.monotonic() < deadline, "the module did not ask by itself"
        time.sleep(0.05)
    time.sleep(0.3)
    for s in srv:
        s.requests = 0


def test_power_on_clock_is_set_by_itself(m, servers):
    a, _ = servers
    assert stamp(m.cmd("AT+RTCGET"), "RTCGET").year == 2000  # the RTC after power-on
    freeze(a)
    use(m, "+0", a)
    join(m)
    deadline = time.monotonic() + 10
    while stamp(m.cmd("AT+RTCGET"), "RTCGET").year == 2000:
        assert time.monotonic() < deadline, "the clock was not set"
        time.sleep(0.2)
    assert stamp(m.cmd("AT+RTCGET"), "RTCGET") - WHEN.replace(tzinfo=None) < timedelta(seconds=5)


def test_fallback_to_the_second_server(m, servers):
    a, b = servers
    a.silent = True
    freeze(b)
    join_and_settle(m, a, b)
    t0 = time.monotonic()
    got = stamp(m.cmd("AT+SNTPTIME", timeout=5))
    took = time.monotonic() - t0
    assert 1.8 < took < 3.0, took
    assert timedelta(0) <= got - local(WHEN, 8) < timedelta(milliseconds=50)
    assert (a.requests, b.requests) == (1, 1)
    # A good first server: the second is not asked.
    a.silent = False
    got = stamp(m.cmd("AT+SNTPTIME"))
    assert (a.requests, b.requests) == (2, 1)


def test_dead_servers_answer_error_in_bounded_time(m, servers):
    a, b = servers
    a.silent = b.silent = True
    join_and_settle(m, a, b)
    t0 = time.monotonic()
    assert m.cmd("AT+SNTPTIME", timeout=8) == ERROR
    took = time.monotonic() - t0
    assert 3.8 < took < 5.0, took
    assert errno(m) == reply(f"+ERRNO:8,{a.address}: no answer; {b.address}: no answer".encode())
    assert (a.requests, b.requests) == (1, 1)
    # A port where nothing listens (ICMP unreachable) fails at once.
    b.close()
    use(m, "+8", b)
    assert m.cmd("AT+SNTPTIME", timeout=4) == ERROR
    assert errno(m).startswith(f"\r\n+ERRNO:7,{b.address}: ".encode())


BOGUS = [
    ({"mode": 3}, b"not a server reply (mode 3)"),
    ({"mode": 5}, b"not a server reply (mode 5)"),
    ({"zero_transmit": True}, b"zero transmit timestamp"),
    ({"stratum": 0, "kiss": b"RATE"}, b"kiss-of-death RATE"),
    ({"stratum": 0, "kiss": b"DENY"}, b"kiss-of-death DENY"),
    ({"stratum": 16}, b"server not synchronized"),
    ({"leap": 3}, b"server not synchronized"),
    ({"bad_origin": True}, b"origin timestamp mismatch"),
    ({"short": True}, b"short reply"),
]


def test_bogus_replies_leave_the_rtc_alone(m, servers):
    a, b = servers
    freeze(a)
    join(m)
    use(m, "+8", a)
    synced = stamp(m.cmd("AT+SNTPTIME"))
    t0 = time.monotonic()
    b.offset = 86400 * 365  # a year ahead: the RTC must never show it
    healthy = NtpServer()  # the default settings, to undo each fault
    healthy.close()
    use(m, "+8", b)
    for fault, why in BOGUS:
        for k, v in fault.items():
            setattr(b, k, v)
        assert m.cmd("AT+SNTPTIME") == ERROR, fault
        assert errno(m) == reply(b"+ERRNO:7," + b.address.encode() + b": " + why), fault
        rtc = stamp(m.cmd("AT+RTCGET"), "RTCGET")
        ran = timedelta(seconds=time.monotonic() - t0 + 0.1)
        assert synced <= rtc <= synced + ran, (fault, rtc)
        for k in fault:
            setattr(b, k, getattr(healthy, k))
    # The same server, healthy again, is believed.
    got = stamp(m.cmd("AT+SNTPTIME"))
    ahead = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=365, hours=8)
    assert abs(got - ahead) < timedelta(seconds=1)


def test_no_wifi_answers_error_without_asking(m, servers):
    a, _ = servers
    use(m, "+8", a)
    before = stamp(m.cmd("AT+RTCGET"), "RTCGET")
    assert m.cmd("AT+SNTPTIME") == ERROR
    assert errno(m) == reply(b"+ERRNO:6,no Wi-Fi link")
    assert a.requests == 0
    after = stamp(m.cmd("AT+RTCGET"), "RTCGET")
    assert timedelta(0) <= after - before < timedelta(seconds=1)


def test_uart_keeps_order_and_events_wait_while_sntp_waits(m, servers):
    a, _ = servers
    a.delay = 1.2
    join(m)
    use(m, "+0", a)
    m.write(b"AT+SNTPTIME\rAT\rAT+SNTPCFG?\r")
    # Meanwhile the AP goes away: the station task (still running: the loop is not blocked)
    # sees it, and its event waits until the responses are complete (the pipelined lines
    # were already received: the host had begun them).
    assert m.ctl({"op": "ap", "ssid": "EMW-TEST", "set": {"present": False}})["ok"]
    stream = m.read_until(b"+SNTPCFG:", timeout=6)
    stream += m.read_until(OK, timeout=2)
    stream += m.drain(0.3)
    assert re.fullmatch(
        rb"\r\n\+SNTPTIME:[-0-9T:.]{26}\r\n"
        + re.escape(OK + OK + b"\r\n+SNTPCFG:+0," + a.address.encode() + b",\r\n" + OK + DOWN),
        stream,
    ), stream
