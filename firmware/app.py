# Start-up: settings, the AT UART, the command table, then the event loop forever.
import asyncio
import gc
import sys

import machine
from micropython import const

from firmware import board, ctx, log, registry, settings, wifi
from firmware.serial import Serial

# The oldest MicroPython this firmware supports: WLAN.ipconfig and network.ipconfig, which
# the Wi-Fi code uses, first appear in v1.24.0 (ports/esp32/network_common.c).
_OLDEST = (1, 24, 0)

_RETRY_MIN_MS = const(15000)
_RETRY_MAX_MS = const(300000)
_RESYNC_MS = const(3600000)


def run():
    asyncio.run(main())


# Called once at start: the tables are locals, freed once the UART is open.
def open_uart(cfg):
    baud, bits, stop, parity, flow = cfg
    UART = machine.UART
    return UART(
        board.UART_ID,
        baudrate=baud,
        bits=bits,
        stop=stop,
        parity={"NONE": None, "EVEN": 0, "ODD": 1}[parity],
        tx=board.UART_TX,
        rx=board.UART_RX,
        rts=board.UART_RTS,
        cts=board.UART_CTS,
        flow={"NONE": 0, "CTS": UART.CTS, "RTS": UART.RTS, "CTSRTS": UART.CTS | UART.RTS}[flow],
        txbuf=board.UART_TXBUF,
        rxbuf=board.UART_RXBUF,
    )


# On an older image the module still starts (AT, BLE...) and says why joins will fail.
def _check_micropython():
    v = tuple(sys.implementation.version[:3])
    if v < _OLDEST:
        log.warn(
            "MicroPython {}.{}.{} is older than {}.{}.{}, the oldest supported: Wi-Fi joins "
            "will fail (no WLAN.ipconfig); flash a newer image".format(*(v + _OLDEST))
        )


async def main():
    _check_micropython()
    st = settings.Settings()
    st.load()
    ctx.settings = st
    ctx.serial = Serial(open_uart(st["uart"]), registry, st)
    asyncio.get_event_loop().set_exception_handler(_task_failed)
    _restore(st)
    gc.collect()
    # Collect after every 1/16 of the free heap allocated (py/gc.c gc_alloc), not only when it
    # is full: else each command's garbage fills the low holes, the objects it keeps (settings,
    # a session's state) land above it, and once the garbage goes they are islands in the room a
    # feature's buffers need (at 110k, MQTT's 4.4 KB receive buffer found no run with 20 KB free).
    gc.threshold(gc.mem_free() // 16)
    log.info("ready, {} bytes free".format(gc.mem_free()))
    housekeeping = asyncio.create_task(_housekeeping())
    await ctx.serial.run()
    housekeeping.cancel()


# Bring back what the host left running: the Wi-Fi links, and the features it asked to start
# at power-on. Their command groups load first (registry.load), so that their modules can be
# released when the feature stops.
def _restore(st):
    wifi.start()
    # Every boot confirms a new version once it answers AT. The module counts as the OTA
    # group's, released with it (its task holds what it needs until it has confirmed).
    registry.use("ota", "firmware.ota").start()
    if st["bt_on"]:
        registry.load("bt")
        from firmware import bt

        bt.start()
    if st["mqtt_autostart"]:
        registry.load("mqtt")
        from firmware import mqtt

        mqtt.start()
    if any(st["links"]):
        registry.load("tcpip")
        registry.use("tcpip", "firmware.links").start()


# A task ended by an exception nobody caught: logged with its traceback (which task, which
# allocation); out of memory also goes to AT+ERRNO. Never raises: asyncio would pass it on out
# of asyncio.run(), and the module would restart (seen at 110k: logging the MemoryError ran out).
def _task_failed(loop, context):
    e = context["exception"]
    if isinstance(e, MemoryError):
        ctx.serial.out_of_memory("running a background task")
    try:
        log.exc(e, "a background task")
    except MemoryError:
        pass  # out_of_memory has logged what it could


# Keep uptime counting past the ticks_ms wrap, and the RTC set: it reads 2000-01-01 after
# power-on and TLS verification needs the date. Once the station is up, SNTP from the configured
# servers (as ESP-AT does at start), retried from 15 s doubling to 5 min while it fails (as lwIP's
# SNTP client), then hourly. firmware/sntp.py is loaded only for an attempt (RAM).
# A full heap (no room to load sntp) counts as a failed attempt: the task never ends.
async def _housekeeping():
    wait = _RETRY_MIN_MS
    while True:
        ctx.uptime_ms()
        if not wifi.online():
            await asyncio.sleep_ms(500)
            continue
        try:
            sntp = registry.imported("firmware.sntp")
            try:
                await sntp.sync()
            finally:
                registry.give_back("firmware.sntp")
            wait, pause = _RETRY_MIN_MS, _RESYNC_MS
        except Exception:  # AtError: no answer (AT+SNTPTIME tells why); MemoryError
            pause, wait = wait, min(wait * 2, _RETRY_MAX_MS)
        sntp = None
        await asyncio.sleep_ms(pause)
