# MicroPython VM: in a heap with no free block of MQTT's 4.4 KB receive buffer, AT+MQTTSTART
# (firmware/mqtt.py) takes a smaller one and the session starts; with no block of 1 KB the
# MemoryError reaches the command (ERROR, "out of memory"). Run with MICROPYPATH=host/board and
# the repo root as argument; prints OK at the end.
import gc
import sys

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import ctx, mqtt

ctx.mqtt_error = ""
session = mqtt.get()
gc.collect()
blocks = [None] * 1000
small = [None] * 4000
n = 0
try:  # the heap filled with blocks of 900 bytes
    while n < 1000:
        blocks[n] = bytearray(900)
        n += 1
except MemoryError:
    pass
assert 8 < n < 1000, n
for i in range(n):  # three of every four freed: free runs of about 2.7 KB
    if i % 4:
        blocks[i] = None
session.start()
assert 1024 <= len(session._rx.space()) < 4096, len(session._rx.space())
session.close()

try:  # every free block of 1 KB or more taken
    for i in range(4000):
        small[i] = bytearray(700)
except MemoryError:
    pass
try:
    session.start()
    raise AssertionError("a receive buffer in a full heap")
except MemoryError:
    pass
print("OK")
