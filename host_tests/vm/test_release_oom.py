# MicroPython VM: a MemoryError while firmware/registry.py releases groups (AT+MEMFREE in a
# full heap) removes no module that another still uses, and loses track of none. For amounts
# of free heap from 0 to 2 KB, release() completes or raises MemoryError; either way every
# firmware module that a loaded module refers to is the one in sys.modules, every module the
# groups brought in is still listed, and a release with memory drops them all. Run with
# MICROPYPATH=host/board:.frozen and the repo root as argument; prints OK at the end.
import gc
import sys

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import ota, registry, wifi  # ota, wifi: boot modules (app.py)

registry.load("system")
boot = set(sys.modules)
busy = [False]


# MQTT running while the tcpip group loads: its feature modules stay, and links uses its tls.
# Then MQTT stops: the release drops the mqtt group but must keep tls for links (and hand it
# to the tcpip group), then drops the tcpip group with it.
def setup():
    registry.load("mqtt")
    sys.modules["firmware.mqtt"].idle = lambda: not busy[0]
    busy[0] = True
    registry.load("tcpip")
    busy[0] = False


def check():
    listed = set()
    for names in registry._loaded.values():
        listed.update(names)
    for name, module in sys.modules.items():
        assert name in boot or name in listed, name + " is loaded and in no group"
        if hasattr(module, "__path__"):
            continue
        for value in module.__dict__.values():
            if type(value) is type(sys) and value.__name__.startswith("firmware"):
                assert sys.modules.get(value.__name__) is value, name + " uses a removed module"


fill = [None] * 8000
failed = 0
for room in range(0, 2048, 16):
    setup()
    gc.collect()
    n = 0
    for size in (1024, 16):
        try:
            while n < len(fill):
                fill[n] = bytearray(size)
                n += 1
        except MemoryError:
            pass
    while gc.mem_free() < room and n:
        n -= 1
        fill[n] = None
    try:
        registry.release()
    except MemoryError:
        failed += 1
    for i in range(n):
        fill[i] = None
    check()
    registry.release()
    assert set(sys.modules) == boot, sorted(set(sys.modules) - boot)
assert failed, "no release met a MemoryError: the test filled too little"
print(failed, "releases met a MemoryError")
print("OK")
