"""The wire fuzzer (host_tests/fuzz.py) with a bounded count; `make fuzz` runs 100,000 lines."""

from __future__ import annotations

import random
import time

import pytest

from host_tests.fuzz import Finding, Fuzzer
from host_tests.module import OK, Module, virtual_only
from host_tests.netservers import HOST, TcpSink, free_port

LINES = 1000  # two batches: `make test` stays under 20 minutes on two cores


def fuzz(m: Module, lines: int, seed: int) -> list[Finding]:
    m.sync()
    with TcpSink() as sink:
        fz = Fuzzer(m, random.Random(seed), sink.port)
        fz.run(lines, batch=500)
    assert fz.sent == lines
    return fz.findings


def report(finds: list[Finding]) -> str:
    return "\n".join(f"{f.what!r}: {f.line!r}" for f in finds)


def test_fuzzed_lines_never_crash_restart_or_change_what_they_should_not(tmp_path) -> None:
    # A heap of 1 MB: this test is about the grammar, the checks and the engine; memory is
    # the next test's.
    with Module(tmp_path / "state", heap="1m") as m:
        finds = fuzz(m, LINES, 17)
    assert not finds, report(finds)


def test_fuzzed_lines_at_the_esp32_heap(module: Module) -> None:
    finds = fuzz(module, 500, 18)
    if finds and all("out of memory" in f.what for f in finds):
        pytest.xfail(f"issue 14 (heap exhausted once every group is loaded):\n{report(finds)}")
    assert not finds, report(finds)


# ----- finds of the fuzzer and of issue 17, as regression tests


def quiet(m: Module) -> Module:
    m.cmd("AT+UARTE=OFF")
    m.drain()
    return m


def test_smartkey_of_8_bytes_but_fewer_characters_starts_provisioning(module: Module) -> None:
    m = quiet(module)
    assert m.cmd("AT+SMARTKEY=éééé".encode()) == OK  # 8 bytes, 4 characters
    assert m.cmd(f"AT+SMARTHTTP={HOST},{free_port()}") == OK
    r = m.cmd("AT+SMARTSTART=5", timeout=10)
    errno = m.cmd("AT+ERRNO")
    assert b"+ERRNO:10," not in errno, errno  # a refusal with a reason would do; a crash not
    assert r == OK or b"+ERRNO:5," in errno, (r, errno)
    virtual_only("the console log")
    assert "Traceback" not in m.console()


def test_overflowing_certificate_is_discarded_to_its_end_and_answered_once(module: Module) -> None:
    m = quiet(module)
    lines = [b"-----BEGIN CERTIFICATE-----"] + [b"A" * 64] * 70 + [b"AT+FWVER?"]
    lines += [b"B" * 64] * 20 + [b"-----END CERTIFICATE-----", b""]
    body = b"\r\n".join(lines)
    assert body.index(b"AT+FWVER?") > 4096
    m.write(b"AT+SSLCERTSET=0\r")
    m.read_until(b">")
    m.write(body + b"\x1a")
    time.sleep(2)
    out = m.drain(0.5)
    assert b"+FWVER" not in out, "data was executed as a command"
    assert out.count(b"ERROR") + out.count(b"OK") == 1, out
    assert m.cmd("AT") == OK
