# Wiring of the AT UART and the STANDBY wake pin on the ESP32 board. Set MODULE to the module
# on your board, or change the pins to match the host product; the PC port ignores pin numbers.
#
# Pins no table may use: GPIO6-11 (the SPI flash), GPIO16/17 on WROVER modules (the PSRAM),
# the strapping pins 0, 2, 5, 12, 15 (the host would drive them at reset), the input-only
# GPIO34-39 (no TX, RTS), and GPIO1/3 (UART0: the REPL and the firmware's log on USB).
try:
    from micropython import const
except ImportError:  # CPython, for the unit tests

    def const(x):
        return x


MODULE = "WROOM"  # "WROOM" (ESP32-WROOM-32*, no PSRAM) or "WROVER" (ESP32-WROVER*, PSRAM)

_PINS = {
    # module: TX, RX, RTS, CTS
    "WROOM": (17, 16, 18, 19),
    "WROVER": (4, 13, 18, 19),
}

UART_ID = const(2)  # UART0 stays the REPL/log console on USB
UART_TX, UART_RX, UART_RTS, UART_CTS = _PINS[MODULE]
UART_TXBUF = const(4096)
UART_RXBUF = const(4096)
WAKE_PIN = const(27)  # STANDBY: an RTC GPIO; pulled low by the host to wake the module
