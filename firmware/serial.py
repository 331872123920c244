# The AT engine: reads the UART, frames command lines and data phases, dispatches commands,
# and writes every byte that goes out (the one writer: no other code calls uart.write).
#
# Event order (README, "event order"): no event byte goes out between the first byte of a
# command line and that command's final result, nor between a ">" and the end of its data
# phase, nor in transparent mode. Events posted as `caused` by the command being answered are
# part of its response, written just before its final result. Others wait until the line is
# free: no response open, no partial line (bounded: _PARTIAL_MS of silence after its last
# byte frees the line), no unread input.
import asyncio
import gc

# asyncio's frozen funcs module loads on first use (asyncio/__init__.py): here, with the engine,
# not at a timed read in a heap that another feature has filled.
from asyncio import wait_for_ms

from micropython import const

from firmware import at, log
from firmware.aio import readable, settle, why
from firmware.at import AtError

LINE_MAX = const(1024)  # longest command line; a longer one is answered ERROR
DATA_MAX = const(4096)  # longest buffered data phase (CIPSEND, MQTTSEND...)
LENGTH_MAX = const(0x3FFFFFFF)  # a longer <len> is refused at once; up to it, read and refused
_CHUNK = const(512)  # UART read size
_DATA_IDLE_MS = const(5000)  # a data phase that receives nothing this long fails
_STARVED_MS = const(10)  # out of memory for even a read's wait: poll the UART this often
_PARTIAL_MS = const(1000)  # a partial line holds events this long after its last byte
_TOO_LONG = const(1)  # why a line is spoiled
_NO_MEMORY = const(2)
_HELD_MAX = const(16)  # text events waiting for the line; beyond, the oldest is dropped
_BS = const(0x08)
_DEL = const(0x7F)

_OK = b"\r\nOK\r\n"
_CR = b"\r"
_LF = b"\n"
_ERROR = b"\r\nERROR\r\n"
_CRLF = b"\r\n"
_RUBOUT = b"\x08 \x08"
_OOM = (at.E_INTERNAL, "out of memory")


# What a handler returns to take the bytes that follow its line: exactly `length` bytes, or,
# with `end`, every byte up to that one (not included). The engine writes the prompt and
# collects the data (DATA_MAX at most), then calls done(data) with a memoryview valid only
# during the call; done returns the response like a handler (it may be a coroutine).
# Streaming form, for data larger than RAM allows: with `sink` (an object with write(mv) and
# abort()), each piece goes to sink.write as it arrives and done(None) ends the phase;
# abort() is called instead when the phase fails. A phase that fails part-way (too long, a
# sink error) is still read up to its end and answered once. So is a command refused before
# its data (`error`, no done): drivers write the data with the command, without waiting for
# ">" (wire notes), and data is never run as commands.
class DataPhase:
    def __init__(self, length, done, end=None, sink=None, error=None):
        self.length = length
        self.done = done
        self.end = end
        self.sink = sink
        self.error = error  # what failed the phase (it is still read to its end)


# A response line too long to hold whole (AT+SSLCERTGET of a 16 KB chain): its head, then its
# pieces as they come (an iterable of bytes).
class Line:
    def __init__(self, head, pieces):
        self.head = head
        self.pieces = pieces


class Serial:
    def __init__(self, uart, table, settings):
        self._uart = uart
        self._table = table  # name -> (test, query, set, exec) handlers
        self._settings = settings
        self._rx = bytearray(_CHUNK)
        self._at = 0  # _rx[_at:_n] is read and not taken yet: kept across a MemoryError
        self._n = 0
        self._starving = False  # the last pass of the reader ran out of memory
        self._line = memoryview(bytearray(LINE_MAX))
        self._len = 0  # bytes of the current line in _line
        self._spoiled = None  # why the current line fails (too long, no memory for it): it is
        # discarded up to its end, then answered ERROR with that reason
        self._typing = False  # bytes of an incomplete line came in the last _PARTIAL_MS
        self._lf_echoed = False  # the LF after the last line's CR was echoed with it
        self._data = memoryview(bytearray(DATA_MAX))
        self._phase = None  # the DataPhase being received, or None in command mode
        self._got = 0  # bytes of the data phase received so far
        self._open = False  # a response is open
        self._doing = ""  # what is being done, for error reasons; None: the command in _line
        self._cmd = 0  # length of that command in _line
        self._held = []  # text events waiting for the line to be free
        self._caused = []  # text events the open command caused: before its result
        self._free = asyncio.Event()  # set while the line is free for events
        self._task = None  # the engine's own task
        self._after = None  # called once the current response is out (reboot)
        self.replied = asyncio.Event()  # set by the first OK: this firmware works (OTA)
        self.last_error = (0, "")
        self.sink = None  # transparent mode: where UART frames go (an object with write/close)
        self._quiet = False  # transparent mode: the line was idle before the current frame

    # Read and act on the UART forever. A MemoryError never ends it, and loses no input: what
    # was read and not taken stays in _rx[_at:_n] for the next pass. Taking a command line or
    # data allocates nothing until the command runs (a line the heap has no room for is
    # answered ERROR); only the wait for input and transparent mode's frames need memory.
    async def run(self):
        self._task = asyncio.current_task()
        mv = memoryview(self._rx)
        while True:
            try:
                if self._at == self._n:
                    self._at = self._n = 0
                    self._n = self._uart.readinto(self._rx) or await self._read()
                while self._at < self._n:
                    if self.sink is not None:
                        await self._take_frame(mv)
                        continue
                    if self._phase is None:
                        work = self._take_line(mv)
                    else:
                        work = self._take_data(mv)
                    if work is not None:  # a coroutine handler's
                        try:
                            self._settle(await work)
                        except Exception as e:
                            self._fail(e)
                self._starving = False
            except MemoryError:
                self._starved()
                await asyncio.sleep_ms(_STARVED_MS)

    # A MemoryError out of the reading itself (the engine's own buffers are all made above):
    # logged once per spell. A command whose own ERROR ran out ends with a bare one, rather
    # than leave the host waiting; a data phase keeps its failure and answers once at its end.
    def _starved(self):
        if not self._starving:
            self._starving = True
            self.out_of_memory("reading the UART")
        if self._open and self._phase is None:
            self._uart.write(_ERROR)
            self._end()

    # Wait for bytes, then read them into _rx. A data phase gives up after _DATA_IDLE_MS of
    # silence; transparent mode cuts a frame after the AT+UARTFOMAT idle time; a partial line
    # frees the line for events after _PARTIAL_MS. Only the wait is timed, never the read.
    async def _read(self):
        self._release()
        if self.sink is not None:
            timeout = self._settings["uartfomat"][1]
        elif self._phase is not None:
            timeout = _DATA_IDLE_MS
        elif self._typing:
            timeout = _PARTIAL_MS
        else:
            timeout = 0
        try:
            if timeout:
                await wait_for_ms(readable(self._uart), timeout)
            else:
                await readable(self._uart)
        except asyncio.TimeoutError:
            if self.sink is not None:
                await self._frame_idle()
            elif self._phase is not None:
                self._data_timeout()
            else:
                self._typing = False  # the line stays, but no longer holds events
            return 0
        return self._uart.readinto(self._rx) or 0

    # Command mode: add _rx[_at:_n] to the line up to its terminator (\r or \n); echo what is
    # taken as it arrives; Backspace and DEL delete the last character. At the terminator the
    # command runs: returns a coroutine handler's coroutine for the reader to await, else None.
    def _take_line(self, mv):
        rx = self._rx
        i = self._at
        n = self._n
        lf_echoed = self._lf_echoed and i < n and rx[i] == 10
        self._lf_echoed = False
        end = rx.find(_CR, i, n)
        lf = rx.find(_LF, i, n)
        if end < 0 or 0 <= lf < end:
            end = lf
        text_end = n if end < 0 else end
        echo = self._settings["echo"]
        while i < text_end:  # once per Backspace, not per byte
            bs = rx.find(b"\x08", i, text_end)
            de = rx.find(b"\x7f", i, text_end)
            if bs < 0 or 0 <= de < bs:
                bs = de
            k = text_end if bs < 0 else bs
            self._add(mv, i, k, echo)
            if bs >= 0:
                if self._len and self._spoiled is None:
                    self._len -= 1
                    if echo:
                        self._uart.write(_RUBOUT)
                k = bs + 1
            i = self._at = k
        if end < 0:
            return None
        self._at = end + 1
        # A CR LF that came together is the command's: both echo before its response (wire
        # notes); the LF, an empty line next, is not echoed again.
        if echo and rx[end] == 13 and end + 1 < n and rx[end + 1] == 10:
            self._uart.write(_CRLF)
            self._lf_echoed = True
        elif echo and not lf_echoed:
            self._uart.write(_CR if rx[end] == 13 else _LF)
        length = self._len
        self._len = 0
        self._typing = False
        spoiled = self._spoiled
        if spoiled is not None:
            self._spoiled = None
            self._begin("reading a command line")
            if spoiled == _NO_MEMORY:
                self._error(self.out_of_memory(self._doing))
            else:
                self._fail(AtError(at.E_SYNTAX, "line longer than {}".format(LINE_MAX)))
        elif length:  # empty lines are ignored
            self._cmd = length
            self._begin(None)  # answered from here on, even if copying the line runs out
            return self._dispatch()
        return None

    # Text of the line (no terminator, no Backspace) into _line, echoed. Taken even when the
    # heap has no room for the one view it makes: the line then fails at its end.
    def _add(self, mv, i, j, echo):
        k = j - i
        if not k:
            return
        self._free.clear()
        self._typing = True
        try:
            piece = mv[i:j]
        except MemoryError:
            self._spoiled = _NO_MEMORY
            return
        if echo:
            self._uart.write(piece)
        if self._len + k > LINE_MAX:
            self._spoiled = _TOO_LONG
        elif self._spoiled is None:
            self._line[self._len : self._len + k] = piece
            self._len += k

    # Run the command in _line[:_cmd]: None once answered (or its data phase begun), or a
    # coroutine handler's coroutine, whose result goes to _settle.
    def _dispatch(self):
        try:
            name, op, params = at.parse(bytes(self._line[: self._cmd]))
            try:
                row = self._table.get(name)
            except MemoryError:
                return self._retry(name, op, params)
            res = self._call(row, name, op, params)
            if hasattr(res, "send"):
                return res
            self._settle(res)
        except Exception as e:
            self._fail(e)
        return None

    # The command's group met a full heap as it loaded. Tasks just cancelled (AT+MQTTCLOSE,
    # AT+CIPSTOP) hold their session until they run once more (seen in the in-turn soak:
    # AT+SNTPCFG right after AT+MQTTCLOSE, out of memory with 7 KB held): they run, then the
    # group loads again. A second MemoryError is the command's.
    async def _retry(self, name, op, params):
        await settle()
        res = self._call(self._table.get(name), name, op, params)
        return (await res) if hasattr(res, "send") else res

    def _call(self, row, name, op, params):
        if row is None:
            raise AtError(at.E_UNKNOWN, "unknown command " + name)
        handler = row[op]
        if handler is None:
            raise AtError(at.E_OP, "AT+{} has no such form".format(name))
        return handler(params) if op == at.SET else handler()

    # A handler's result: a data phase begins, or the response ends. A data phase longer than
    # the engine takes is read to its end all the same, then refused.
    def _settle(self, res):
        if isinstance(res, DataPhase):
            if res.end is None and res.sink is None and res.length > DATA_MAX:
                res.error = res.error or AtError(
                    at.E_PARAM, "data length must be 1..{}".format(DATA_MAX)
                )
            self._phase = res
            self._lf_echoed = False  # a LF after the CR is data
            self._got = 0
            self._uart.write(b">")  # the response stays open until the data is in
        else:
            self._finish(res)

    # Data phase: take _rx[_at:_n]. At its end returns what _take_line does (a sink's done is
    # never a coroutine).
    def _take_data(self, mv):
        ph = self._phase
        i = self._at
        n = self._n
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
        if ph.error is None and k:
            try:
                if ph.sink is not None:
                    ph.sink.write(mv[i : i + k])
                elif got + k > DATA_MAX:
                    raise AtError(at.E_PARAM, "data longer than {}".format(DATA_MAX))
                else:
                    self._data[got : got + k] = mv[i : i + k]
            except Exception as e:  # read on to the end of the data, then answer once
                ph.error = e
        self._got = got + k
        self._at = stop
        if not done:
            return None
        self._phase = None
        try:
            if ph.error is not None:
                raise ph.error
            res = ph.done(None if ph.sink is not None else self._data[: self._got])
            if hasattr(res, "send"):
                return res
            self._settle(res)
        except Exception as e:
            if ph.sink is not None:
                ph.sink.abort()
            self._fail(e)
        return None

    # Transparent mode: frames of AT+UARTFOMAT length go to the sink as they fill up.
    # Frames of 3 bytes or fewer would send a "+++" before the silence after it could make it
    # the escape: after a silence, "+" bytes (3 at most) wait until that is known (another
    # byte, or the silence).
    async def _take_frame(self, mv):
        length = self._settings["uartfomat"][0]
        hold = self._quiet and length <= 3
        i = self._at
        got = self._got
        k = min(self._n - i, (3 if hold else length) - got)
        if k == 0:  # a held "+++", and more came: data after all
            await self._send_frames(length)
            return
        self._data[got : got + k] = mv[i : i + k]
        got += k
        self._got = got
        self._at = i + k
        d = self._data
        if hold and d[0] == 43 and (got < 2 or d[1] == 43) and (got < 3 or d[2] == 43):
            return  # what came after the silence may still be the escape
        if hold or got == length:
            await self._send_frames(length)

    # The whole frames of what was taken; the rest stays as the frame being filled.
    async def _send_frames(self, length):
        got = self._got
        self._quiet = False
        j = 0
        while got - j >= length:
            await self.sink.write(self._data[j : j + length])
            j += length
        self._data[: got - j] = self._data[j:got]  # fewer than length bytes, from past them
        self._got = got - j

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
        self._free.clear()  # events wait (and, beyond _HELD_MAX, are dropped) meanwhile

    def _data_timeout(self):
        ph = self._phase
        self._phase = None
        if ph.sink is not None:
            ph.sink.abort()
        want = "terminator" if ph.end is not None else "{} bytes".format(ph.length)
        self._fail(AtError(at.E_TIMEOUT, "data phase: got {}, wanted {}".format(self._got, want)))

    def _begin(self, doing):
        self._open = True
        self._doing = doing
        self._free.clear()

    # Free the line for events when nothing holds it (called when no input waits to be read:
    # it could be the next command of a pipelining host): the held ones first, then the rest.
    def _release(self):
        if self._open or self._typing or self.sink is not None or self._phase is not None:
            return
        held = self._held
        while held:
            self._write_event(held.pop(0))
        self._free.set()

    # Write a handler's response (None, one line, a list of lines, or a Line) and OK. The writer
    # paths allocate nothing (host_tests/vm/test_engine_heap.py runs them under heap_lock).
    def _finish(self, res):
        self._write_caused()
        u = self._uart
        if isinstance(res, str) or isinstance(res, bytes):
            u.write(_CRLF)
            u.write(res)
            u.write(_CRLF)
        elif isinstance(res, Line):
            u.write(_CRLF)
            u.write(res.head)
            for piece in res.pieces:
                u.write(piece)
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
            err = self.out_of_memory(self._doing)  # None: the command
        else:
            log.exc(e, self._what())
            err = (at.E_INTERNAL, why(e))
        self._error(err)

    # Answer ERROR for the reason err, (code, text): AT+ERRNO's.
    def _error(self, err):
        self.last_error = err
        self._write_caused()
        u = self._uart
        if self._settings["verbose_errors"]:
            u.write(_CRLF)
            u.write(error_line(err))
            u.write(_CRLF)
        u.write(_ERROR)
        self._end()

    def _write_caused(self):
        caused = self._caused
        while caused:
            self._write_event(caused.pop(0))

    # What is being done: "AT+CIPSTART" for a command (its name, made only when needed).
    def _what(self):
        if self._doing is not None:
            return self._doing
        line = bytes(self._line[: self._cmd])
        for c in b"=?":
            i = line.find(bytes((c,)))
            if i > 0:
                line = line[:i]
        return line.decode()

    def _end(self):
        self._open = False
        if self._after is not None:
            after = self._after
            self._after = None
            after()

    # A MemoryError (in a task, the reader, or a command when doing is None): logged, and
    # AT+ERRNO tells it. Returns the error. Never raises: with no room even for the words, the
    # reason is _OOM.
    def out_of_memory(self, doing):
        gc.collect()
        try:
            if doing is None:
                doing = self._what()
            log.warn("out of memory while {} ({} bytes free)".format(doing, gc.mem_free()))
            err = (at.E_INTERNAL, "out of memory while " + doing)
        except MemoryError:
            err = _OOM
        self.last_error = err
        return err

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

    # Post a text event ("+WEVENT:STATION_UP"): it goes out now if the line is free, else as
    # soon as it is free. `caused`: the command being answered caused it and its driver must
    # not meet it after the final result (a UDP link bound by AT+CIPSTART: the host sends
    # AT+CIPSEND next and takes the first byte for ">"): it goes out before the final result.
    # Outcomes a driver waits for after OK (PUBLISH,SUCCESS...) are not `caused`.
    def event(self, text, caused=False):
        if self._free.is_set():
            self._write_event(text)
            return
        mine = caused and self._open and asyncio.current_task() is self._task
        queue = self._caused if mine else self._held
        if len(queue) >= _HELD_MAX:
            log.warn("event dropped while the line was busy: {}".format(queue.pop(0)))
        queue.append(text)

    def _write_event(self, text):
        u = self._uart
        u.write(_CRLF)
        u.write(text)
        u.write(_CRLF)

    # The one way to write an event whose data is read at the last moment (received
    # socket, MQTT and BT data): wait until the line is free (at once in transparent mode
    # for `source`, the transparent sink that produces the data), then call produce(), which
    # returns None (nothing to write) or (header, data). The engine writes
    # "\r\n<header><data>\r\n", or data alone when header is None or in transparent mode, with
    # no await between produce() and the write. Returns what produce() returned.
    async def send(self, produce, source=None):
        while not (source is not None and self.sink is source):
            if self._free.is_set():
                break
            await self._free.wait()
        item = produce()
        if item is not None:
            self._write_data(item, source)
        return item

    def _write_data(self, item, source):
        head, data = item
        u = self._uart
        if head is None or (source is not None and self.sink is source):
            u.write(data)
        else:
            u.write(_CRLF)
            u.write(head)
            u.write(data)
            u.write(_CRLF)


def error_line(err):
    return "+ERRNO:{},{}".format(err[0], err[1])
