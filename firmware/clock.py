# The RTC's time. It reads 2000-01-01 after power-on; once the station is up the module sets it
# by itself with SNTP from the configured servers (as ESP-AT does at start), retrying with
# back-off while no server answers (15 s doubling to 5 min, as lwIP's SNTP client), then every
# hour. TLS verification needs the date (firmware/tls.py). firmware/sntp.py is loaded for each
# attempt and let go after (unless the AT commands hold it): between attempts the keeper costs
# one small task.
import asyncio
import sys

import machine
from micropython import const

from firmware import wifi

_RETRY_MIN_MS = const(15000)
_RETRY_MAX_MS = const(300000)
_RESYNC_MS = const(3600000)


def is_set():
    return machine.RTC().datetime()[0] >= 2024  # not set since power-on: 2000


_task = None


def start():
    global _task
    _task = asyncio.create_task(_keep())


async def _keep():
    wait = _RETRY_MIN_MS
    while True:
        while not wifi.online():
            await asyncio.sleep_ms(500)
        held = "firmware.sntp" in sys.modules
        from firmware import sntp

        try:
            await sntp.sync()
            wait, pause = _RETRY_MIN_MS, _RESYNC_MS
        except Exception:  # AtError: no answer (AT+SNTPTIME tells why)
            pause, wait = wait, min(wait * 2, _RETRY_MAX_MS)
        if not held:  # let the module go: the next attempt loads it again
            del sys.modules["firmware.sntp"]
            del sys.modules["firmware"].sntp
        sntp = None
        await asyncio.sleep_ms(pause)
