# MicroPython VM: in a fragmented heap the stream buffers (firmware/aio.py buffer()) are
# smaller ones and their feature keeps working, and so in a heap where the whole one would
# leave less than its room free; in a full heap the MemoryError reaches the caller (which
# reports it). A link's pull buffer (2 KB, down to 256 bytes) and MQTT's receive
# buffer (4.4 KB, down to 1 KB, made by AT+MQTTSTART). Run with MICROPYPATH=host/board and the
# repo root as argument; prints OK at the end.
import gc
import sys

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import aio, ctx, links, mqtt
from firmware.schema import DEFAULTS

ctx.mqtt_error = ""
ctx.settings = dict(DEFAULTS)  # AT+MQTTSTART reads them (the packet buffer's size, TLS or not)
link = links.Link(0)
session = mqtt.get()
# Made first: lists that grew would leave holes of their own.
blocks = [None] * 1000
held = [None] * 2000


# The heap filled with blocks of 900 bytes, then `freed` of every `period` freed: free runs of
# about 900 bytes (1 of 2) or 1.8 KB (2 of 3).
def fragmented(freed, period):
    empty()
    n = 0
    try:
        while n < 1000:
            blocks[n] = bytearray(900)
            n += 1
    except MemoryError:
        pass
    assert 8 < n < 1000, n
    for i in range(n):
        if i % period < freed:
            blocks[i] = None
    gc.collect()


# Every free block of `size` bytes or more taken, then fn must raise MemoryError.
def refused(size, fn):
    try:
        for i in range(2000):
            held[i] = bytearray(size)
    except MemoryError:
        pass
    try:
        fn()
    except MemoryError:
        return
    raise AssertionError("a buffer in a full heap")


def empty():
    for i in range(1000):
        blocks[i] = None
    for i in range(2000):
        held[i] = None
    gc.collect()


fragmented(1, 2)
buf = link.pull_buffer()
assert 256 <= len(buf) < 2048, len(buf)
refused(200, link.pull_buffer)
buf = None

fragmented(2, 3)
session.start()
assert 1024 <= len(session._rx.space()) < 4096, len(session._rx.space())
session.close()
refused(700, session.start)

empty()
free = gc.mem_free()
assert len(aio.buffer(4096, 1024, free - 4096 + 16)) == 2048  # the whole would leave 16 too few
assert len(aio.buffer(4096, 4096, free)) == 4096  # the least is taken whatever it leaves
print("OK")
