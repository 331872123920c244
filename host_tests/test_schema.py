"""One settings schema (firmware/schema.py): every setting's factory default and check; the
settings of every group load with it, and AT+FACTORY gives exactly its defaults."""

import json

import pytest

from firmware import settings
from firmware.schema import DEFAULTS, valid
from host_tests import flashfs
from host_tests.module import OK, Module

VALID = [
    ("wevent", False, True),
    ("wevent", 1, False),  # not a bool
    ("uart", [9600, 8, 1, "NONE", "NONE"], True),
    ("uart", [9600, 8, 1], False),  # a list of another length
    ("mqtt_sock", "broker", False),
    ("sntp_zone", -120, True),
    ("bt_passkey", 123456, False),
]


@pytest.mark.parametrize(("key", "value", "ok"), VALID)
def test_valid(key, value, ok):
    assert valid(key, value) is ok


def test_defaults_pass_their_own_check():
    assert all(valid(k, v) for k, v in DEFAULTS.items())


def settings_file(m: Module) -> dict:
    m.stop()
    return json.loads(flashfs.read(m.state_dir, "data/settings.json"))


def test_factory_gives_the_schema_defaults():
    with Module() as m:
        m.wait_booted(1)
        m.sync()
        # Settings of groups that are never loaded in this boot (MQTT, BT, SNTP, OTA) are
        # stored and read back from the schema alone.
        for line in (
            "AT+WEVENT=OFF",
            "AT+UARTFOMAT=512,200",
            "AT+MQTTSOCK=broker.example,1884",
            "AT+BTNAME=bench",
            "AT+SNTPCFG=+8,a.example",
            "AT+OTAURL=http://ota.example/manifest.json",
        ):
            assert m.cmd(line).endswith(OK), line
        m.stop()
        with Module(m.state_dir) as again:
            again.wait_booted(1)
            again.sync()
            assert b"+MQTTSOCK:broker.example,1884\r\n" in again.cmd("AT+MQTTSOCK?")
            assert again.cmd("AT+FACTORY").endswith(OK)
            again.wait_booted(2)
            again.sync()
            assert again.cmd("AT+WEVENT=OFF").endswith(OK)  # a change writes every setting
            assert again.cmd("AT+WEVENT=ON").endswith(OK)
            assert settings_file(again) == DEFAULTS


# Drivers send their whole configuration at every start: what does not change is not written
# (no flash wear, no heap for the file's write in a full heap).
def test_a_setting_that_does_not_change_is_not_written(monkeypatch, tmp_path):
    writes = []
    monkeypatch.setattr(settings, "write_file", lambda path, data: writes.append(dict(data)))
    monkeypatch.chdir(tmp_path)  # no settings file: factory defaults
    st = settings.Settings()
    st.load()
    st.set("wevent", DEFAULTS["wevent"])
    st.update({"mqtt_pub": list(DEFAULTS["mqtt_pub"]), "wevent": DEFAULTS["wevent"]})
    assert writes == []
    st.set("mqtt_pub", ["a/b", 1])
    st.set("mqtt_pub", ["a/b", 1])
    assert [w["mqtt_pub"] for w in writes] == [["a/b", 1]]
