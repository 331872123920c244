"""The secrets option (extension, issue 17): AT+SECRETS=HIDE masks keys and passwords in query
replies and refuses to read the private key back; persisted, one-way until AT+FACTORY."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from host_tests.module import ERROR, OK, WIFI_KEY, WIFI_SSID, Module
from host_tests.netservers import Pki, have_openssl

MASK = b"********"
SECRET_QUERIES = {
    "AT+WJAP=?": f"+WJAP:{WIFI_SSID},{WIFI_KEY}".encode(),
    "AT+WSAP?": b"+WSAP:emw-setup,ap-secret-1",
    "AT+MQTTAUTH?": b"+MQTTAUTH:dev1,broker-pass",
    "AT+SMARTKEY?": b"+SMARTKEY:prov-key-77",
}


def masked(reply: bytes) -> bytes:
    return reply.rpartition(b",")[0] + b"," + MASK if b"," in reply else b"+SMARTKEY:" + MASK


@pytest.fixture
def m(module: Module) -> Module:
    module.cmd("AT+UARTE=OFF")
    module.drain()
    return module


def ok(m: Module, line: str) -> bytes:
    r = m.cmd(line)
    assert r.endswith(OK), f"{line} -> {r!r}"
    return r


def refused(m: Module, line: str) -> bytes:
    r = m.cmd(line)
    assert r.endswith(ERROR), f"{line} -> {r!r}"
    return m.cmd("AT+ERRNO")


def store_key(m: Module, pem: bytes) -> None:
    m.write(b"AT+SSLCERTSET=2\r")
    m.read_until(b">")
    m.write(pem + b"\x1a")
    m.read_until(OK)


def set_secrets(m: Module) -> None:
    ok(m, f"AT+WJAP={WIFI_SSID},{WIFI_KEY}")
    ok(m, "AT+WSAP=emw-setup,ap-secret-1")
    ok(m, "AT+MQTTAUTH=dev1,broker-pass")
    ok(m, "AT+SMARTKEY=prov-key-77")


def test_factory_shows_secrets_as_the_spec_says(m):
    assert ok(m, "AT+SECRETS?") == b"\r\n+SECRETS:SHOW\r\n" + OK
    set_secrets(m)
    for line, reply in SECRET_QUERIES.items():
        assert reply in ok(m, line), line


def test_hide_masks_refuses_the_key_persists_and_only_factory_undoes_it(m, tmp_path: Path):
    if not have_openssl():
        pytest.skip("openssl CLI not installed")
    key = Pki(tmp_path / "pki").key_path.read_bytes()
    set_secrets(m)
    store_key(m, key)
    assert b"PRIVATE KEY" in ok(m, "AT+SSLCERTGET=2")
    ok(m, "AT+SECRETS=HIDE")
    for _ in range(2):  # before and after a restart
        assert ok(m, "AT+SECRETS?") == b"\r\n+SECRETS:HIDE\r\n" + OK
        for line, reply in SECRET_QUERIES.items():
            r = ok(m, line)
            assert masked(reply) in r and reply not in r, (line, r)
        assert b"the private key is not read back" in refused(m, "AT+SSLCERTGET=2")
        assert b"only AT+FACTORY" in refused(m, "AT+SECRETS=SHOW")
        ok(m, "AT+REBOOT")
        time.sleep(1.5)
        m.sync()
        m.cmd("AT+UARTE=OFF")
        m.drain()
    # the hidden key still works: the station rejoined with it after the restart
    end = time.monotonic() + 15
    while b"+WJAPS:STATION_UP" not in ok(m, "AT+WJAPS"):
        assert time.monotonic() < end, "no rejoin with the hidden key"
        time.sleep(0.3)
    ok(m, "AT+FACTORY")
    time.sleep(1.5)
    m.sync()
    assert b"+SECRETS:SHOW" in m.cmd("AT+SECRETS?")


def test_hide_needs_flashlock_off_and_a_valid_word(m):
    ok(m, "AT+FLASHLOCK=ON")
    assert b"FLASHLOCK is ON" in refused(m, "AT+SECRETS=HIDE")
    ok(m, "AT+FLASHLOCK=OFF")
    for bad in ("AT+SECRETS=", "AT+SECRETS=hide", "AT+SECRETS=HIDE,1", "AT+SECRETS=ON"):
        refused(m, bad)
    ok(m, "AT+SECRETS=SHOW")  # already shown: nothing to refuse
    assert b"+SECRETS:SHOW" in ok(m, "AT+SECRETS?")
