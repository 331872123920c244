# Wait until a stream (socket, UART) can be read or written, as asyncio's own Stream does
# inside; there is no public form. Nothing is read or written, so a wait that is cancelled or
# times out loses no data (unlike wait_for around a read, which can drop what it read).
from asyncio import core


async def readable(s):
    yield core._io_queue.queue_read(s)


async def writable(s):
    yield core._io_queue.queue_write(s)
