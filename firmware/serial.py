# The AT engine: reads the UART, frames command lines and data phases, dispatches commands,
# and writes every byte that goes out (the one writer: no other code calls uart.write).
import asyncio
import gc

from micropython import const

from firmware import at, log
from firmware.aio import readable
from firmware.at import AtError

LINE_MAX = const(1024)  # longest command line; a longer one is answered ERROR
DATA_MAX = const(4096)  # longest data phase (CIPSEND, MQTTSEND, a certificate)
_CHUNK = const(512)  # UART read size
_DATA_IDLE_MS = const(5000)  # a data phase that receives nothing this long fails
_HELD_MAX = const(16)  # events held while a response is open; the oldest is dropped

_OK = b"\r\nOK\r\n"
_ERROR = b"\r\nERROR\r\n"
_CRLF = b"\r\n"


# What a handler returns to take the bytes that follow its line: exactly `length` bytes, or,
# with `end`, every byte up to that one (not included; DATA_MAX at most). The engine writes
# the prompt, collects the data, then calls done(data) with a memoryview that is valid only
# during the call; done returns the response like a handler (it may be a coroutine).
class DataPhase:
    def __init__(self, length, done, end=None):
        self.length = length
        self.done = done
        self.end = end


class Serial:
    def __init__(self, uart, table, settings):
        self._uart = uart
        self._table = table  # name -> (test, query, set, exec) handlers
        self._settings = settings
        self._rx = bytearray(_CHUNK)
        self._rxmv = memoryview(self._rx)
        self._line = memoryview(bytearray(LINE_MAX))
        self._len = 0  # bytes of the current line in _line
        self._overflow = False  # the current line is too long: discard it up to its end
        self._data = memoryview(bytearray(DATA_MAX))
        self._phase = None  # the DataPhase being received, or None in command mode
        self._got = 0  # bytes of the data phase received so far
        self._open = False  # a response is open: events wait in _held
        self._held = []
        self._idle = asyncio.Event()  # set while no response is open
        self._idle.set()
        self._after = None  # called once the current response is out (reboot)
        self.replied = asyncio.Event()  # set by the first OK: this firmware works (OTA)
        self.last_error = (0, "")
        self.sink = None  # transparent mode: where UART frames go (an object with write/close)
        self._quiet = False  # transparent mode: the line was idle before the current frame

    # Read and act on the UART forever.
    async def run(self):
        mv = self._rxmv
        while True:
            n = await self._read()
            i = 0
            while i < n:
                if self.sink is not None:
                    i = await self._take_frame(mv, i, n)
                elif self._phase is None:
                    i = await self._take_line(mv, i, n)
                else:
                    i = await self._take_data(mv, i, n)

    # Bytes into _rx. A data phase gives up after _DATA_IDLE_MS of silence; transparent mode
    # cuts a frame after the AT+UARTFOMAT idle time. Only the wait is timed, never the read.
    async def _read(self):
        if self.sink is not None:
            timeout = self._settings["uartfomat"][1]
        elif self._phase is not None:
            timeout = _DATA_IDLE_MS
        else:
            timeout = 0
        try:
            if timeout:
                await asyncio.wait_for_ms(readable(self._uart), timeout)
            else:
                await readable(self._uart)
        except asyncio.TimeoutError:
            if self.sink is not None:
                await self._frame_idle()
            else:
                self._data_timeout()
            return 0
        return self._uart.readinto(self._rx) or 0

    # Command mode: add rx[i:n] to the line up to its terminator (\r or \n); echo what is
    # taken as it arrives. Returns the index after what was taken.
    async def _take_line(self, mv, i, n):
        rx = self._rx
        end = rx.find(b"\r", i, n)
        lf = rx.find(b"\n", i, n)
        if end < 0 or 0 <= lf < end:
            end = lf
        stop = n if end < 0 else end + 1
        if self._settings["echo"]:
            self._uart.write(mv[i:stop])
        k = (n if end < 0 else end) - i
        if k:
            if self._len + k > LINE_MAX:
                self._overflow = True
            elif not self._overflow:
                self._line[self._len : self._len + k] = mv[i : i + k]
                self._len += k
        if end >= 0:
            length = self._len
            self._len = 0
            if self._overflow:
                self._overflow = False
                self._begin()
                self._fail(AtError(at.E_SYNTAX, "line longer than {}".format(LINE_MAX)))
            elif length:  # empty lines are ignored
                await self._dispatch(bytes(self._line[:length]))
        return stop

    async def _dispatch(self, line):
        self._begin()
        try:
            name, op, params = at.parse(line)
            row = self._table.get(name)
            if row is None:
                raise AtError(at.E_UNKNOWN, "unknown command " + name)
            handler = row[op]
            if handler is None:
                raise AtError(at.E_OP, "AT+{} has no such form".format(name))
            res = handler(params) if op == at.SET else handler()
            if hasattr(res, "send"):  # a coroutine handler
                res = await res
            if isinstance(res, DataPhase):
                if res.end is None and not 0 < res.length <= DATA_MAX:
                    raise AtError(at.E_PARAM, "data length must be 1..{}".format(DATA_MAX))
                self._phase = res
                self._got = 0
                self._uart.write(b">")
                return  # the response stays open until the data is in
            self._finish(res)
        except Exception as e:
            self._fail(e)

    # Data phase: take rx[i:n] into the data buffer. Returns the index after what was taken.
    async def _take_data(self, mv, i, n):
        ph = self._phase
        got = self._got
        if ph.end is None:
            k = min(n - i, ph.length - got)
            stop = i + k
            done = got + k == ph.length
        else:
            j = self._rx.find(ph.end, i, n)
            done = j >= 0
            k = (j if done else n) - i
            stop = j + 1 if done else n
            if got + k > DATA_MAX:
                self._phase = None
                self._fail(AtError(at.E_PARAM, "data longer than {}".format(DATA_MAX)))
                return stop
        self._data[got : got + k] = mv[i : i + k]
        self._got = got + k
        if done:
            self._phase = None
            try:
                res = ph.done(self._data[: self._got])
                if hasattr(res, "send"):
                    res = await res
                self._finish(res)
            except Exception as e:
                self._fail(e)
        return stop

    # Transparent mode: frames of AT+UARTFOMAT length go to the sink as they fill up.
    async def _take_frame(self, mv, i, n):
        length = self._settings["uartfomat"][0]
        got = self._got
        k = min(n - i, length - got)
        self._data[got : got + k] = mv[i : i + k]
        self._got = got + k
        if self._got == length:
            self._got = 0
            self._quiet = False
            await self.sink.write(self._data[:length])
        return i + k

    # The line went idle: send the partial frame, unless it is "+++" alone between two
    # silences, which leaves transparent mode.
    async def _frame_idle(self):
        got = self._got
        self._got = 0
        if got == 3 and self._quiet and bytes(self._data[:3]) == b"+++":
            sink = self.sink
            self.sink = None
            sink.close()
            self._uart.write(_OK)
            self._end()
        elif got:
            await self.sink.write(self._data[:got])
        self._quiet = True

    # Enter transparent mode (AT+CIPSENDRAW, AT+BTSENDRAW) once the OK is out: the caller
    # passes this as after_reply's function.
    def enter_transparent(self, sink):
        self.sink = sink
        self._got = 0
        self._quiet = True
        self._open = True  # events wait (and, beyond _HELD_MAX, are dropped) meanwhile
        self._idle.clear()

    # Bytes from the transparent link to the host, as they are.
    def raw(self, data):
        self._uart.write(data)

    def _data_timeout(self):
        ph = self._phase
        self._phase = None
        want = "terminator" if ph.end is not None else "{} bytes".format(ph.length)
        self._fail(AtError(at.E_TIMEOUT, "data phase: got {}, wanted {}".format(self._got, want)))

    def _begin(self):
        self._open = True
        self._idle.clear()

    # Write a handler's response (None, one line, or a list of lines) and OK. The writer
    # paths allocate nothing (host_tests/vm/test_engine_heap.py runs them under heap_lock).
    def _finish(self, res):
        u = self._uart
        if isinstance(res, str) or isinstance(res, bytes):
            u.write(_CRLF)
            u.write(res)
            u.write(_CRLF)
        elif res is not None:
            for line in res:
                u.write(_CRLF)
                u.write(line)
            u.write(_CRLF)
        u.write(_OK)
        self.replied.set()
        self._end()

    def _fail(self, e):
        if isinstance(e, AtError):
            err = (e.code, e.detail)
        elif isinstance(e, MemoryError):
            gc.collect()
            err = (at.E_INTERNAL, "out of memory")
        else:
            log.exc(e, "handler")
            err = (at.E_INTERNAL, repr(e))
        self.last_error = err
        u = self._uart
        if self._settings["verbose_errors"]:
            u.write(_CRLF)
            u.write(error_line(err))
            u.write(_CRLF)
        u.write(_ERROR)
        self._end()

    def _end(self):
        self._open = False
        held = self._held
        while held:
            self._write_event(held.pop(0))
        self._idle.set()
        if self._after is not None:
            after = self._after
            self._after = None
            after()

    # Call fn once the current response has gone out (AT+REBOOT, AT+FACTORY, AT+STANDBY).
    def after_reply(self, fn):
        self._after = fn

    # Wait until the UART has sent what was written (before a reset). A host holding CTS makes
    # UART.flush() raise OSError(ETIMEDOUT): the caller goes on all the same.
    def flush(self):
        try:
            self._uart.flush()
        except OSError as e:
            log.info("uart: flush: {!r}".format(e))

    # Send an event line ("+WEVENT:STATION_UP"), now if no response is open, else right after
    # the final result of the open one.
    def event(self, text):
        if not self._open:
            self._write_event(text)
            return
        if len(self._held) >= _HELD_MAX:
            log.warn("event dropped while a response was open: {}".format(self._held.pop(0)))
        self._held.append(text)

    def _write_event(self, text):
        u = self._uart
        u.write(_CRLF)
        u.write(text)
        u.write(_CRLF)

    # Wait until no response is open, for writers of large events (received data), which
    # must not be held in memory: call push() right after, without awaiting in between.
    async def until_idle(self):
        while self._open:
            await self._idle.wait()

    # An event with a binary payload: header, then the data as is, then \r\n.
    def push(self, header, data):
        u = self._uart
        u.write(_CRLF)
        u.write(header)
        u.write(data)
        u.write(_CRLF)


def error_line(err):
    return "+ERRNO:{},{}".format(err[0], err[1])
