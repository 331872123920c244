"""UART.flush() on the chip waits for the TX ring to drain and raises OSError(ETIMEDOUT) when a
host holding CTS stops it (ports/esp32/machine_uart.c): AT+REBOOT, AT+STANDBY and AT+FACTORY
happen all the same. The launcher's "cts" control op is the host's CTS line."""

from __future__ import annotations

import time

from host_tests.module import OK, Module


def hold_cts(m: Module, hold: bool) -> bool:
    return m.ctl({"op": "cts", "hold": hold})["held"]


def test_reset_commands_happen_when_flush_times_out(module):
    m = module
    assert m.cmd("AT+UARTE=OFF").endswith(OK)
    assert not hold_cts(m, True)  # no CTS flow control yet: the line is ignored
    assert m.cmd("AT") == OK
    hold_cts(m, False)
    # 921600 baud: flush gives up after (3 + 4096) * 26000 / 921600 ticks of 10 ms, 1.15 s
    assert m.cmd("AT+UART=921600,8,1,NONE,CTSRTS") == OK
    m.write(b"AT+REBOOT\r")
    m.wait_booted(2)
    m.sync()
    assert hold_cts(m, True)
    m.write(b"AT+REBOOT\r")
    m.wait_booted(3, timeout=15)
    assert m.read(timeout=0.3) == b""  # its OK was in the TX ring when the module reset
    hold_cts(m, False)
    m.sync()
    assert "flush: OSError" in m.console()

    assert hold_cts(m, True)
    m.write(b"AT+STANDBY\r")
    end = time.monotonic() + 15
    while m.status()["state"] != "sleeping":
        assert time.monotonic() < end, m.status()
        time.sleep(0.1)
    hold_cts(m, False)
    m.wake()
    m.wait_booted(4)
    m.sync()

    assert hold_cts(m, True)
    m.write(b"AT+FACTORY\r")
    m.wait_booted(5, timeout=15)
    hold_cts(m, False)
    m.sync()
    assert b"\r\n+UART:115200,8,1,NONE,NONE\r\n" in m.cmd("AT+UART?")  # echo is on again
