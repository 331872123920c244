# Start-up: settings, the AT UART, the command table, then the event loop forever.
import asyncio
import gc

import machine

from firmware import board, ctx, log, mqtt, settings, wifi
from firmware.commands import mqtt as mqtt_commands
from firmware.commands import system, uart
from firmware.commands import wifi as wifi_commands
from firmware.serial import Serial

_GROUPS = (system, uart, wifi_commands, mqtt_commands)
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
    table = {}
    for group in _GROUPS:
        table.update(group.COMMANDS)
    ctx.serial = Serial(open_uart(st["uart"]), table, st)
    wifi.start()
    mqtt.start()  # the MQTT session; connects now if AT+MQTTAUTOSTART is ON
    gc.collect()
    log.info("ready, {} bytes free".format(gc.mem_free()))
    housekeeping = asyncio.create_task(_housekeeping())
    await ctx.serial.run()
    housekeeping.cancel()


# Hourly: keep uptime counting past the ticks_ms wrap.
async def _housekeeping():
    while True:
        ctx.uptime_ms()
        await asyncio.sleep(3600)
