"""The virtual module's plumbing: pty relay, restarts, sleep and wake, control port, board
stand-ins. Runs host_tests/fake_fw/main.py (an echo firmware) instead of the AT firmware."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
    r = echo.ctl({"op": "ap", "ssid": "a", "set": {"rssi": -80, "key": "pw"}})
    assert r["world"]["aps"] == [{"ssid": "a", "rssi": -80, "key": "pw"}]
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
    assert ctl("ap", "cli", "rssi=-61", "key=secret")["world"]["aps"][-1] == {
        "ssid": "cli",
        "rssi": -61,
        "key": "secret",
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
