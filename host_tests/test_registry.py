"""The command index (firmware/registry.py) is generated from the groups' COMMANDS rows, so a
command is declared once; AT+CMD? and AT+HELP list it from the index without loading groups.
Groups are released (host_tests/vm/test_registry_release.py, on the VM): a running feature's
command module only, an idle group whole, the system group never."""

import pytest

from firmware import registry
from host_tests.module import OK, Module, run_vm_script
from tools import cmdindex


def test_index_is_generated_from_the_groups():
    text = cmdindex.REGISTRY.read_text()
    assert cmdindex.updated(text) == text, "run: python tools/cmdindex.py"


FORMS = [
    ("WJAP", "=?,?,="),  # a 4-tuple row without the bare form
    ("WSCAN", "=,"),
    ("UARTE", "=?,?,=,"),  # switch()
    ("FWVER", "=?,?,"),  # reading()
    ("CIPSTART", "="),  # setter()
    ("MQTTCLOSE", ""),  # action()
    ("CMD", "?"),
]


@pytest.mark.parametrize(("name", "forms"), FORMS)
def test_forms(name, forms):
    assert registry.entry(name)[1] == forms


LINES = [
    ("", "+CMD:AT,"),
    ("WJAP", "+CMD:AT+WJAP,=?,?,="),
    ("WSCAN", "+CMD:AT+WSCAN,=,"),
]


def test_unknown_names():
    for name in ("WJA", "WJAPX", "BOGUS", ":", "0"):
        assert registry.entry(name) is None


@pytest.mark.parametrize(("name", "line"), LINES)
def test_listing_lines(name, line):
    assert line in registry.listing()


def test_every_group_is_indexed():
    assert set(registry.GROUPS) == {g for _, g, _ in registry.entries()}
    assert registry.GROUPS[0] == "system"


def test_command_list_on_the_module():
    with Module() as m:
        m.wait_booted(1)
        m.sync()
        for ask in ("AT+CMD?", "AT+HELP"):
            reply = m.cmd(ask)
            assert reply.endswith(OK)
            lines = [ln for ln in reply.decode().split("\r\n") if ln.startswith("+CMD:")]
            assert lines == registry.listing()
        assert b"+CMD:AT+BTSEND,=\r\n" in reply
        assert m.cmd("AT+FWVER?").endswith(OK)  # the list changed no other reply


def test_release_keeps_running_features(mpy):
    run_vm_script(mpy, "host_tests/vm/test_registry_release.py", "256k", "host/board")


def test_a_release_in_a_full_heap_leaves_the_modules_consistent(mpy):
    run_vm_script(mpy, "host_tests/vm/test_release_oom.py", "1m", "host/board")


def test_a_failed_import_gives_its_memory_back(mpy):
    run_vm_script(mpy, "host_tests/vm/test_failed_import.py", "256k", "host/board")
