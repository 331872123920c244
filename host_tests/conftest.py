"""Shared fixtures: `module` (a fresh, synced module per test) and `mpy`; the conformance suite.

The wire-level test files form the conformance suite (`make conformance`, marker
`conformance`): they run against the virtual module, or against a module on a serial port when
EMW_PORT is set. There, tests marked `virtual_only(reason)` are skipped with the reason, and the
tests of other files are deselected.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tests.module import REPO, SERVER_IP, TARGET_BAUD, TARGET_PORT, Module
from host_tests.netservers import Pki, have_openssl

# MicroPython scripts, run on the VM by their pytest wrappers, not collected by pytest itself.
collect_ignore = ["vm", "fake_fw"]


# Test files that drive the module only through its UART and the network: the conformance suite.
WIRE_FILES = {
    "test_engine.py",
    "test_wifi.py",
    "test_tcpip.py",
    "test_mqtt.py",
    "test_sntp.py",
    "test_ota.py",
    "test_provision.py",
    "test_bt.py",
    "test_driver_personas.py",
    "test_faults.py",
    "test_fuzz_wire.py",
    "test_secrets.py",
}
# Whole files, and tests, that need what only the PC offers before they could skip by
# themselves (module.virtual_only skips a test where it first touches such a thing).
VIRTUAL_ONLY_FILES = {
    "test_bt.py": "the PC's Bluetooth radio (bumble phone)",
    "test_ota.py": "a firmware to replace (it installs test releases, one crashing at start)",
}
VIRTUAL_ONLY_TESTS = {"test_standby_sleeps_until_the_wake_pin": "the wake pin (host.ctl wake)"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds (pacing, timeouts, many reboots)")
    config.addinivalue_line("markers", "conformance: a wire-level test (make conformance)")
    config.addinivalue_line(
        "markers", "virtual_only(reason): needs the virtual module; skipped on a serial port"
    )


def pytest_report_header(config: pytest.Config) -> str:
    target = f"{TARGET_PORT} at {TARGET_BAUD} baud" if TARGET_PORT else "the virtual module"
    return f"target: {target}; servers on {SERVER_IP}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        name = item.path.name
        if name in WIRE_FILES:
            item.add_marker(pytest.mark.conformance)
        why = VIRTUAL_ONLY_FILES.get(name) or VIRTUAL_ONLY_TESTS.get(item.originalname)
        if why:
            item.add_marker(pytest.mark.virtual_only(why))
        if not TARGET_PORT:
            kept.append(item)
        elif item.get_closest_marker("conformance") is None:
            dropped.append(item)
        else:
            mark = item.get_closest_marker("virtual_only")
            if mark is not None:
                item.add_marker(
                    pytest.mark.skip(reason=f"needs {mark.args[0]} (virtual module only)")
                )
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def mpy() -> str:
    """Path of the pinned MicroPython unix executable."""
    path = Path(sys.executable).parent / "micropython"
    if not path.exists():
        path = REPO / ".venv" / "bin" / "micropython"
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The tests' certificates (netservers.Pki), made once per test module."""
    if not have_openssl():
        pytest.skip("openssl CLI not installed")
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def module(tmp_path: Path) -> Iterator[Module]:
    """The real firmware on a fresh virtual module (new state folder), synced with AT."""
    m = Module(tmp_path / "state")
    try:
        m.sync()
        yield m
    finally:
        m.stop()
