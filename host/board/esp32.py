# esp32.py: the esp32 module on the PC (MicroPython, unix port).
#
# wake_on_ext0/ext1 record the wake pin (the launcher's "wake" control op pulls it); NVS keeps
# its namespaces in STATE/nvs.json; Partition is a stub until OTA is done.

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


# A minimal Partition: the firmware runs from ota_0 and there is nothing to roll back.
class Partition:
    BOOT = const(0)
    RUNNING = const(1)
    TYPE_APP = const(0)
    TYPE_DATA = const(1)

    _TABLE = (
        (0, 0x10, 0x10000, 0x180000, "ota_0"),
        (0, 0x11, 0x190000, 0x180000, "ota_1"),
    )

    def __init__(self, id, block_size=4096):
        if id in (Partition.BOOT, Partition.RUNNING):
            id = "ota_0"
        for p in Partition._TABLE:
            if p[4] == id:
                self._p = p
                break
        else:
            raise ValueError("partition not found")
        self._bs = block_size

    @staticmethod
    def find(type=TYPE_APP, subtype=0xFF, label=None, block_size=4096):
        return [
            Partition(p[4], block_size)
            for p in Partition._TABLE
            if p[0] == type and (label is None or p[4] == label)
        ]

    def info(self):
        t, st, addr, size, label = self._p
        return (t, st, addr, size, label, False)

    def get_next_update(self):
        return Partition("ota_1" if self._p[4] == "ota_0" else "ota_0", self._bs)

    def set_boot(self):
        pass

    @staticmethod
    def mark_app_valid_cancel_rollback():
        pass

    def __repr__(self):
        return (
            "<Partition type={}, subtype={}, address={}, size={}, label={}, encrypted=0>".format(
                *self._p
            )
        )
