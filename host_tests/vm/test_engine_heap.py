# MicroPython VM: the engine's output paths allocate nothing (run under heap_lock), so a
# response, an event, data events (send) and transparent-mode bytes cost no heap however many.
import asyncio
import io
import sys

import micropython

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import serial

# The engine's timed reads need asyncio.funcs (frozen, loaded on first use): it comes with the
# engine, so a partial line in a full heap does not have to import it.
assert "asyncio.funcs" in sys.modules


class Uart(io.IOBase):
    def __init__(self):
        self.out = bytearray(4096)
        self.n = 0

    def write(self, b):
        k = len(b)
        self.out[self.n : self.n + k] = b  # the test's own copy: not the engine's
        self.n += k
        return k


class Settings:
    def __getitem__(self, key):
        return False


uart = Uart()
eng = serial.Serial(uart, {}, Settings())
line = b"+FWVER:esp32_AT_v2.0.0"
payload = memoryview(bytearray(b"x" * 1024))
item = (b"+CIPEVENT:SOCKET,0,1024,", payload)
lines = (line,)


def produce():
    return item


eng._free.set()
framed = eng.send(produce)
raw = eng.send(produce, uart)
eng.sink = uart  # transparent mode for the source `uart`
coros = (framed, raw)

micropython.heap_lock()
try:
    eng._begin("test")
    eng._finish(lines)
    eng._write_event(b"+WEVENT:STATION_UP")
    eng._free.set()  # as _release() does when the line is free
    for coro in coros:
        try:
            coro.send(None)
        except StopIteration:
            pass
finally:
    micropython.heap_unlock()

out = bytes(uart.out[: uart.n])
assert out.startswith(b"\r\n+FWVER:esp32_AT_v2.0.0\r\n\r\nOK\r\n\r\n+WEVENT:STATION_UP\r\n"), out
assert out.endswith(b"x" * 1024 + b"\r\n" + b"x" * 1024)


# What the reader does with bytes it has read: takes them from _rx[_at:_n] (a line runs its
# command; a sync handler is answered before this returns).
def take(data):
    eng._rx[: len(data)] = data
    eng._at = 0
    eng._n = len(data)
    return eng._take_line(rx_view)


# A MemoryError in a handler: ERROR, and AT+ERRNO's reason names the command (no restart).
def starved(params):
    raise MemoryError


def fwver():
    return b"+FWVER:1"


uart.n = 0
eng = serial.Serial(
    uart, {"CIPSTART": (None, None, starved, None), "FWVER": (None, fwver, None, None)}, Settings()
)
rx_view = memoryview(eng._rx)  # the reader's, made once
assert take(b"AT+CIPSTART=0,udp_unicast,1.2.3.4,5\r") is None
assert bytes(uart.out[: uart.n]) == b"\r\nERROR\r\n", bytes(uart.out[: uart.n])
assert eng.last_error == (10, "out of memory while AT+CIPSTART"), eng.last_error
eng.out_of_memory("reading the UART")
assert eng.last_error[1] == "out of memory while reading the UART"

# With no room even for the words: the reason without them, and no MemoryError out of it (the
# asyncio exception handler calls it; a raise there would restart the module).
micropython.heap_lock()
try:
    eng.out_of_memory("running a background task")
finally:
    micropython.heap_unlock()
assert eng.last_error == (10, "out of memory"), eng.last_error


# take(data) in a heap with no room for anything: answered ERROR, the reason without words.
def take_starved(data):
    uart.n = 0
    micropython.heap_lock()
    try:
        take(data)
    finally:
        micropython.heap_unlock()
    assert bytes(uart.out[: uart.n]) == b"\r\nERROR\r\n", bytes(uart.out[: uart.n])
    assert eng.last_error == (10, "out of memory"), eng.last_error


# A line completed (its terminator read) in a heap with no room even to copy it: still
# answered, ERROR.
eng._line[:2] = b"AT"
eng._len = 2
take_starved(b"\r")

# Pipelined lines read into a heap with no room for anything: each is answered, the first
# ERROR (no room to take it), and the next, once there is room, runs. Nothing read is lost,
# nothing runs twice. (It was: a reader that ran out of memory read the UART afresh and
# dropped the rest of what it had read, and the host waited for ever for its answer.)
take_starved(b"AT+FWVER?\rAT+FWVER?\r")
assert eng._at == 10, eng._at
eng._take_line(rx_view)
assert eng._at == eng._n
assert bytes(uart.out[: uart.n]) == b"\r\nERROR\r\n\r\n+FWVER:1\r\n\r\nOK\r\n", bytes(
    uart.out[: uart.n]
)


# A group that meets a full heap as it loads: the engine lets tasks just cancelled run once
# (they hold their session until then: AT+MQTTCLOSE), then loads it again. A table whose
# group has room once a cancelled task has ended.
class Table:
    def __init__(self):
        self.room = False

    def get(self, name):
        if not self.room:
            raise MemoryError
        return {"FWVER": (None, fwver, None, None)}.get(name)


async def cancelled(table):
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        table.room = True


async def retried():
    table = Table()
    eng._table = table
    task = asyncio.create_task(cancelled(table))
    await asyncio.sleep_ms(0)
    task.cancel()
    uart.n = 0
    work = take(b"AT+FWVER?\r")
    eng._settle(await work)
    assert bytes(uart.out[: uart.n]) == b"\r\n+FWVER:1\r\n\r\nOK\r\n", bytes(uart.out[: uart.n])
    # Still no room once they ran: out of memory, the command's.
    table.room = False
    uart.n = 0
    try:
        eng._settle(await take(b"AT+FWVER?\r"))
    except MemoryError as e:
        eng._fail(e)
    assert bytes(uart.out[: uart.n]) == b"\r\nERROR\r\n", bytes(uart.out[: uart.n])
    assert eng.last_error == (10, "out of memory while AT+FWVER"), eng.last_error


asyncio.run(retried())
print("OK")
