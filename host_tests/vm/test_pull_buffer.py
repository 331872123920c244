# MicroPython VM: in a heap with no free block of 2048 bytes, a link's pull buffer
# (firmware/links.py) is a smaller one and the link keeps working; with no block of 256 the
# MemoryError reaches the link (which reports it). Run with MICROPYPATH=host/board:.frozen and
# the repo root as argument; prints OK at the end.
import gc
import sys

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import links

link = links.Link(0)
gc.collect()
blocks = [None] * 1000
small = [None] * 2000
n = 0
try:  # the heap filled with blocks of 900 bytes; what is left free is smaller
    while n < 1000:
        blocks[n] = bytearray(900)
        n += 1
except MemoryError:
    pass
assert 4 < n < 1000, n
for i in range(0, n, 2):  # every other one freed: free runs of less than 2048 bytes
    blocks[i] = None
gc.collect()
buf = link._pull_buffer()
assert 256 <= len(buf) < 2048, len(buf)

try:  # every free block of 256 bytes or more taken
    for i in range(2000):
        small[i] = bytearray(200)
except MemoryError:
    pass
try:
    link._pull_buffer()
    raise AssertionError("a pull buffer in a full heap")
except MemoryError:
    pass
print("OK")
