# Log lines for the developer console (the REPL UART on a board, console.log on the PC);
# never the AT UART.
import sys
import time


def _line(level, msg):
    print("[{:>10}] {} {}".format(time.ticks_ms(), level, msg))


def info(msg):
    _line("INFO", msg)


def warn(msg):
    _line("WARN", msg)


def exc(e, where):
    _line("ERROR", "in " + where)
    sys.print_exception(e)
