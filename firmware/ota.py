# OTA state on the flash filesystem (the files boot.py reads, described there) and the
# confirmation of a new version once it answers AT. The download and the switch are in
# firmware/otaupdate.py, which loads only when AT+OTACHECK or AT+OTASTART is used.
import asyncio
import os

from firmware import ctx, log, settings

CURRENT = "ota/current"
PENDING = "ota/pending"
SLOTS = ("a", "b")


def read(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return None


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


# The slot an update may be staged in: neither the confirmed tree nor a pending one.
def free_slot():
    used = [(read(CURRENT) or ("",))[0], (read(PENDING) or ("",))[0]]
    for s in SLOTS:
        if s not in used:
            return s
    return None


_confirming = None  # the task of start()


# At start-up (app.py): confirm this version once it has answered a command with OK.
def start():
    global _confirming
    _confirming = asyncio.create_task(_confirm_when_answered())


async def _confirm_when_answered():
    await ctx.serial.replied.wait()
    confirm()


# This version works: keep it (the tree, then the MicroPython image) over reboots. Calling
# mark_app_valid_cancel_rollback() on every boot is fine (MicroPython's esp32 docs). The image
# goes first: a power cut in between makes boot.py restore the old image with the old tree.
def confirm():
    try:
        import esp32

        esp32.Partition.mark_app_valid_cancel_rollback()
    except (ImportError, OSError) as e:  # no rollback support in this image
        log.info("ota: mark_app_valid_cancel_rollback: {!r}".format(e))
    pend = read(PENDING)
    if pend and len(pend) == 4 and pend[1] == "1":
        settings.write_file(CURRENT, pend[0])
        remove(PENDING)
        log.info("ota: update in ota/{} confirmed".format(pend[0]))
