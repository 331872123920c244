# Board start-up, before main.py: choose the firmware tree and put it first on sys.path.
#
# An OTA update (firmware/otaupdate.py, docs/OTA.md) stages a release in the slot ota/a or
# ota/b of the flash filesystem and switches to it with one atomic file write. Files:
#   ota/current  "<slot>": the confirmed tree; absent: the factory tree (/firmware, /lib)
#   ota/pending  "<slot> <tried> <new app> <old app>": a switched, unconfirmed update; tried
#                is 0 until this file boots it once, then 1; the app partitions are "-" when
#                the release has no MicroPython image.
# The running firmware confirms the update once it has answered AT (firmware/ota.py): current
# becomes the slot, pending goes. A pending update found tried at boot did not confirm itself:
# the previous version runs again. Every step is one atomic write or remove, so a power cut at
# any point leaves one complete version to boot.
import gc
import os
import sys


def _read(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return None


def _write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _complete(slot):
    try:
        os.stat("ota/{}/firmware/app.mpy".format(slot))
        return slot in ("a", "b")
    except OSError:
        return False


def _tree():
    cur = _read("ota/current")
    cur = cur[0] if cur and _complete(cur[0]) else None
    pend = _read("ota/pending")
    if not pend or len(pend) != 4:
        return cur
    slot, tried, new, old = pend
    running = "-"
    if new != "-":
        import esp32

        running = esp32.Partition(esp32.Partition.RUNNING).info()[4]
    if tried == "0" and _complete(slot):
        if new != running:
            # Switched, but the power went before the image was selected: finish the switch.
            try:
                esp32.Partition(new).set_boot()
            except OSError:
                _remove("ota/pending")
                return cur
            import machine

            machine.reset()
        _write("ota/pending", "{} 1 {} {}".format(slot, new, old))
        print("boot: trying update in ota/{}".format(slot))
        return slot
    if cur == slot:  # confirmed; only removing this file was cut short
        _remove("ota/pending")
        return cur
    print("boot: update in ota/{} did not confirm itself: previous version".format(slot))
    if new != "-" and running == new:  # its image was confirmed: start the old one again
        esp32.Partition(old).set_boot()
        _remove("ota/pending")
        import machine

        machine.reset()
    _remove("ota/pending")
    return cur


try:
    _slot = _tree()
except Exception as e:  # never keep the module from starting: the factory tree
    print("boot: OTA state unreadable, factory firmware:", repr(e))
    _slot = None
if _slot:
    _base = os.getcwd().rstrip("/") + "/ota/" + _slot
    sys.path.insert(0, _base + "/lib")
    sys.path.insert(0, _base)
gc.collect()
