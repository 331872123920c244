# MicroPython VM: firmware/registry.py releases the command module of a group whose feature
# runs (its feature modules and their state stay; the group's next command imports it again),
# and the whole group once the feature is idle. Run with MICROPYPATH=host/board:.frozen and
# the repo root as argument; prints OK at the end.
import asyncio
import gc
import sys

sys.path.insert(0, sys.argv[1])  # the repo root
from firmware import ctx, ota, registry, wifi  # ota, wifi: boot modules (app.py)

CMDS = "firmware.commands.mqtt"


def free():
    gc.collect()
    return gc.mem_free()


async def pause():
    await asyncio.sleep_ms(1)


# MQTT waiting to auto-start (AT+MQTTAUTOSTART=ON, no Wi-Fi yet): its task is state that runs.
ctx.settings = {"mqtt_autostart": True}
registry.load("mqtt")
assert "system" in registry._loaded  # loaded first, as its own group
mqtt = sys.modules["firmware.mqtt"]
mqtt.start()
task = mqtt._auto
assert not registry.idle("mqtt")
sys.modules[CMDS].copy = 1  # marks this copy of the command module

# AT+MEMFREE (or another group's load): the command module goes, rows and all; nothing kept
# it alive, so its memory comes back (7.6 KB on the 64-bit VM).
before = free()
registry.release()
freed = free() - before
assert CMDS not in sys.modules
assert sys.modules["firmware.mqtt"] is mqtt and mqtt._auto is task
assert "firmware.mqtt" in registry._loaded["mqtt"] and CMDS not in registry._loaded["mqtt"]
assert freed > 4000, freed

# The group's next command imports a fresh copy; the feature module is not imported again.
before = free()
assert registry.get("MQTTCLOSE") is sys.modules[CMDS].COMMANDS["MQTTCLOSE"]
assert not hasattr(sys.modules[CMDS], "copy")
assert sys.modules["firmware.mqtt"] is mqtt and mqtt._auto is task
assert CMDS in registry._loaded["mqtt"]
assert before - free() < freed + 512  # one copy again, no second one

# Another group loads: the same.
registry.load("sntp")
assert CMDS not in sys.modules and "firmware.mqtt" in sys.modules


# A heap the feature has filled: its command module cannot load again. Its stop command and
# publishing are then the feature module's own handlers (set forms; AT+MQTTPUB? needs the
# module); another command of the group, or one of a group whose feature is not loaded,
# answers out of memory.
def full(group, name):
    raise MemoryError


use, registry.use = registry.use, full
assert registry.get("MQTTCLOSE") == (None, None, None, mqtt.at_mqttclose)
assert registry.get("MQTTPUB") == (None, None, mqtt.at_mqttpub, None)
assert registry.get("MQTTSEND") == (None, None, mqtt.at_mqttsend, None)
for command in ("MQTTSUB", "CIPSTOP"):
    try:
        registry.get(command)
        raise AssertionError(command + ": a row without its module")
    except MemoryError:
        pass
registry.use = use

# The feature stops: the whole group goes, its feature modules too; system never.
task.cancel()
asyncio.run(pause())  # the task takes its cancellation
assert registry.idle("mqtt")
mqtt = task = None
registry.release()
assert "mqtt" not in registry._loaded and "sntp" not in registry._loaded
for name in ("firmware.mqtt", "firmware.mqttpkt", "firmware.sntp", "firmware.commands.sntp"):
    assert name not in sys.modules, name
assert "firmware.commands.system" in sys.modules and registry.get("FWVER") is not None

# Every group with a feature: while it runs (idle() made False here), only its command module
# goes, the memory comes back, and its next command imports it again. In a heap too full for
# that, its stop command is the feature module's handler (set and bare forms only).
STOPS = {"tcpip": ("CIPSTOP", "at_cipstop", (0, 0, 1, 0)), "bt": ("BTDISCOVERY", "at_btdiscovery",
         (0, 0, 1, 0)), "provision": ("SMARTSTOP", "at_smartstop", (0, 0, 1, 1))}  # fmt: skip
for group, command in (("tcpip", "CIPSTART"), ("bt", "BTSTATE"), ("provision", "SMARTSTART"),
                       ("ota", "OTASTART")):  # fmt: skip
    registry.load(group)
    if group in ("ota", "tcpip"):  # as AT+OTASTART, AT+CIPSTART do
        registry.use(group, registry._IDLE[group])
    owner = sys.modules[registry._IDLE[group]]
    owner.idle = lambda: False
    before = free()
    registry.release()
    freed = free() - before
    name = "firmware.commands." + group
    assert name not in sys.modules, group
    assert sys.modules[registry._IDLE[group]] is owner, group
    assert freed > 1500, (group, freed)
    if group in STOPS:
        command_name, handler, forms = STOPS[group]
        fn = getattr(owner, handler)
        use, registry.use = registry.use, full
        assert registry.get(command_name) == tuple(fn if f else None for f in forms), group
        registry.use = use
        fn = None
    registry.get(command)
    assert name in sys.modules and name in registry._loaded[group], group
    owner.idle = lambda: True
    owner = None
    registry.release()
    assert group not in registry._loaded and registry._IDLE[group] not in sys.modules, group

# A module two groups share, and what it refers to: TLS, loaded by a TLS link (so counted as
# the TCP/IP group's), then used by MQTT. The links stop: tls stays while MQTT refers to it,
# and so does a module only tls refers to (dropped, it would come back as a second copy beside
# the one tls uses, with state of its own); they go with MQTT. The certificates' module is no
# such module: tls borrows it while it makes a context, and gives it back.
registry.load("tcpip")
links = registry.use("tcpip", "firmware.links")
links.tls = registry.use("tcpip", "firmware.tls")
tls = sys.modules["firmware.tls"]
tls.only_mine = registry.use("tcpip", "firmware.httpmsg")  # stands for a module tls keeps
assert tls.context(False) is tls.context(False)  # made once, shared
assert "firmware.certs" not in sys.modules
links.idle = lambda: False  # the link runs while MQTT loads
registry.load("mqtt")
mqtt = sys.modules["firmware.mqtt"]
mqtt.tls = registry.use("mqtt", "firmware.tls")
assert "firmware.tls" not in registry._loaded["mqtt"]  # loaded already: the links' group's
mine = tls.only_mine
mqtt.idle = lambda: False
links.idle = lambda: True
links = None
registry.release()
assert "tcpip" not in registry._loaded and "firmware.links" not in sys.modules
assert sys.modules["firmware.tls"] is tls and sys.modules["firmware.httpmsg"] is mine
assert "firmware.tls" in registry._loaded["mqtt"]
assert "firmware.httpmsg" in registry._loaded["mqtt"]
mqtt.idle = lambda: True
mqtt = tls = mine = None
registry.release()
for name in ("firmware.mqtt", "firmware.tls", "firmware.httpmsg"):
    assert name not in sys.modules, name
print("OK")
