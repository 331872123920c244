"""The pin tables of firmware/board.py against the ESP32's reserved pins (CPython)."""

from __future__ import annotations

import pytest

from firmware import board

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
