"""The virtual module's plumbing: pty relay, restarts, sleep and wake, control port, board
stand-ins. Runs host_tests/fake_fw/main.py (an echo firmware) instead of the AT firmware."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from host_tests.module import REPO, Module

FAKE = Path(__file__).resolve().parent / "fake_fw"


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Module]:
    m = Module(tmp_path / "state", root=FAKE)
    try:
        m.wait_booted(1)
        yield m
    finally:
        m.stop()


def ask(m: Module, line: bytes, timeout: float = 3) -> bytes:
    m.write(line + b"\n")
    return m.read_until(b"\n", timeout)


def test_banner_and_files(echo: Module) -> None:
    st = echo.status()
    assert st["ok"] and st["state"] == "running" and st["boots"] == 1
    assert os.readlink(echo.link) == echo.uart == st["pty"]
    assert int((echo.state_dir / "control.port").read_text()) == echo.control
    assert (echo.state_dir / "flash.img").stat().st_size == 2 * 1024 * 1024
    assert ask(echo, b"!cwd") == b"cwd /flash\n"
    assert "fake firmware: reset cause 1" in echo.console()


def test_round_trip_is_8bit_clean(echo: Module) -> None:
    data = bytes(range(256)) * 4 + b"a\rb\r\n\n"
    echo.write(data)
    got = b""
    while len(got) < len(data):
        got += echo.read(timeout=2) or pytest.fail(f"short echo: {got!r}")
    assert got == data
    echo.write(b"!any\nabc")  # "abc" arrives while the command waits 200 ms
    assert echo.read_until(b"\n") == b"any 3\n"
    assert ask(echo, b"") == b"abc\n"


def test_reset_keeps_the_pty(echo: Module) -> None:
    pty = echo.status()["pty"]
    echo.write(b"!reset\n")
    st = echo.wait_booted(2)
    assert st["pty"] == pty and st["cause"] == "HARD"
    assert ask(echo, b"!cause") == b"cause 2 wake 0\n"  # machine.HARD_RESET
    assert "--- boot 2 cause=HARD ---" in echo.console()


def test_input_is_dropped_while_asleep_then_pin_wakes(echo: Module) -> None:
    echo.write(b"!sleep\n")
    deadline = time.monotonic() + 5
    while echo.status()["state"] != "sleeping":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    echo.write(b"junk while asleep\n")
    time.sleep(0.3)
    assert echo.status()["state"] == "sleeping"
    echo.wake()
    echo.wait_booted(2)
    assert ask(echo, b"!cause") == b"cause 4 wake 2\n"  # DEEPSLEEP_RESET, PIN_WAKE
    echo.expect_silence(0.3)


def test_deepsleep_timer_wakes(echo: Module) -> None:
    echo.write(b"!sleep 300\n")
    echo.wait_booted(2)
    assert ask(echo, b"!cause") == b"cause 4 wake 4\n"  # DEEPSLEEP_RESET, TIMER_WAKE


def test_lightsleep_keeps_running(echo: Module) -> None:
    echo.write(b"!lightsleep\n")
    time.sleep(0.3)
    assert echo.status()["state"] == "sleeping"
    echo.wake()
    assert echo.read_until(b"\n") == b"awake\n"
    assert echo.status()["boots"] == 1


def test_power_cut_keeps_flash_and_mac(echo: Module) -> None:
    mac = ask(echo, b"!mac")
    assert mac.startswith(b"mac 240ac4")
    assert ask(echo, b"!put hello") == b"put ok\n"
    echo.kill()
    st = echo.wait_booted(2)
    assert st["cause"] == "PWRON"
    assert ask(echo, b"!cause") == b"cause 1 wake 0\n"
    assert ask(echo, b"!get") == b"got hello\n"
    assert ask(echo, b"!mac") == mac


def test_rtc_survives_reset(echo: Module) -> None:
    assert ask(echo, b"!rtcset") == b"rtc ok\n"
    echo.write(b"!reset\n")
    echo.wait_booted(2)
    assert ask(echo, b"!rtc").startswith(b"rtc (2030, 1, 2, 2, 3, 4, ")


def test_crash_restarts(echo: Module) -> None:
    echo.write(b"!crash\n")
    echo.wait_booted(2)
    assert ask(echo, b"!cause") == b"cause 2 wake 0\n"
    assert "ValueError: crash requested" in echo.console()


def test_halt_waits_for_power(echo: Module) -> None:
    echo.write(b"!halt\n")
    time.sleep(0.5)
    st = echo.status()
    assert st["state"] == "down" and st["boots"] == 1
    echo.kill()
    assert echo.wait_booted(2)["cause"] == "PWRON"


def test_uart_settings_reach_the_launcher(echo: Module) -> None:
    assert ask(echo, b"!baud 9600") == b"baud ok\n"
    assert echo.status()["uart"] == {
        "baudrate": 9600,
        "bits": 8,
        "parity": None,
        "stop": 1,
        "flow": 0,
    }


def test_world_ops(echo: Module) -> None:
    world = echo.state_dir / "world.json"
    assert echo.ctl({"op": "world", "world": {"aps": [{"ssid": "a", "rssi": -50}]}})["ok"]
    assert json.loads(world.read_text()) == {"aps": [{"ssid": "a", "rssi": -50}]}
    r = echo.ctl({"op": "ap", "ssid": "a", "set": {"rssi": -80, "password": "pw"}})
    assert r == {"ok": True, "ap": {"ssid": "a", "rssi": -80, "password": "pw"}}
    echo.ctl({"op": "ap", "ssid": "b", "set": {"rssi": -40}})
    assert echo.ctl({"op": "ap", "ssid": "a", "remove": True})["ok"]
    assert echo.ctl({"op": "world"})["world"] == {"aps": [{"ssid": "b", "rssi": -40}]}
    assert not echo.ctl({"op": "ap", "ssid": "zz", "remove": True})["ok"]
    r = echo.ctl({"op": "nonsense"})
    assert r["ok"] is False and "nonsense" in r["error"]
    assert echo.ctl({"op": "world", "world": [1]})["ok"] is False
    assert not list(echo.state_dir.glob("*.tmp"))


def test_ctl_cli(echo: Module) -> None:
    def ctl(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "host.ctl", "--state", str(echo.state_dir), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)

    assert ctl("status")["state"] == "running"
    assert ctl("ap", "cli", "rssi=-61", "password=secret")["ap"] == {
        "ssid": "cli",
        "rssi": -61,
        "password": "secret",
    }


def test_world_copied_at_start(tmp_path: Path) -> None:
    src = tmp_path / "w.json"
    src.write_text('{"aps": [{"ssid": "x"}]}')
    with Module(tmp_path / "state", root=FAKE, world=src) as m:
        assert m.ctl({"op": "world"})["world"] == {"aps": [{"ssid": "x"}]}


def test_sigterm_cleans_up(echo: Module) -> None:
    pid = echo.wait_booted(1)["pid"]
    echo.proc.send_signal(signal.SIGTERM)
    assert echo.proc.wait(5) == 0
    assert not os.path.lexists(echo.link)
    time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_idle_cpu_is_low(echo: Module) -> None:
    pid = echo.wait_booted(1)["pid"]
    time.sleep(0.3)
    a, b = cpu_ticks(pid), cpu_ticks(echo.proc.pid)
    time.sleep(1)
    hz = os.sysconf("SC_CLK_TCK")
    assert cpu_ticks(pid) - a < hz * 0.1, "firmware spins while idle"
    assert cpu_ticks(echo.proc.pid) - b < hz * 0.1, "launcher spins while idle"
    t = time.monotonic()
    assert ask(echo, b"wake up") == b"wake up\n"
    assert time.monotonic() - t < 0.2


@pytest.mark.slow
def test_pacing(tmp_path: Path) -> None:
    with Module(tmp_path / "state", root=FAKE, pace=True) as m:
        m.wait_booted(1)
        assert ask(m, b"!baud 9600") == b"baud ok\n"
        line = b"x" * 479 + b"\n"  # 480 bytes: 0.5 s each way at 9600 8N1
        t = time.monotonic()
        m.write(line)
        assert m.read_until(b"\n", timeout=5) == line
        assert 0.9 < time.monotonic() - t < 2.0


@pytest.mark.skipif(not (REPO / "main.py").exists(), reason="no firmware yet")
def test_fixture_syncs_real_firmware(module: Module) -> None:
    assert module.cmd("AT").endswith(b"\r\nOK\r\n")


# ----- the virtual module as a tool (issue 16, item 8)


def test_ctl_refuses_what_the_world_cannot_hold(echo: Module) -> None:
    before = echo.ctl({"op": "world"})["world"]
    out = subprocess.run(
        [sys.executable, "-m", "host.ctl", "--state", str(echo.state_dir), "ap", "X", "rssi=abc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.strip() == "refused: ap 'X'.rssi: 'abc' is not a whole number from -127 to 0"
    for bad in (
        {"op": "ap", "ssid": "X", "set": {"channel": 15}},
        {"op": "ap", "ssid": "X", "set": {"security": "WPA9"}},
        {"op": "ap", "ssid": "X", "set": {"bssid": "c8:3a:35"}},
        {"op": "ap", "ssid": "X", "set": {"dhcp": {"ip": "10.0.0"}}},
        {"op": "ap", "ssid": "X", "set": {"colour": "red"}},
        {"op": "ap", "ssid": "X", "set": {"present": "no"}},
        {"op": "ap", "ssid": "x" * 33},
        {"op": "world", "world": {"aps": [{"rssi": -40}]}},
        {"op": "world", "world": {"aps": {"ssid": "a"}}},
        {"op": "world", "world": {"scan_ms": -1}},
        {"op": "world", "world": {"softap": {"stations": [{"mac": "nope"}]}}},
    ):
        r = echo.ctl(bad)
        assert r["ok"] is False and "Error" not in r["error"], (bad, r)
    assert echo.ctl({"op": "world"})["world"] == before
    shipped = json.loads((REPO / "host" / "world.json").read_text())
    assert echo.ctl({"op": "world", "world": shipped})["ok"]


def test_wake_reports_the_state_after_waking(echo: Module) -> None:
    echo.write(b"!sleep\n")
    end = time.monotonic() + 5
    while echo.status()["state"] != "sleeping" and time.monotonic() < end:
        time.sleep(0.05)
    r = echo.ctl({"op": "wake"})
    assert r["ok"] and r["was"] == "sleeping"
    assert r["state"] == "running" and r["connected"] and r["boots"] == 2
    assert r["cause"] == "DEEPSLEEP"
    r = echo.ctl({"op": "wake"})  # not asleep: says so at once
    assert r["was"] == "running" and r["state"] == "running" and r["boots"] == 2


def test_a_second_launcher_on_the_same_state_is_refused(echo: Module, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "host.launcher",
            "--state",
            str(echo.state_dir),
            "--link",
            str(tmp_path / "other"),
            "--root",
            str(FAKE),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert f"is in use by launcher pid {echo.proc.pid}" in out.stderr
    assert not os.path.lexists(tmp_path / "other")
    # The first is untouched: its link, its control port, its firmware.
    assert os.readlink(echo.link) == echo.uart
    assert int((echo.state_dir / "control.port").read_text()) == echo.control
    assert ask(echo, b"still here") == b"still here\n"


def test_a_killed_launchers_lock_is_taken_over(tmp_path: Path) -> None:
    state = tmp_path / "state"
    m = Module(state, root=FAKE)
    m.wait_booted(1)
    fw = m.status()["pid"]
    m.proc.kill()  # SIGKILL: no clean-up, the lock file stays
    m.proc.wait(5)
    os.kill(fw, signal.SIGKILL)
    assert (state / "launcher.lock").exists()
    with Module(state, root=FAKE) as again:
        again.wait_booted(1)
        assert (state / "launcher.lock").read_text().strip() == str(again.proc.pid)
    m.stop()


def listening(port: int, proto: str = "tcp") -> list[str]:
    """The addresses a socket of this machine listens on (TCP) or is bound to (UDP) at port."""
    out = []
    for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, p = local.partition(":")
        if int(p, 16) == port and state == ("0A" if proto == "tcp" else "07"):
            out.append(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


UP = b"\r\n+WEVENT:STATION_UP\r\n"
OK = b"\r\nOK\r\n"


def test_factory_provisioning_opens_at_the_printed_url(module: Module) -> None:
    m = module
    port = int((m.state_dir / "provision.port").read_text())
    assert m.banner["PROVISION"] == f"http://127.0.0.1:{port}/"
    assert m.cmd("AT+SMARTHTTP?").endswith(b"+SMARTHTTP:AP,80\r\n" + OK)  # factory settings
    assert m.cmd("AT+SMARTSTART=5").endswith(OK)
    with urllib.request.urlopen(m.banner["PROVISION"], timeout=10) as r:
        assert b"Wi-Fi set-up" in r.read()
    assert listening(port) == ["127.0.0.1"]
    assert m.cmd("AT+WSAPIP?").find(b"192.168.4.1") >= 0  # the module still says its own
    assert m.cmd("AT+SMARTSTOP").endswith(OK)


def test_servers_and_udp_links_listen_on_loopback_only(module: Module) -> None:
    m = module
    m.cmd("AT+UARTE=OFF")
    assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK
    m.read_until(UP, 10)
    tcp, udp = free_port(), free_port()
    assert m.cmd(f"AT+CIPSTART=0,tcp_server,{tcp}").endswith(OK)
    assert m.cmd(f"AT+CIPSTART=1,udp_unicast,127.0.0.1,9,{udp}").endswith(OK)
    assert listening(tcp) == ["127.0.0.1"]
    assert listening(udp, "udp") == ["127.0.0.1"]


def test_listen_names_another_address(tmp_path: Path) -> None:
    with Module(tmp_path / "state", options=("--listen", "127.0.0.2")) as m:
        m.sync()
        m.cmd("AT+UARTE=OFF")
        assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK
        m.read_until(UP, 10)
        tcp = free_port()
        assert m.cmd(f"AT+CIPSTART=0,tcp_server,{tcp}").endswith(OK)
        assert listening(tcp) == ["127.0.0.2"]
        assert m.banner["PROVISION"].startswith("http://127.0.0.2:")


def test_sntp_works_out_of_the_box(module: Module) -> None:
    m = module
    m.cmd("AT+UARTE=OFF")
    assert m.banner["NTP"] == "127.0.0.1:" + (m.state_dir / "ntp.port").read_text().strip()
    assert m.cmd("AT+SNTPCFG?").find(b"pool.ntp.org") >= 0  # factory servers
    assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK
    m.read_until(UP, 10)
    got = m.cmd("AT+SNTPTIME", 10)
    hit = re.search(rb"\+SNTPTIME:(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\r\n", got)
    assert hit and got.endswith(OK), got
    when = datetime.strptime(hit.group(1).decode(), "%Y-%m-%dT%H:%M:%S.%f")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs((when - now).total_seconds()) < 5


# ----- pure parts, under CPython


@pytest.mark.parametrize(
    ("request_", "answered"),
    [
        (bytes([0x23]) + bytes(47), True),  # v4 client
        (bytes([0x1B]) + bytes(47), True),  # v3 client: answered as v3
        (bytes([0x24]) + bytes(47), False),  # a server's packet
        (bytes([0x25]) + bytes(47), False),  # broadcast
        (bytes([0x03]) + bytes(47), False),  # version 0
        (bytes([0x23]) + bytes(46), False),  # short
        (b"", False),
    ],
)
def test_ntp_responder_answers_clients_only(request_: bytes, answered: bool) -> None:
    from host import ntpd

    request = bytearray(request_)
    if len(request) >= 48:
        request[40:48] = b"ORIGIN!!"
    out = ntpd.reply(bytes(request), 1_800_000_000.25, 1_800_000_000.5)
    assert (out is not None) == answered
    if out:
        head = ntpd.PACKET.unpack(out)
        assert head[0] == (request[0] & 0x38) | 4 and head[1] == 1  # same version, server
        assert out[24:32] == b"ORIGIN!!"  # the client's transmit time, echoed
        assert head[9] == (1_800_000_000 + ntpd.NTP_1970) << 32 | 2**30  # receive, .25 s
        assert head[10] == (1_800_000_000 + ntpd.NTP_1970) << 32 | 2**31  # transmit, .5 s


@pytest.mark.parametrize(
    ("ap", "error"),
    [
        ({"ssid": "a", "rssi": -60, "security": "WPA2/WPA3", "channel": 14}, None),
        ({"ssid": "a", "dhcp": {"ip": "10.0.0.2", "dns": "8.8.8.8"}, "refuse": None}, None),
        ({"ssid": "a", "rssi": "abc"}, "ap 'a'.rssi: 'abc' is not a whole number from -127 to 0"),
        ({"ssid": "a", "rssi": True}, "ap 'a'.rssi: True is not a whole number from -127 to 0"),
        ({"ssid": "a", "channel": 0}, "ap 'a'.channel: 0 is not a whole number from 1 to 14"),
        ({"ssid": "a", "hidden": 1}, "ap 'a'.hidden: 1 is not true or false"),
        ({"ssid": "a", "refuse": "always"}, "ap 'a'.refuse: 'always' is not one of None, "),
        ({"ssid": "a", "dhcp": {"ip": "10.0.0.256"}}, "ap 'a'.dhcp.ip: '10.0.0.256' is not an"),
        ({"ssid": "a", "dhcp": "auto"}, "ap 'a'.dhcp: must be a JSON object"),
        ({"ssid": "", "rssi": -1}, "ap ''.ssid: '' is not text of 1 to 32 bytes"),
        ({"ssid": "a", "pass": "x"}, "ap 'a': unknown key 'pass' (known: ssid, bssid,"),
    ],
)
def test_world_schema(ap: dict, error: str | None) -> None:
    from host.worldschema import WorldError, check_ap

    if error is None:
        check_ap(ap)
    else:
        with pytest.raises(WorldError) as e:
            check_ap(ap)
        assert str(e.value).startswith(error)


def test_image_option_is_kept_on_the_flash(tmp_path: Path) -> None:
    """--image generic-ota flashes the OTA partition table; later runs without the option keep
    what the state's flash holds; a new state gets ESP32_GENERIC."""
    state = tmp_path / "state"
    image = state / "image"
    with Module(state, root=FAKE) as m:
        m.wait_booted(1)
    assert image.read_text() == "generic\n"
    cmd = [sys.executable, "-m", "host.launcher", "--image", "generic-ota", "--state", str(state)]
    cmd += ["--link", str(tmp_path / "uart"), "--root", str(FAKE), "--stdin-stop"]
    p = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().startswith(b"UART: ")
    p.stdin.close()
    p.wait(20)
    assert image.read_text() == "generic-ota\n"
    with Module(state, root=FAKE) as m:
        m.wait_booted(1)
    assert image.read_text() == "generic-ota\n"
