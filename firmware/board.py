# Wiring of the AT UART and the STANDBY wake pin on the ESP32 board. Change these to match
# the host product; the PC port ignores pin numbers.
from micropython import const

UART_ID = const(2)  # UART0 stays the REPL/log console on USB
UART_TX = const(17)
UART_RX = const(16)
UART_RTS = const(18)
UART_CTS = const(19)
UART_TXBUF = const(4096)
UART_RXBUF = const(4096)
WAKE_PIN = const(27)  # STANDBY: an RTC GPIO; pulled low by the host to wake the module
