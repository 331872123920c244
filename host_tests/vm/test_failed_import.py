# MicroPython VM: a module whose import fails (out of memory halfway) is taken out of sys.modules
# but stays in the slot of the dict's table (py/builtinimport.c), holding what it made;
# registry.imported makes the table again, so that memory comes back. Run with
# MICROPYPATH=host/board:.frozen and the repo root as argument; prints OK at the end.
import gc
import os
import sys
import time

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import registry

HERE = "/tmp/emw-failed-import-{}".format(time.time_ns())
os.mkdir(HERE)
sys.path.insert(0, HERE)
for name in ("plain", "through_registry"):
    with open("{}/{}.py".format(HERE, name), "w") as f:
        f.write(
            "_HELD = bytearray(20000)\n\n\ndef held():\n    return _HELD\n\n\nraise MemoryError\n"
        )


def free():
    gc.collect()
    return gc.mem_free()


def fails(load, name):
    try:
        load(name)
    except MemoryError:
        return
    raise AssertionError(name + " imported")


modules = dict(sys.modules)
before = free()
fails(__import__, "plain")
kept = before - free()
assert "plain" not in sys.modules
assert (
    kept > 20000
), "MicroPython now frees a failed import ({} kept): _forget_failed can go".format(kept)

before = free()
fails(registry.imported, "through_registry")
assert "through_registry" not in sys.modules
assert before - free() < 1000, before - free()
assert sys.modules == modules  # every loaded module is still there, the same object

for name in ("plain", "through_registry"):
    os.remove("{}/{}.py".format(HERE, name))
os.rmdir(HERE)
print("OK")
