# Heap each part of the firmware takes once imported, on the MicroPython VM that runs this
# (calibrate.py runs it on a 32-bit and on the 64-bit VM and prepends TREE = "<folder>").
# Prints one "<part> <bytes>" line per part, cumulative in the order the parts load.
import gc
import sys

sys.path[:] = [TREE + "/stubs", TREE, TREE + "/lib", ".frozen"]  # noqa: F821 - set by calibrate.py

# What the board has in C or frozen (no heap for its code): loaded before measuring.
for name in (
    "asyncio",
    "socket",
    "ssl",
    "select",
    "machine",
    "network",
    "bluetooth",
    "esp32",
    "umqtt.simple",
    "json",
    "errno",
    "time",
    "os",
    "binascii",
    "hashlib",
    "struct",
):
    __import__(name)


def used():
    gc.collect()
    gc.collect()
    return gc.mem_alloc()


before = used()
__import__("firmware.app")  # what every boot loads
from firmware import registry  # noqa: E402

print("boot", used() - before)
for group in registry.GROUPS:
    last = used()
    __import__("firmware.commands." + group)
    print(group, used() - last)
