# Wait until a stream (socket, UART) can be read or written, as asyncio's own Stream does
# inside; there is no public form. Nothing is read or written, so a wait that is cancelled or
# times out loses no data (unlike wait_for around a read, which can drop what it read).
# Also: non-blocking socket reads and writes, buffers for them, and task(), the command groups'
# create_task.
import asyncio
import errno
import gc
import socket
import time
from asyncio import core

from micropython import const

# Errors of a non-blocking socket that mean "not now" (118, 119: the ESP32's EHOSTUNREACH-like
# busy codes while lwIP or a TLS handshake is in progress, as mqtt_as found).
BUSY = (errno.EAGAIN, errno.EINPROGRESS, errno.ETIMEDOUT, 118, 119)
_SPIN_MS = const(5)  # poll period while a socket takes nothing


# An exception in words, one line, for a reason the host reads: errno's name for an OSError
# with a number, its text for one with a message (the resolver's "[addrinfo error -2]"), else
# its type and text.
def why(e):
    if isinstance(e, MemoryError):
        return "out of memory"
    if isinstance(e, OSError) and e.args:
        code = e.args[0]
        return errno.errorcode.get(code, str(code)) if isinstance(code, int) else str(code)
    return "{}: {}".format(type(e).__name__, e) if e.args else type(e).__name__


# A bytearray of `size` bytes or, in a heap fragmented past that or too full to keep `room`
# bytes free beside it, the largest half of it found, down to `least` (MemoryError below that):
# a stream's buffer, where a smaller one beats none, and beats a module with no room left for
# the host's commands. gc.mem_free() counts the heap's areas so far: on the chip (which adds
# an area when full, py/gc.c) it can only say too little, never too much. Collect before.
def buffer(size, least, room=0):
    while True:
        last = size >> 1 < least
        if last or not room or gc.mem_free() >= size + room:
            try:
                return bytearray(size)
            except MemoryError:
                if last:
                    raise
        size >>= 1


async def readable(s):
    yield core._io_queue.queue_read(s)


async def writable(s):
    yield core._io_queue.queue_write(s)


# A non-blocking TCP socket listening on host:port; OSError (the socket closed) if it cannot.
def listen(host, port, backlog):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(socket.getaddrinfo(host, port)[0][-1])
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


# The next connection to a listening socket, as a non-blocking socket: (socket, address). A
# connection reset before it was taken (lwIP: ECONNABORTED) is skipped.
async def accept(s):
    while True:
        await readable(s)
        try:
            c, addr = s.accept()
        except OSError as e:
            if e.args[0] not in BUSY and e.args[0] != errno.ECONNABORTED:
                raise
            continue
        c.setblocking(False)
        return c, addr


# Let tasks just cancelled end: until they run once more they hold what they used (a session,
# its buffers, the module of their code, which registry.release() has let go). A cancel that
# asyncio.wait_for passes on to the task it waits for takes a second pass.
async def settle():
    await asyncio.sleep_ms(0)
    await asyncio.sleep_ms(0)


# Write every byte to a non-blocking socket, TLS included (whose writes may need the handshake
# to progress, so polling rather than writable()). OSError(ETIMEDOUT, bytes written) after
# idle_ms without progress, if idle_ms is given.
async def write_all(s, data, idle_ms=0):
    mv = memoryview(data)
    t0 = time.ticks_ms()
    while mv:
        n = _attempt(s.write, mv)
        if n:
            mv = mv[n:]
            t0 = time.ticks_ms()
        elif idle_ms and time.ticks_diff(time.ticks_ms(), t0) > idle_ms:
            raise OSError(errno.ETIMEDOUT, len(data) - len(mv))
        else:
            await asyncio.sleep_ms(_SPIN_MS)


# Read what a non-blocking socket (TLS included) has into buf, waiting until something comes;
# 0 when the peer closed.
async def read_some(s, buf):
    while True:
        n = _attempt(s.readinto, buf)
        if n is not None:
            return n
        await readable(s)


# asyncio.create_task for the coroutines of a command group (registry.py releases groups): the
# Task lets go of its coroutine once that has ended. A finished Task can stay reachable long
# after the firmware dropped it: MicroPython's task queue (py/pairheap.c, v1.24 and since)
# leaves a task's child_last pointing at its last child when that child leaves the queue, until
# the task takes a new child; app's housekeeping, asleep for an hour once SNTP has answered,
# kept a refused MQTT session's task that way. And a Task keeps its coroutine for life
# (extmod/modasyncio.c: coro is read-only), the coroutine its locals (a session, its buffers)
# and its function's globals (the group's module): 39 KB that the release did not free.
def task(coro):
    s = _Shell()
    s.c = coro
    return asyncio.create_task(s)


# The coroutine side of task(). asyncio sends None to resume a task and throws exceptions into
# it (asyncio/core.py), so one method serves as send() and throw(). Once the coroutine has
# ended (returned, raised or was cancelled), it raises StopIteration, as an ended generator does.
class _Shell:
    def send(self, v):
        c = self.c
        if c is None:
            raise StopIteration
        try:
            return c.send(v) if v is None else c.throw(v)
        except BaseException:
            self.c = None
            raise

    throw = send


# op(buf) on a non-blocking stream; None where the stream says "not now".
def _attempt(op, buf):
    try:
        return op(buf)
    except OSError as e:
        if e.args[0] not in BUSY:
            raise
        return None
