"""Shared fixtures: `module` (a fresh, synced virtual module per test) and `mpy`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tests.module import REPO, Module

# MicroPython scripts, run on the VM by their pytest wrappers, not collected by pytest itself.
collect_ignore = ["vm", "fake_fw"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds (pacing, timeouts, many reboots)")


@pytest.fixture(scope="session")
def mpy() -> str:
    """Path of the pinned MicroPython unix executable."""
    path = Path(sys.executable).parent / "micropython"
    if not path.exists():
        path = REPO / ".venv" / "bin" / "micropython"
    return str(path)


@pytest.fixture
def module(tmp_path: Path) -> Iterator[Module]:
    """The real firmware on a fresh virtual module (new state folder), synced with AT."""
    m = Module(tmp_path / "state")
    try:
        m.sync()
        yield m
    finally:
        m.stop()
