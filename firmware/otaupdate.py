# An OTA update of the AT firmware from the server named by AT+OTAURL (docs/OTA.md): the
# release's files downloaded to ota/new, hashed as they stream, then switched to with one atomic
# write that boot.py reads (firmware/ota.py: the slots and the confirmation); an optional
# MicroPython image goes to the next app partition. Nothing whole is held: every byte goes
# through one buffer. Loaded by AT+OTACHECK/AT+OTASTART only; when idle() it keeps nothing.
#   <url>manifest.json             the latest release: AT+OTACHECK reports its version
#   <url><version>/manifest.json   {"version", "files": [{"path", "size", "sha256"}...],
#                                   optional "image": {"path", "size", "sha256"}}
#   <url><version>/<path>          each file (.mpy of firmware/ and lib/; the image)
import asyncio
import gc
import hashlib
import json
import os

from micropython import const

from firmware import aio, at, ctx, events, log, ota, settings
from firmware.at import AtError
from firmware.http import Fail, Http

_BUF = const(1024)  # network reads
_BLOCK = const(4096)  # flash sector: image writes
_MANIFEST_MAX = const(16384)
_MARGIN = const(4)  # blocks kept free on the filesystem besides the release
_NEW = "ota/new"  # staging folder
# A full filesystem: littlefs's LFS_ERR_NOSPC, newlib's ENOSPC (28). The ESP32's errno module
# has no ENOSPC name.
_ENOSPC = const(28)
_NO_OTA_PARTITION = "this image has no OTA partition: flash ESP32_GENERIC-OTA"

VERSION_MAX = const(32)  # what AT+FWVER can show
_task = None  # the running update


# A release's version (docs/OTA.md): 1 to 32 letters, digits, ".", "_", "-". It is a folder on
# the server and a word in +OTACHECK's line.
def version_ok(v):
    return 0 < len(v) <= VERSION_MAX and all(c.isalpha() or c.isdigit() or c in "._-" for c in v)


# No update runs: nothing of this module is in use.
def idle():
    return _task is None


# The version of the server's latest release (AT+OTACHECK)
async def latest():
    http = Http(ctx.settings["ota_url"], bytearray(_BUF))
    try:
        return (await _manifest(http, "manifest.json"))["version"]
    except Fail as e:
        raise AtError(at.E_FAIL, "OTA {}: {}".format(e.reason, e.detail))
    finally:
        http.close()


# Update to version in the background: +OTAEVENT:START, then SUCCESS and a restart, or FAIL.
def start(version):
    global _task
    _task = aio.task(_update(version))


async def _manifest(http, path):
    n = await http.get(path)
    if n is not None and n > _MANIFEST_MAX:
        raise Fail("MANIFEST", "too long")
    if n is None:  # chunked: grown as it comes
        data = bytearray()
        await http.body(data.extend, _MANIFEST_MAX)
    else:  # one block of its length (body() ends with exactly n bytes), never two at once
        data = bytearray(n)
        mv = memoryview(data)
        at = 0

        def sink(piece):
            nonlocal at
            mv[at : at + len(piece)] = piece
            at += len(piece)

        await http.body(sink, n)
    try:
        m = json.loads(data)
    except ValueError:
        raise Fail("MANIFEST", "not JSON")
    if not isinstance(m, dict) or not isinstance(m.get("version"), str):
        raise Fail("MANIFEST", "no version")
    if not version_ok(m["version"]):
        raise Fail("MANIFEST", "not a version: 1 to 32 letters, digits, . _ -")
    return m


# A manifest entry -> (path, size, sha256 in hex)
def _entry(e):
    if not isinstance(e, dict):
        raise Fail("MANIFEST", "bad entry")
    p, n, h = e.get("path"), e.get("size"), e.get("sha256")
    if (
        not isinstance(p, str)
        or not isinstance(n, int)
        or not isinstance(h, str)
        or len(h) != 64
        or n < 0
        or p.startswith("/")
        or ".." in p
        or "\\" in p
    ):
        raise Fail("MANIFEST", "bad entry {!r}".format(p))
    return p, n, h


def _check(h, want, name):
    import binascii

    got = binascii.hexlify(h.digest()).decode()
    if got != want.lower():
        raise Fail("HASH", name)


# GET one file of the release, its length checked against the manifest's size
async def _fetch(http, progress, path, size, sink):
    n = await http.get(path)
    if n is not None and n != size:
        raise Fail("SIZE", "{}: {} bytes, manifest says {}".format(path, n, size))

    def count(mv):
        sink(mv)
        progress.add(len(mv))

    n = await http.body(count, size)
    if n != size:
        raise Fail("SIZE", "{}: {} bytes, manifest says {}".format(path, n, size))


# One file of the release into ota/new/<path>, hashed as it streams.
async def _file(http, progress, prefix, path, size, sha):
    dest = _NEW + "/" + path
    settings.mkdirs(dest)
    h = hashlib.sha256()
    with open(dest, "wb") as f:

        def sink(mv):
            h.update(mv)
            f.write(mv)

        await _fetch(http, progress, prefix + path, size, sink)
    _check(h, sha, path)


# The app partition an image goes to. ESP32_GENERIC has one factory app and no other:
# get_next_update() raises OSError(ENOENT) there (ports/esp32/esp32_partition.c).
def _next_app():
    try:
        import esp32

        return esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    except (ImportError, OSError):
        raise Fail("IMAGE", _NO_OTA_PARTITION)


# The MicroPython image into the next app partition, a sector at a time (a network read is
# smaller than a sector, so at most one sector write per read, and a yield after each), then
# read back and hashed again, yielding between sectors.
async def _image(http, progress, part, prefix, path, size, sha):
    if size > part.info()[3] or size == 0:
        raise Fail("IMAGE", "{} bytes do not fit {}".format(size, part.info()[4]))
    block = bytearray(_BLOCK)
    h = hashlib.sha256()
    st = [0, 0]  # bytes in block, next block number

    def sink(mv):
        while mv:
            k = min(len(mv), _BLOCK - st[0])
            block[st[0] : st[0] + k] = mv[:k]
            st[0] += k
            mv = mv[k:]
            if st[0] == _BLOCK:
                h.update(block)
                part.writeblocks(st[1], block)
                st[0] = 0
                st[1] += 1

    await _fetch(http, progress, prefix + path, size, sink)
    if st[0]:
        block[st[0] :] = b"\xff" * (_BLOCK - st[0])
        h.update(memoryview(block)[: st[0]])
        part.writeblocks(st[1], block)
    _check(h, sha, path)
    h = hashlib.sha256()
    left = size
    for b in range((size + _BLOCK - 1) // _BLOCK):
        part.readblocks(b, block)
        h.update(memoryview(block)[: min(left, _BLOCK)])
        left -= _BLOCK
        await asyncio.sleep_ms(0)
    _check(h, sha, path + " (read back)")


# +OTAEVENT:PROGRESS,<percent> for each tenth of the release's bytes downloaded, when the host
# asked for it (AT+OTAPROGRESS=ON; drivers that match +OTAEVENT: see nothing new by default).
class _Progress:
    def __init__(self, total):
        self.total = total or 1
        self.done = 0
        self.shown = 0  # the last percent reported
        self.on = ctx.settings["ota_progress"]

    def add(self, n):
        self.done += n
        step = self.done * 10 // self.total * 10
        while self.on and self.shown < step:
            self.shown += 10
            events.emit("OTAEVENT", "PROGRESS,{}".format(self.shown))


def _free_bytes():
    s = os.statvfs(".")
    return s[0] * s[4]


async def _install(version):
    http = Http(ctx.settings["ota_url"], bytearray(_BUF))
    try:
        prefix = version + "/"
        m = await _manifest(http, prefix + "manifest.json")
        if m["version"] != version:
            raise Fail("MANIFEST", "version {} is not {}".format(m["version"], version))
        files = m.get("files")
        if not isinstance(files, list) or not files:
            raise Fail("MANIFEST", "no files")
        files = [_entry(e) for e in files]
        if not any(p == "firmware/app.mpy" for p, _, _ in files):
            raise Fail("MANIFEST", "no firmware/app.mpy")
        image = _entry(m["image"]) if m.get("image") else None
        m = None  # the parsed manifest's dicts: its entries are all the update needs now
        part = _next_app() if image else None
        slot = ota.free_slot()
        if slot is None:
            raise Fail("STATE", "an update waits for confirmation")
        await _remove(_NEW)  # what a cut-short update left
        await _remove("ota/" + slot)  # an older release nothing points to
        bs = os.statvfs(".")[0]
        need = sum((n + bs - 1) // bs + 1 for _, n, _ in files) + _MARGIN
        if need * bs > _free_bytes():
            raise Fail("NOSPACE", "{} bytes needed, {} free".format(need * bs, _free_bytes()))
        progress = _Progress(sum(n for _, n, _ in files) + (image[1] if image else 0))
        for p, n, h in files:
            await _file(http, progress, prefix, p, n, h)
            gc.collect()
        if image:
            await _image(http, progress, part, prefix, *image)
    finally:
        http.close()
    _switch(version, slot, part)


# The staged tree takes the free slot, then one atomic write arms it (and the image, if any).
def _switch(version, slot, part):
    os.rename(_NEW, "ota/" + slot)
    old = "-"
    new = "-"
    if part is not None:
        import esp32

        old = esp32.Partition(esp32.Partition.RUNNING).info()[4]
        new = part.info()[4]
    settings.write_file(ota.PENDING, "{} 0 {} {}".format(slot, new, old))
    if part is not None:
        try:
            part.set_boot()
        except OSError as e:
            ota.remove(ota.PENDING)
            raise Fail("IMAGE", "set_boot: " + aio.why(e))
    log.info("ota: {} staged in ota/{}, restarting".format(version, slot))


# A folder and all it holds removed, one filesystem call at a time with a yield between:
# littlefs commits each removal to flash, and a release has dozens of files.
async def _remove(top):
    folders = [top]  # found breadth first: each one's subfolders come after it
    for folder in folders:
        try:
            entries = list(os.ilistdir(folder))
        except OSError:  # absent
            return
        for e in entries:
            path = folder + "/" + e[0]
            if e[1] == 0x4000:  # a folder
                folders.append(path)
            else:
                os.remove(path)
                await asyncio.sleep_ms(0)
    for folder in reversed(folders):
        os.rmdir(folder)
        await asyncio.sleep_ms(0)


# The +OTAEVENT:FAIL reason word and AT+ERRNO detail of what stopped an update.
def _failure(e):
    if isinstance(e, Fail):
        return e.reason, e.detail
    if isinstance(e, OSError) and e.args and e.args[0] == _ENOSPC:
        return "NOSPACE", "flash full"
    if isinstance(e, OSError):
        return "FLASH", aio.why(e)
    if isinstance(e, MemoryError):
        return "MEMORY", "out of memory"
    log.exc(e, "ota")
    return "INTERNAL", aio.why(e)


async def _update(version):
    global _task
    try:
        events.emit("OTAEVENT", "START")
        await _install(version)
    except Exception as e:
        # Whatever went wrong, the host hears FAIL and AT+OTASTART works again (once the
        # staging folder is gone: the next update would remove it too). Idle even if this
        # runs out of memory: else the update ran for ever and kept its modules for the boot.
        try:
            reason, detail = _failure(e)
            try:
                await _remove(_NEW)
            except OSError as e2:
                log.info("ota: cannot remove {}: {!r}".format(_NEW, e2))
        finally:
            _task = None
        ctx.serial.last_error = (at.E_FAIL, "OTA {}: {}".format(reason, detail))
        events.emit("OTAEVENT", "FAIL," + reason)
        log.info("ota: {} failed: {} {}".format(version, reason, detail))
        gc.collect()
        return
    events.emit("OTAEVENT", "SUCCESS")
    await ctx.serial.send(lambda: None)  # returns once the line is free: the event is out
    from firmware.commands.system import restart

    restart()
