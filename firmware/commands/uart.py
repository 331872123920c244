# Section 2 of the spec: UART settings, framing of transparent mode, echo.
from firmware import at, ctx
from firmware.commands.system import switch, value

BAUDS = (4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
PARITIES = ("NONE", "ODD", "EVEN")
FLOWS = ("NONE", "CTS", "RTS", "CTSRTS", "RCS")  # the document misspells RTS as RCS


def _uart_query():
    return "+UART:{},{},{},{},{}".format(*ctx.settings["uart"])


# Stored now, applied at the next start (the spec: "Restart takes effect").
def _uart_set(p):
    at.count(p, 5)
    baud = at.integer(p, 0, BAUDS[0], BAUDS[-1])
    if baud not in BAUDS:
        raise at.AtError(at.E_PARAM, "parameter 1: unsupported baud rate")
    bits = at.integer(p, 1, 7, 8)
    stop = at.integer(p, 2, 1, 2)
    parity = at.choice(p, 3, PARITIES)
    flow = at.choice(p, 4, FLOWS)
    if flow == "RCS":
        flow = "RTS"
    ctx.settings.set("uart", [baud, bits, stop, parity, flow])


def _fomat_query():
    return "+UARTFOMAT:{},{}".format(*ctx.settings["uartfomat"])


def _fomat_set(p):
    at.count(p, 2)
    length = at.integer(p, 0, 1, 1024)
    idle_ms = at.integer(p, 1, 50, 500)
    ctx.settings.set("uartfomat", [length, idle_ms])


COMMANDS = {
    "UART": value(_uart_query, _uart_set),
    "UARTFOMAT": value(_fomat_query, _fomat_set),
    "UARTE": switch("echo", "+UARTE:"),
}
