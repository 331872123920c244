# Start-up: settings, the AT UART, the command table, then the event loop forever.
import asyncio
import gc

import machine

from firmware import board, ctx, log, settings, wifi
from firmware.registry import Table
from firmware.serial import Serial

_PARITY = {"NONE": None, "EVEN": 0, "ODD": 1}
_FLOW = {
    "NONE": 0,
    "CTS": machine.UART.CTS,
    "RTS": machine.UART.RTS,
    "CTSRTS": machine.UART.CTS | machine.UART.RTS,
}


def run():
    asyncio.run(main())


def open_uart(cfg):
    baud, bits, stop, parity, flow = cfg
    return machine.UART(
        board.UART_ID,
        baudrate=baud,
        bits=bits,
        stop=stop,
        parity=_PARITY[parity],
        tx=board.UART_TX,
        rx=board.UART_RX,
        rts=board.UART_RTS,
        cts=board.UART_CTS,
        flow=_FLOW[flow],
        txbuf=board.UART_TXBUF,
        rxbuf=board.UART_RXBUF,
    )


async def main():
    st = settings.Settings()
    st.load()
    ctx.settings = st
    ctx.serial = Serial(open_uart(st["uart"]), Table(), st)
    _restore(st)
    gc.collect()
    log.info("ready, {} bytes free".format(gc.mem_free()))
    housekeeping = asyncio.create_task(_housekeeping())
    await ctx.serial.run()
    housekeeping.cancel()


# Bring back what the host left running: the Wi-Fi links, and the features it asked to start
# at power-on (their modules load only then).
def _restore(st):
    wifi.start()
    from firmware import clock  # sets the clock once the station is up (TLS needs the date)

    clock.start()
    from firmware import ota  # every boot: confirms a new version once it answers AT

    ota.start()
    if st.get("bt_on"):
        from firmware import bt

        bt.start()
    if st.get("mqtt_autostart"):
        from firmware import mqtt

        mqtt.start()
    if any(st.get("links", ())):
        from firmware import links

        links.start()


# Hourly: keep uptime counting past the ticks_ms wrap.
async def _housekeeping():
    while True:
        ctx.uptime_ms()
        await asyncio.sleep(3600)
