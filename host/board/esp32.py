# esp32.py: the esp32 module on the PC (MicroPython, unix port).
#
# wake_on_ext0/ext1 record the wake pin (the launcher's "wake" control op pulls it); NVS keeps
# its namespaces in STATE/nvs.json; Partition models the partition table of the flashed image,
# the otadata that selects the app to boot, and the bootloader's app rollback.

import json
import os

WAKEUP_ALL_LOW = const(0)
WAKEUP_ANY_HIGH = const(1)
HEAP_DATA = const(4)
HEAP_EXEC = const(1)

_wake = {}  # "ext0": (pin, level), "ext1": (pins, level)


def wake_on_ext0(pin, level):
    _wake["ext0"] = (pin, level)


def wake_on_ext1(pins, level):
    _wake["ext1"] = (pins, level)


def wake_on_touch(wake):
    pass


def wake_on_ulp(wake):
    pass


def gpio_deep_sleep_hold(enable):
    pass


def raw_temperature():
    return 120  # degrees Fahrenheit, what an idle ESP32 often reports


def idf_heap_info(capabilities):
    return []


# ESP-IDF error codes, raised as OSError(-code, name) as check_esp_err() does on the board.
_ERR_NOT_FOUND = const(0x1102)
_ERR_INVALID_LENGTH = const(0x110C)


def _nvs_path():
    d = os.getenv("EMW_STATE")
    return d + "/nvs.json" if d else "/tmp/emw-nvs.json"


# NVS: key/value pairs per namespace. set_* changes are kept in RAM until commit() writes
# the file (write to a temporary file, then rename: a power cut keeps the old or the new).
class NVS:
    def __init__(self, namespace):
        self._ns = namespace
        try:
            with open(_nvs_path()) as f:
                self._all = json.load(f)
        except (OSError, ValueError):
            self._all = {}
        self._kv = self._all.get(namespace, {})  # key -> int, or hex string for a blob

    def set_i32(self, key, value):
        self._kv[key] = int(value)

    def get_i32(self, key):
        v = self._kv.get(key)
        if not isinstance(v, int):
            raise OSError(-_ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        return v

    def set_blob(self, key, value):
        self._kv[key] = bytes(value).hex()

    def get_blob(self, key, buffer):
        v = self._kv.get(key)
        if not isinstance(v, str):
            raise OSError(-_ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        data = bytes.fromhex(v)
        if len(data) > len(buffer):
            raise OSError(-_ERR_INVALID_LENGTH, "ESP_ERR_NVS_INVALID_LENGTH")
        buffer[: len(data)] = data
        return len(data)

    def erase_key(self, key):
        if key not in self._kv:
            raise OSError(-_ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        del self._kv[key]

    def commit(self):
        # Re-read so namespaces committed by other NVS objects are kept.
        try:
            with open(_nvs_path()) as f:
                self._all = json.load(f)
        except (OSError, ValueError):
            self._all = {}
        self._all[self._ns] = self._kv
        path = _nvs_path()
        with open(path + ".tmp", "w") as f:
            json.dump(self._all, f)
        os.rename(path + ".tmp", path)


# ----- Partitions, OTA and app rollback
#
# The partition table of the image the launcher says was flashed ($EMW_IMAGE, `--image`):
# ESP32_GENERIC (ports/esp32/partitions-4MiB.csv at v1.24.0, named by boards/sdkconfig.base)
# has one factory app and no otadata; ESP32_GENERIC-OTA (boards/ESP32_GENERIC/sdkconfig.ota:
# partitions-4MiB-ota.csv) has ota_0/ota_1. Each partition's bytes live in
# STATE/part-<label>.bin (created on first write; what lies beyond the file reads as erased
# flash, 0xFF), except vfs, which is the flash image start.py mounts. The first app holds the
# image esptool flashed at the factory: it reads as a valid app image.
#
# STATE/otadata.json stands for the otadata partition (OTA image only): the app the bootloader
# starts and each app's state, as ESP-IDF keeps them with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE
# (boards/sdkconfig.base):
#   set_boot()                         -> that app is NEW and selected
#   boot of a NEW app (_bootloader())  -> PENDING_VERIFY, it runs
#   mark_app_valid_cancel_rollback()   -> the running PENDING_VERIFY app is VALID
#   boot of a PENDING_VERIFY app       -> ABORTED; the other app that is VALID (or UNDEFINED:
#                                          flashed by esptool) is selected and runs
# The file is replaced atomically (two otadata sectors with sequence numbers on the chip).

_GENERIC = (
    # type, subtype, address, size, label
    (1, 0x02, 0x9000, 0x6000, "nvs"),
    (1, 0x01, 0xF000, 0x1000, "phy_init"),
    (0, 0x00, 0x10000, 0x1F0000, "factory"),
    (1, 0x81, 0x200000, 0x200000, "vfs"),
)
_OTA = (
    (1, 0x02, 0x9000, 0x4000, "nvs"),
    (1, 0x00, 0xD000, 0x2000, "otadata"),
    (1, 0x01, 0xF000, 0x1000, "phy_init"),
    (0, 0x10, 0x10000, 0x180000, "ota_0"),
    (0, 0x11, 0x190000, 0x180000, "ota_1"),
    (1, 0x81, 0x310000, 0x0F0000, "vfs"),
)
_HAS_OTA = os.getenv("EMW_IMAGE") == "generic-ota"
_PARTS = _OTA if _HAS_OTA else _GENERIC
_APPS = ("ota_0", "ota_1") if _HAS_OTA else ()
_FACTORY_APP = _PARTS[3 if _HAS_OTA else 2][4]  # what esptool flashed
_SECTOR = const(4096)
_IMAGE_MAGIC = const(0xE9)  # first byte of an ESP app image (esp_image_header_t.magic)
_ENOENT = const(2)  # MP_ENOENT: esp32_partition_new() of a partition that is not there
_ERR_INVALID_SIZE = const(0x104)
_ERR_NO_PARTITION = const(0x105)  # ESP_ERR_NOT_FOUND
_ERR_INVALID_ARG = const(0x102)
_ERR_OTA_VALIDATE_FAILED = const(0x1503)
_VALID = ("VALID", "UNDEFINED")

_running = None  # label of the app this process runs (the bootloader's choice at start)


def _state_path(name):
    d = os.getenv("EMW_STATE")
    return d + "/" + name if d else "/tmp/emw-" + name


def _otadata():
    if not _HAS_OTA:
        return {"boot": _FACTORY_APP, "state": {}}  # no otadata partition: the factory app
    try:
        with open(_state_path("otadata.json")) as f:
            d = json.load(f)
        if isinstance(d, dict) and d.get("boot") in _APPS:
            return d
    except (OSError, ValueError):
        pass
    return {"boot": "ota_0", "state": {"ota_0": "UNDEFINED"}}  # as esptool leaves it


def _save_otadata(d):
    path = _state_path("otadata.json")
    with open(path + ".tmp", "w") as f:
        json.dump(d, f)
    os.rename(path + ".tmp", path)


def _err(code, name):
    raise OSError(-code, name)


# The second-stage bootloader: choose the app to run at power-on or reset. host/start.py calls
# it once per boot, before boot.py.
def _bootloader():
    global _running
    d = _otadata()
    sel = d["boot"]
    st = d["state"]
    s = st.get(sel, "UNDEFINED")
    if s == "NEW":
        st[sel] = "PENDING_VERIFY"
        _save_otadata(d)
    elif s not in _VALID:
        if s == "PENDING_VERIFY":  # it ran once and never confirmed itself: roll back
            st[sel] = "ABORTED"
        for other in _APPS:
            if (
                other != sel
                and st.get(other, "INVALID" if other != "ota_0" else "UNDEFINED") in _VALID
            ):
                print("bootloader: {} {}, rolling back to {}".format(sel, s, other))
                d["boot"] = sel = other
                break
        _save_otadata(d)
    _running = sel
    return sel


def _running_label():
    global _running
    if _running is None:
        _running = _otadata()["boot"]  # no bootloader ran (a VM unit test): what it would pick
    return _running


# ports/esp32/esp32_partition.c (v1.24.0)
class Partition:
    BOOT = const(0)
    RUNNING = const(1)
    TYPE_APP = const(0)
    TYPE_DATA = const(1)

    def __init__(self, id, block_size=4096):
        if id == Partition.BOOT:
            id = _otadata()["boot"]
        elif id == Partition.RUNNING:
            id = _running_label()
        elif not isinstance(id, str):
            raise ValueError
        for p in _PARTS:
            if p[4] == id:
                self._p = p
                break
        else:
            raise OSError(_ENOENT)
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError("invalid block size")
        self._bs = block_size

    @staticmethod
    def find(type=TYPE_APP, subtype=0xFF, label=None, block_size=4096):
        return [
            Partition(p[4], block_size)
            for p in _PARTS
            if p[0] == type and subtype in (0xFF, p[1]) and (label is None or p[4] == label)
        ]

    def info(self):
        t, st, addr, size, label = self._p
        return (t, st, addr, size, label, False)

    def __repr__(self):
        return (
            "<Partition type={}, subtype={}, address={}, size={}, label={}, encrypted=0>".format(
                *self._p
            )
        )

    # ----- the bytes

    def _file(self):
        if self._p[4] == "vfs":
            return _state_path("flash.img")
        return _state_path("part-" + self._p[4] + ".bin")

    def _read(self, addr, buf):
        n = len(buf)
        for i in range(n):
            buf[i] = 0xFF
        if self._p[4] == _FACTORY_APP and addr == 0 and n:
            buf[0] = _IMAGE_MAGIC  # the factory image flashed by esptool
        try:
            f = open(self._file(), "rb")
        except OSError:
            return
        with f:
            f.seek(addr)
            data = f.read(n)
        buf[: len(data)] = data

    def _write(self, addr, data):
        path = self._file()
        try:
            f = open(path, "r+b")
        except OSError:
            f = open(path, "w+b")
        with f:
            end = f.seek(0, 2)
            if end < addr:
                f.write(b"\xff" * (addr - end))
            f.seek(addr)
            f.write(data)

    def _check(self, addr, n):
        if addr < 0 or addr + n > self._p[3]:
            _err(_ERR_INVALID_SIZE, "ESP_ERR_INVALID_SIZE")

    def _erase(self, addr, n):
        if addr % _SECTOR or n % _SECTOR:
            _err(_ERR_INVALID_SIZE, "ESP_ERR_INVALID_SIZE")
        self._check(addr, n)
        if self._p[4] == _FACTORY_APP and addr == 0 and n:
            self._write(0, b"\xff")  # the factory image is gone once its first sector is
        self._write(addr, b"\xff" * n)

    def readblocks(self, block_num, buf, offset=0):
        addr = block_num * self._bs + offset
        self._check(addr, len(buf))
        self._read(addr, buf)

    # Without offset, the blocks are erased first; with it, the bytes are programmed as they
    # are, and flash can only clear bits (new = old AND data), as esp_partition_write does.
    def writeblocks(self, block_num, buf, offset=None):
        addr = block_num * self._bs + (offset or 0)
        n = len(buf)
        self._check(addr, n)
        if offset is None:
            self._erase(addr, n)
            self._write(addr, buf)
            return
        old = bytearray(n)
        self._read(addr, old)
        for i in range(n):
            old[i] &= buf[i]
        self._write(addr, old)

    def ioctl(self, op, arg):
        if op == 4:  # MP_BLOCKDEV_IOCTL_BLOCK_COUNT
            return self._p[3] // self._bs
        if op == 5:  # MP_BLOCKDEV_IOCTL_BLOCK_SIZE
            return self._bs
        if op == 6:  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE
            self._erase(arg * self._bs, self._bs)
            return 0
        return 0  # INIT, DEINIT, SYNC

    # ----- OTA

    # The app partition after this one (esp_ota_get_next_update_partition); none without OTA
    # partitions: esp32_partition_new(NULL) raises OSError(ENOENT).
    def get_next_update(self):
        if self._p[0] != Partition.TYPE_APP or not _APPS:
            raise OSError(_ENOENT)
        i = _APPS.index(self._p[4]) if self._p[4] in _APPS else -1
        return Partition(_APPS[(i + 1) % len(_APPS)])

    # Boot this app at the next reset (esp_ota_set_boot_partition): it must hold a valid image.
    def set_boot(self):
        label = self._p[4]
        if not _APPS:
            _err(_ERR_NO_PARTITION, "ESP_ERR_NOT_FOUND")  # no otadata partition
        if label not in _APPS:
            _err(_ERR_INVALID_ARG, "ESP_ERR_INVALID_ARG")
        head = bytearray(1)
        self._read(0, head)
        if head[0] != _IMAGE_MAGIC:
            _err(_ERR_OTA_VALIDATE_FAILED, "ESP_ERR_OTA_VALIDATE_FAILED")
        d = _otadata()
        d["boot"] = label
        d["state"][label] = "NEW"
        _save_otadata(d)

    # The running app works: cancel the rollback the bootloader would do at the next boot.
    @staticmethod
    def mark_app_valid_cancel_rollback():
        if not _APPS:
            _err(_ERR_NO_PARTITION, "ESP_ERR_NOT_FOUND")  # no otadata partition to write
        d = _otadata()
        run = _running_label()
        s = d["state"].get(run, "UNDEFINED")
        if s not in _VALID:
            d["state"][run] = "VALID"
            _save_otadata(d)
