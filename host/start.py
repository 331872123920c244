# start.py: the PC's ROM bootloader and _boot.py for the virtual module (MicroPython).
#
# Run by host/launcher.py as `micropython -X heapsize=... host/start.py` with EMW_* variables
# set. It puts host/board first on the module path (machine, network, esp32... stand-ins), mounts
# the flash image STATE/flash.img at /flash, makes it the current directory as on the board, then
# runs boot.py and main.py (from the flash image if it holds them, else from EMW_ROOT) like the
# board's firmware does.

import gc
import os
import sys
import vfs

# Not const(): host_tests/flashfs.py imports these to open the image while the module is down.
_FLASH_SIZE = 2 * 1024 * 1024
_BLOCK = 4096
_FILLERS = 1024  # blocks that fill what the stand-ins leave beside the firmware's heap
_POLL_FDS = 64  # descriptors asyncio's poller holds room for: far more than the firmware opens


# A block device over a file. Every write is flushed to the OS at once, so killing the process
# loses nothing the firmware had written: a power cut behaves as on a board's flash.
class FileBlockDev:
    def __init__(self, path, size):
        try:
            self.f = open(path, "r+b")
        except OSError:
            self.f = open(path, "w+b")
            blank = b"\xff" * _BLOCK
            for _ in range(size // _BLOCK):
                self.f.write(blank)
            self.f.flush()
        self.blocks = size // _BLOCK

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * _BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=0):
        self.f.seek(n * _BLOCK + off)
        self.f.write(buf)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:  # MP_BLOCKDEV_IOCTL_BLOCK_COUNT
            return self.blocks
        if op == 5:  # MP_BLOCKDEV_IOCTL_BLOCK_SIZE
            return _BLOCK
        if op == 6:  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE: a file needs none
            return 0
        return 0  # INIT, DEINIT, SYNC


# Run a script if it exists; False if it does not.
def _run(path):
    try:
        f = open(path)
    except OSError:
        return False
    code = compile(f.read(), path, "exec")
    f.close()
    exec(code, {"__name__": "__main__", "__file__": path})
    return True


# On the board, machine, network, esp32 are C modules and the ROM bootloader and _boot.py are
# in flash: none of them costs heap, and the firmware starts with the whole GC heap free, in
# one piece, but for the filesystem mount. Here they are Python, so the launcher gives the VM a
# larger heap; this imports every stand-in and builds the state the chip keeps in static C
# memory (the WLAN interface objects, the radio's view of the world), then takes back all the
# rest: what is free after it is EMW_HEAP bytes in one piece, as on a board whose heap is
# EMW_HEAP (the holes the stand-ins' imports left are filled, or the firmware's first big
# block, such as the interned-name pool's, would find less room than on the chip).
# start.py's own code and data are part of the stand-ins' share, not of the firmware's.
def _ballast(board):
    heap = int(os.getenv("EMW_HEAP") or 0)
    if not heap:
        return None
    for name, kind, *_ in os.ilistdir(board):
        if kind == 0x4000:  # a package: import it and its modules
            for sub, _k, *_ in os.ilistdir(board + "/" + name):
                if sub.endswith(".py") and sub != "__init__.py":
                    _load(name + "." + sub[:-3])
        elif name.endswith(".py"):
            _load(name[:-3])
    network = sys.modules["network"]
    network._w()
    network.WLAN(network.STA_IF)  # static wlan_sta_obj / wlan_ap_obj in network_wlan.c
    network.WLAN(network.AP_IF)
    gc.collect()
    fill = [None] * _FILLERS
    try:
        budget = bytearray(heap)  # the firmware's, held while everything else is filled
    except MemoryError:  # the model would be wrong: the firmware would get more than EMW_HEAP
        raise SystemExit("start: the stand-ins left less than EMW_HEAP in one piece")
    n = 0
    for items in (512, 32, 1):  # tuples of 4 KB, 272 B, 24 B: one allocation each
        while n < _FILLERS:
            try:
                fill[n] = (None,) * items
            except MemoryError:
                break
            n += 1
    budget = None  # noqa: F841 - given back: the firmware's heap
    factor = float(os.getenv("EMW_HEAP_FACTOR") or 1)  # VM bytes per chip byte (launcher)
    fill.append(bytearray(int(_CHIP_NAME_POOLS * factor)))
    return fill


# The interned-name pools (py/qstr.c qstr_add: each new pool twice the last one's entries).
# On the chip the stand-ins' names are in ROM, and the firmware's ~950 others fill pools of
# 20 to 640 entries: 8.8 KB on 32 bits (7 bytes an entry), the largest block 4.5 KB. Here the
# stand-ins' 672 names would come first, and the firmware's would then need a pool of 1,280
# entries, one 14 KB block, that a fragmented heap may not have: every import with a new name
# would fail, where the chip needs 4.5 KB at most. So before anything else, names that are no
# identifiers fill the pools until one of 2,560 entries is made, at the bottom of the heap, in
# the stand-ins' share: it holds the stand-ins' names and the firmware's. The firmware's budget
# pays the chip's 8.8 KB from boot instead, scaled as the rest of the heap.
_CHIP_NAME_POOLS = 8800


def _grow_name_pool():
    for i in range(8192):
        if not i % 32:
            gc.collect()  # else the lookups' garbage scatters the names' text over the heap
        before = gc.mem_alloc()
        getattr(None, "\x01pool{}".format(i), None)  # interned by the lookup
        if gc.mem_alloc() - before > 20000:  # 2,560 entries: 28 KB on the 64-bit VM
            return
    raise SystemExit("start: the interned-name pool did not grow")


# The unix port's select.poll keeps the objects that have a file descriptor in an array of
# struct pollfd (MICROPY_PY_SELECT_POSIX_OPTIMISATIONS), grown 4 at a time. When a growth moves
# the array, extmod/modselect.c poll_set_add_fd() re-points every registered object into the
# new one, also those without a descriptor, whose pointer is NULL: it becomes a wild one, and
# the next ipoll() reads through it (SIGSEGV in poll_iternext). asyncio's poller mixes both
# kinds (a ThreadSafeFlag, as firmware/bt.py waits on, beside the sockets), so a link opened
# while the Bluetooth stand-in runs could kill the VM. The ESP32 port has no such array (the
# optimisation is the unix port's), so this is the PC's alone: the array is made here, at its
# full size and before anything else is registered, and never grows again.
def _presize_poller():
    from asyncio import core

    p = core._io_queue.poller
    for fd in range(_POLL_FDS):
        p.register(fd, 0)  # a number is taken as a descriptor, not checked until polled
    for fd in range(_POLL_FDS):
        p.unregister(fd)  # the slot is freed (fd -1), the array kept


def _load(name):
    try:
        __import__(name)
    except Exception as e:
        print("start: cannot import", name, repr(e))


def main():
    _grow_name_pool()
    here = __file__.rpartition("/")[0] or "."
    if not here.startswith("/"):
        here = os.getcwd() + "/" + here
    root = os.getenv("EMW_ROOT") or here.rpartition("/")[0]
    state = os.getenv("EMW_STATE") or "build/state"
    if not state.startswith("/"):
        state = os.getcwd() + "/" + state
    # Stand-ins first, so they shadow (or extend) the unix port's built-ins and frozen modules.
    # Each folder's .mpy copy (EMW_MPY, compiled by the launcher) comes before its source.
    # A module's path is an interned name, kept for the boot (py/builtinimport.c: __file__):
    # on the board the factory tree is "firmware/...", relative to the flash's root. The
    # firmware's tree is mounted at /fw, so that its names cost what the board's do (4 bytes
    # more each), wherever the repository is (a checkout's path added ~30 bytes a module).
    mpy = os.getenv("EMW_MPY")
    vfs.mount(vfs.VfsPosix(mpy + "/root" if mpy else root), "/fw")
    path = [here + "/board", "/fw", "/fw/lib"]
    if mpy:
        path = [mpy + "/board", path[0], "/fw", root, "/fw/lib", root + "/lib"]
    path.append(".frozen")
    sys.path[:] = path
    # The ESP32's errno (newlib values); the unix port's built-in cannot be shadowed by a file.
    sys.modules["errno"] = __import__("esp32_errno")
    _presize_poller()  # before the ballast: the array is the stand-ins' share of the heap
    ballast = _ballast(here + "/board")  # noqa: F841 - held for the life of the firmware

    bdev = FileBlockDev(state + "/flash.img", _FLASH_SIZE)
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        print("start: formatting flash")
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    vfs.mount(fs, "/flash")
    os.chdir("/flash")

    # The bootloader picks the app partition (OTA rollback, see board/esp32.py). Then, as on
    # the board, boot.py and main.py from the flash filesystem, or the repository's when the
    # image has none (the usual case): boot.py puts the firmware tree an OTA installed first on
    # sys.path; without one, the repository's compiled tree runs (the factory version).
    import esp32

    esp32._bootloader()
    _run("boot.py") or _run(root + "/boot.py")
    _run("main.py") or _run(root + "/main.py")


if __name__ == "__main__":
    main()
