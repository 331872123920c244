"""The AT engine, system and UART commands, driven through the pty like a host MCU."""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import pytest

from host_tests import flashfs
from host_tests.module import ERROR, OK, Module
from host_tests.mosquitto import make_ca

FW = b"+FWVER:esp32_AT_v2.0.0"


@pytest.fixture
def quiet(module: Module) -> Module:
    """A module with echo off, so replies can be compared byte for byte."""
    assert module.cmd("AT+UARTE=OFF") == b"AT+UARTE=OFF\r\r\nOK\r\n"
    return module


def reply(*lines: bytes) -> bytes:
    return b"".join(b"\r\n" + line for line in lines) + b"\r\n" + OK if lines else OK


def assert_alive(m: Module) -> None:
    assert m.cmd("AT") in (OK, b"AT\r" + OK)  # with or without echo


# --- echo and the line grammar


def test_echo_is_on_at_factory_default_and_comes_before_the_reply(module):
    assert module.cmd("AT") == b"AT\r\r\nOK\r\n"
    assert module.cmd("AT+FWVER?") == b"AT+FWVER?\r" + reply(FW)


def test_echo_acts_on_characters_as_they_arrive(module):
    # One driver sends +++ in command mode, waits 200 ms for a + to come back, and goes on with
    # its next command: on the same line, after the escape, which is ignored there.
    module.write(b"+++")
    assert module.read_until(b"+++", timeout=0.2) == b"+++"
    assert module.cmd("AT") == b"AT\r\r\nOK\r\n"
    module.write(b"+++\r")  # the escape alone is no command
    assert module.read_until(ERROR) == b"+++\r" + ERROR


def test_a_crlf_echoes_before_the_reply(module):
    # The LF of a CR LF is the command's too: it comes back before the response, and once.
    module.write(b"AT\r\n")
    assert module.read_until(OK) == b"AT\r\n" + OK
    module.write(b"AT+FWVER?\r\nAT\r\n")  # pipelined
    assert module.read_until(OK) == b"AT+FWVER?\r\n" + reply(FW)
    assert module.read_until(OK) == b"AT\r\n" + OK
    module.expect_silence(0.3)


def test_uarte_query_forms(module):
    assert module.cmd("AT+UARTE?") == b"AT+UARTE?\r" + reply(b"+UARTE:ON")
    module.cmd("AT+UARTE=OFF")
    for form in ("AT+UARTE?", "AT+UARTE=?", "AT+UARTE"):
        assert module.cmd(form) == reply(b"+UARTE:OFF")
    assert module.cmd("AT+UARTE=ON") == OK
    assert module.cmd("AT") == b"AT\r" + OK


@pytest.mark.parametrize("ending", [b"\r", b"\r\n", b"\n", b"\r\r"])
def test_line_endings(quiet, ending):
    quiet.write(b"AT+FWVER?" + ending)
    assert quiet.read_until(OK) == reply(FW)
    quiet.expect_silence(0.2)


def test_empty_lines_and_leading_cr_are_ignored(quiet):
    quiet.write(b"\r\r\n\n\rAT\r")
    assert quiet.read_until(OK) == OK
    quiet.expect_silence(0.2)


def test_command_split_across_many_writes(quiet):
    for b in b"AT+FWVER?\r":
        quiet.write(bytes([b]))
        time.sleep(0.005)
    assert quiet.read_until(OK) == reply(FW)


def test_pipelined_commands_are_all_answered_in_order(quiet):
    quiet.write(b"AT\rAT+FWVER?\rAT+NOPE\rAT+UARTE?\rat\rAT\r")
    want = OK + reply(FW) + ERROR + reply(b"+UARTE:OFF") + ERROR + OK
    got = b""
    while len(got) < len(want):
        got += quiet.read(timeout=2)
    assert got == want


@pytest.mark.parametrize(
    "line",
    [
        b"at",  # lowercase
        b"at+fwver?",
        b"AT+FWVE?",  # unknown
        b"AT+RST",  # foreign commands from other modules' drivers
        b'AT+CWJAP="x","y"',
        b"AT+AT+WDHCP?",  # a real driver's malformed line
        b"AT+",
        b"AT+FWVER=1",  # no set form
        b"AT+REBOOT?",  # no query form
        b"AT+UARTE=",  # missing parameter
        b"AT+UARTE=ON,OFF",  # extra parameter
        b"AT+UARTE=on",
        b"AT+UARTE=1",
        b"AT+UARTFOMAT=0,100",  # out of range
        b"AT+UARTFOMAT=1025,100",
        b"AT+UARTFOMAT=1024,49",
        b"AT+UARTFOMAT=1024,501",
        b"AT+UARTFOMAT=abc,100",  # not a number
        b"AT+UARTFOMAT=1024",
        b"AT+UARTFOMAT=1024,100,1",
        b"AT+UART=115201,8,1,NONE,NONE",
        b"AT+UART=115200,9,1,NONE,NONE",
        b"AT+UART=115200,8,3,NONE,NONE",
        b"AT+UART=115200,8,1,MARK,NONE",
        b"AT+UART=115200,8,1,NONE,XON",
        b"AT+UART=115200,8,1,NONE",
        b"AT+FLASHLOCK=YES",
        b"AT+WEVENT=",
        b"AT+CIPEVENT=ON,ON",
        b"\x00\x01\x02\xff\xfe",  # binary garbage
        b"+++",
    ],
)
def test_bad_input_answers_error_and_changes_nothing(quiet, line):
    before = [quiet.cmd(q) for q in ("AT+UART?", "AT+UARTFOMAT?", "AT+FLASHLOCK?", "AT+WEVENT?")]
    assert quiet.cmd(line) == ERROR
    after = [quiet.cmd(q) for q in ("AT+UART?", "AT+UARTFOMAT?", "AT+FLASHLOCK?", "AT+WEVENT?")]
    assert before == after
    assert_alive(quiet)


def test_overlong_line_is_refused_and_the_module_stays_responsive(quiet):
    quiet.write(b"AT+WJAP=" + b"x" * 5000 + b"\r")
    assert quiet.read_until(ERROR, timeout=5) == ERROR
    quiet.expect_silence(0.2)
    assert_alive(quiet)
    # A line of exactly the limit is still taken.
    assert quiet.cmd(b"AT+X" + b"Y" * 1020) == ERROR  # unknown command, but parsed


def test_binary_noise_without_terminator_then_a_command(quiet):
    quiet.write(bytes(range(256)) * 8)  # contains \r and \n: several garbage lines
    quiet.write(b"\rAT\r")
    got = quiet.read_until(ERROR + OK, timeout=5)
    assert got.replace(ERROR, b"") == OK
    assert_alive(quiet)


def test_error_detail_extension(quiet):
    assert quiet.cmd("AT+ERRNO") == reply(b"+ERRNO:0,")
    assert quiet.cmd("AT+UARTFOMAT=2000,100") == ERROR
    assert quiet.cmd("AT+ERRNO?") == reply(b"+ERRNO:5,parameter 1: must be 1..1024")
    assert quiet.cmd("AT+ERRVERBOSE=ON") == OK
    assert quiet.cmd("AT+NOPE") == b"\r\n+ERRNO:2,unknown command NOPE\r\n" + ERROR
    assert quiet.cmd("AT") == OK  # standard output unchanged when nothing fails


# --- system commands


def test_fwver_all_forms(quiet):
    for form in ("AT+FWVER?", "AT+FWVER", "AT+FWVER=?"):
        got = quiet.cmd(form)
        assert got == reply(FW)
    version = FW.split(b":")[1]
    assert 1 <= len(version) <= 32 and b"," not in version


def test_systime_counts_milliseconds(quiet):
    first = int(quiet.cmd("AT+SYSTIME?").split(b":")[1].split(b"\r")[0])
    time.sleep(0.5)
    second = int(quiet.cmd("AT+SYSTIME").split(b":")[1].split(b"\r")[0])
    assert 400 <= second - first <= 1500


def test_memfree_reports_free_heap_bytes(quiet):
    got = quiet.cmd("AT+MEMFREE?")
    assert got.startswith(b"\r\n+MEMFREE:") and got.endswith(b"\r\n" + OK)
    free = int(got.split(b":")[1].split(b"\r")[0])
    assert 20_000 < free < 200_000  # the VM heap: 110k scaled for 64-bit objects


@pytest.mark.parametrize("cmd", ["WEVENT", "CIPEVENT"])
def test_event_switches_answer_with_equals(quiet, cmd):
    assert quiet.cmd(f"AT+{cmd}?") == reply(f"+{cmd}=ON".encode())
    assert quiet.cmd(f"AT+{cmd}=OFF") == OK
    assert quiet.cmd(f"AT+{cmd}?") == reply(f"+{cmd}=OFF".encode())


def test_uart_settings_validated_stored_and_applied_at_restart(quiet):
    assert quiet.cmd("AT+UART?") == reply(b"+UART:115200,8,1,NONE,NONE")
    assert quiet.cmd("AT+UART=921600,8,1,EVEN,CTSRTS") == OK
    assert quiet.cmd("AT+UART?") == reply(b"+UART:921600,8,1,EVEN,CTSRTS")
    assert quiet.cmd("AT+UART=115200,8,1,NONE,RCS") == OK  # the document's spelling of RTS
    assert quiet.cmd("AT+UART?") == reply(b"+UART:115200,8,1,NONE,RTS")
    assert quiet.status()["uart"]["baudrate"] == 115200
    assert quiet.cmd("AT+UART=9600,7,2,ODD,NONE") == OK
    assert quiet.status()["uart"]["baudrate"] == 115200  # not before the restart
    assert quiet.cmd("AT+REBOOT") == OK
    quiet.wait_booted(2)
    uart = quiet.status()["uart"]
    assert (uart["baudrate"], uart["bits"], uart["stop"], uart["parity"]) == (9600, 7, 2, 1)


def test_uartfomat(quiet):
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:1024,100")
    assert quiet.cmd("AT+UARTFOMAT=1,50") == OK
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:1,50")
    assert quiet.cmd("AT+UARTFOMAT=1024,500") == OK
    assert quiet.cmd("AT+UARTFOMAT") == reply(b"+UARTFOMAT:1024,500")


def test_reboot_answers_ok_then_ignores_input_and_answers_again(module):
    assert module.cmd("AT+REBOOT") == b"AT+REBOOT\r" + OK
    module.write(b"AT+UARTE=OFF\r")  # arrives while rebooting: ignored
    module.sync()
    assert module.status()["boots"] == 2
    assert module.cmd("AT") == b"AT\r" + OK  # echo still on: the write above was dropped


def test_settings_survive_restart(quiet):
    quiet.cmd("AT+WEVENT=OFF")
    quiet.cmd("AT+UARTFOMAT=512,200")
    quiet.cmd("AT+REBOOT")
    quiet.sync()
    assert quiet.cmd("AT+UARTE?") == reply(b"+UARTE:OFF")
    assert quiet.cmd("AT+WEVENT?") == reply(b"+WEVENT=OFF")
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:512,200")


def test_power_cut_keeps_settings(quiet):
    quiet.cmd("AT+UARTFOMAT=300,300")
    quiet.kill()
    quiet.wait_booted(2)
    quiet.sync()
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:300,300")


def test_flashlock_keeps_changes_off_the_flash(quiet):
    quiet.cmd("AT+UARTFOMAT=100,100")
    assert quiet.cmd("AT+FLASHLOCK=ON") == OK
    assert quiet.cmd("AT+FLASHLOCK?") == reply(b"+FLASHLOCK:ON")
    quiet.cmd("AT+UARTFOMAT=200,200")
    quiet.cmd("AT+WEVENT=OFF")
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:200,200")  # live now
    quiet.cmd("AT+REBOOT")
    quiet.sync()
    assert quiet.cmd("AT+FLASHLOCK?") == reply(b"+FLASHLOCK:ON")  # its own state persists
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:100,100")
    assert quiet.cmd("AT+WEVENT?") == reply(b"+WEVENT=ON")
    assert quiet.cmd("AT+FLASHLOCK=OFF") == OK
    quiet.cmd("AT+UARTFOMAT=300,300")
    quiet.cmd("AT+REBOOT")
    quiet.sync()
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:300,300")


def test_factory_restores_defaults_and_restarts(quiet):
    quiet.cmd("AT+WEVENT=OFF")
    quiet.cmd("AT+CIPEVENT=OFF")
    quiet.cmd("AT+FLASHLOCK=ON")
    assert quiet.cmd("AT+FACTORY") == OK
    quiet.sync()
    assert quiet.status()["boots"] == 2
    # Factory defaults drivers rely on: echo ON, WEVENT ON, CIPEVENT ON.
    assert quiet.cmd("AT+UARTE?") == b"AT+UARTE?\r" + reply(b"+UARTE:ON")
    quiet.cmd("AT+UARTE=OFF")
    assert quiet.cmd("AT+WEVENT?") == reply(b"+WEVENT=ON")
    assert quiet.cmd("AT+CIPEVENT?") == reply(b"+CIPEVENT=ON")
    assert quiet.cmd("AT+FLASHLOCK?") == reply(b"+FLASHLOCK:OFF")


def test_factory_resent_every_200ms_until_ok(module):
    # One driver re-sends AT+FACTORY every 200 ms until it sees OK.
    module.write(b"AT+FACTORY\r")
    module.read_until(OK, timeout=1)
    for _ in range(5):
        module.write(b"AT+FACTORY\r")
        time.sleep(0.2)
    module.sync()
    assert_alive(module)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"echo": tr',
        b"",
        b"[1, 2, 3]",
        b'{"echo": "yes", "uartfomat": 7}',
        bytes(range(256)),
    ],
    ids=["garbage", "truncated", "empty", "not-object", "wrong-types", "binary"],
)
def test_corrupt_settings_file_boots_with_defaults(tmp_path, content):
    with Module(tmp_path / "state") as m:
        m.sync()
        m.cmd("AT+UARTFOMAT=10,60")
    assert b'"uartfomat": [10, 60]' in flashfs.read(tmp_path / "state", "data/settings.json")
    flashfs.write(tmp_path / "state", "data/settings.json", content)
    with Module(tmp_path / "state") as m:
        m.sync()
        assert m.cmd("AT+UARTFOMAT?") == b"AT+UARTFOMAT?\r" + reply(b"+UARTFOMAT:1024,100")
        assert "settings:" in m.console()  # the reason is logged
        assert_alive(m)


@pytest.mark.slow
def test_power_cut_during_saves_never_leaves_unloadable_settings(quiet):
    # Kill the process (SIGKILL: a power cut) while it is writing settings, many times.
    values = {f"+UARTFOMAT:{n},{50 + n % 400}".encode() for n in range(1, 1025)}
    for boot in range(2, 14):
        for n in range(1, 30):
            quiet.write(f"AT+UARTFOMAT={n * 7 % 1024 + 1},{50 + (n * 7 % 1024 + 1) % 400}\r")
        time.sleep(0.01 * (boot % 5))
        quiet.kill()
        quiet.wait_booted(boot)
        quiet.sync()
        quiet.cmd("AT+UARTE=OFF")
        got = quiet.cmd("AT+UARTFOMAT?")
        line = got.split(b"\r\n")[1]
        assert line in values or line == b"+UARTFOMAT:1024,100", got
        assert "corrupt" not in quiet.console()


def test_standby_sleeps_until_the_wake_pin(quiet):
    assert quiet.cmd("AT+STANDBY") == OK
    time.sleep(0.5)
    assert quiet.status()["state"] == "sleeping"
    quiet.write(b"AT\r")  # the module answers nothing until the STANDBY pin is pulled
    quiet.expect_silence(1)
    quiet.wake()
    quiet.sync()
    assert quiet.status()["cause"] == "DEEPSLEEP"
    assert quiet.cmd("AT+UARTE?") == reply(b"+UARTE:OFF")  # settings kept


# --- data phases: never executed, answered once, streamed when long


def pem(size: int, inside: bytes = b"") -> bytes:
    body = b"".join(b"%063d\n" % i for i in range(size // 64))
    return b"-----BEGIN CERTIFICATE-----\n" + inside + body + b"-----END CERTIFICATE-----\n"


@functools.cache
def _one_cert() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return make_ca(Path(d), "chain")[0].read_bytes()


# A bundle of real certificates of at least `size` bytes (the module checks each one it stores).
def chain(size: int) -> bytes:
    one = _one_cert()
    return one * -(-size // len(one))


def test_a_long_certificate_chain_is_stored_whole(quiet):
    chain13k = chain(13200)  # a real CA chain: 13 KB
    quiet.write(b"AT+SSLCERTSET=0\r")
    assert quiet.read_until(b">") == b">"
    quiet.write(chain13k + b"\x1a")
    assert quiet.read_until(OK, 10) == OK
    assert quiet.cmd("AT+SSLCERTGET=0", 10) == reply(b"+SSLCERTGET:" + chain13k)


def test_a_command_inside_data_is_never_executed(quiet):
    cert = chain(2500) + b"AT+FWVER?\r\n" + chain(2500)  # text between PEM blocks is allowed
    quiet.write(b"AT+SSLCERTSET=1\r" + cert + b"\x1a")
    assert quiet.read_until(OK, 10) == b">" + OK
    quiet.expect_silence(0.3)


def test_an_overlong_data_phase_is_discarded_to_its_end_and_answered_once(quiet):
    quiet.write(b"AT+SSLCERTSET=0\r")
    quiet.read_until(b">")
    quiet.write(chain(6000) + b"\x1a")
    quiet.read_until(OK, 10)
    big = pem(20000, inside=b"AT+FWVER?\r") + b"AT+FWVER?\r" + pem(3000)
    quiet.write(b"AT+SSLCERTSET=0\r" + big + b"\x1a")
    assert quiet.read_until(ERROR, 10) == b">" + ERROR
    quiet.expect_silence(0.3)
    assert quiet.cmd("AT+ERRNO") == reply(b"+ERRNO:5,certificate longer than 16384")
    assert quiet.cmd("AT+SSLCERTGET=0", 10) == reply(b"+SSLCERTGET:" + chain(6000))  # unchanged


def test_backspace_and_delete_edit_the_line(module):
    module.write(b"AT+FWVEX\x08R?\r")
    assert module.read_until(OK) == b"AT+FWVEX\x08 \x08R?\r" + reply(FW)
    module.cmd("AT+UARTE=OFF")
    module.write(b"\x7fAT+UARTEX\x7f\x7fE?\r")  # DEL too; on an empty line it does nothing
    assert module.read_until(OK) == reply(b"+UARTE:OFF")


def test_blanks_around_numbers_and_quoted_commas(quiet):
    assert quiet.cmd("AT+UARTFOMAT= 512 , 100") == OK
    assert quiet.cmd("AT+UARTFOMAT?") == reply(b"+UARTFOMAT:512,100")
    assert quiet.cmd('AT+WJAP="Cafe Wi-Fi, 2nd floor",12345678') == OK
    assert quiet.cmd("AT+WJAP=?").startswith(b"\r\n+WJAP:Cafe Wi-Fi\\, 2nd floor,12345678")
