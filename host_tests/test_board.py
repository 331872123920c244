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


PARTITIONS = """
import errno, esp32
P = esp32.Partition
run = P(P.RUNNING)
print(run.info()[4], P(P.BOOT).info()[4], [p.info()[4] for p in P.find(P.TYPE_APP)])
for f in (run.get_next_update, lambda: P("nope")):
    try:
        print(f().info()[4])
    except OSError as e:
        print("OSError", e.args[0] == errno.ENOENT)
try:
    P.mark_app_valid_cancel_rollback()
    print("valid")
except OSError as e:
    print("OSError", hex(-e.args[0]))
"""


@pytest.mark.parametrize(
    ("image", "want"),
    [
        # ESP32_GENERIC (partitions-4MiB.csv): one factory app, no otadata
        (
            "generic",
            ["factory factory ['factory']", "OSError True", "OSError True", "OSError 0x105"],
        ),
        # ESP32_GENERIC-OTA (partitions-4MiB-ota.csv)
        ("generic-ota", ["ota_0 ota_0 ['ota_0', 'ota_1']", "ota_1", "OSError True", "valid"]),
    ],
)
def test_partition_table_of_each_image(tmp_path, mpy, image, want):
    script = tmp_path / "parts.py"
    script.write_text(PARTITIONS)
    env = dict(os.environ, MICROPYPATH=f"{REPO / 'host' / 'board'}:.frozen")
    env.update(EMW_STATE=str(tmp_path), EMW_IMAGE=image)
    out = subprocess.run(
        [mpy, str(script)], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.split("\n")[:4] == want, out
