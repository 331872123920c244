"""The pin tables of firmware/board.py against the ESP32's reserved pins (CPython)."""

from __future__ import annotations

import os
import subprocess

import pytest

from firmware import board
from host_tests.module import REPO

FLASH = set(range(6, 12))  # GPIO6-11: the SPI flash of every ESP32 module
PSRAM = {16, 17}  # WROVER: the PSRAM's CS and clock
STRAPPING = {0, 2, 5, 12, 15}
INPUT_ONLY = set(range(34, 40))
CONSOLE = {1, 3}  # UART0: REPL and log


@pytest.mark.parametrize("module", sorted(board._PINS))
def test_pins_are_free_on_that_module(module):
    pins = board._PINS[module]
    assert len(set(pins)) == len(pins)
    taken = FLASH | STRAPPING | INPUT_ONLY | CONSOLE
    if module == "WROVER":
        taken |= PSRAM
    assert not set(pins) & taken, (module, pins)
    assert board.WAKE_PIN not in taken | set(pins)


def test_default_is_wroom():
    assert board.MODULE == "WROOM"
    assert (board.UART_TX, board.UART_RX) == (17, 16)


OLD_IMAGE = """
import firmware.app as app
class Implementation:
    version = (1, 23, 0, "")
class Sys:
    implementation = Implementation
app._check_micropython()
print("---")
app.sys = Sys
app._check_micropython()
"""


def test_older_micropython_is_named_at_boot(tmp_path, mpy):
    """On MicroPython older than 1.24 the firmware logs one line saying so (and goes on)."""
    script = tmp_path / "old.py"
    script.write_text(OLD_IMAGE)
    env = dict(os.environ, MICROPYPATH=f"{REPO / 'host' / 'board'}:{REPO}:.frozen")
    env["EMW_STATE"] = str(tmp_path)
    out = subprocess.run(
        [mpy, str(script)], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    before, after = out.split("---")
    assert "WARN" not in before
    assert "MicroPython 1.23.0 is older than 1.24.0, the oldest supported" in after
