# Persistent settings: one JSON file on the flash filesystem, written atomically.
import json
import os

from firmware import log
from firmware.schema import DEFAULTS, valid

DIR = "data"  # everything the module stores; AT+FACTORY removes it
_FILE = "data/settings.json"


class Settings:
    def __init__(self):
        self._live = {}  # what the running module uses
        self._flash = {}  # what the file holds (differs from _live only under FLASHLOCK)

    def __getitem__(self, key):
        return self._live[key]

    # Read the file; a missing, unreadable or corrupt file means factory defaults. Each value
    # is checked against the schema (firmware/schema.py); keys it does not list are dropped.
    def load(self):
        stored = {}
        try:
            with open(_FILE) as f:
                stored = json.load(f)
            if not isinstance(stored, dict):
                raise ValueError("not an object")
        except OSError:
            pass  # no file yet: factory defaults
        except Exception as e:  # ValueError from json, or a truncated file
            log.warn("settings: corrupt file ignored, factory defaults used: {!r}".format(e))
            stored = {}
        live = {}
        for key, default in DEFAULTS.items():
            v = stored.get(key, default)
            if not valid(key, v):
                log.warn("settings: bad value for {} ignored".format(key))
                v = default
            live[key] = v
        self._live = live
        self._flash = dict(live)

    # Change a setting; it goes to flash at once unless FLASHLOCK is ON.
    def set(self, key, value):
        self.update({key: value})

    # Change several settings with one write; none if nothing changes (drivers send their
    # configuration at every start: the flash is not worn, the heap not used for it).
    def update(self, changes):
        live = self._live
        if all(k in live and live[k] == v for k, v in changes.items()):
            return
        live.update(changes)
        if changes.get("flashlock"):
            # FLASHLOCK's own state always persists; with it ON the file keeps the values
            # it had, with it OFF the file takes everything as it is now.
            self._flash["flashlock"] = True
            self._write(self._flash)
        elif not live["flashlock"]:
            self._flash.update(live)  # in place: same keys, no new table
            self._write(self._flash)

    def _write(self, values):
        write_file(_FILE, values)


# Temporary file, then rename: a power cut leaves either the old or the new file. Creates the
# folders on the way. data: text or bytes, or a value written as JSON straight into the file
# (no copy of its text in RAM: a block that size may not be free in a fragmented heap).
def write_file(path, data):
    mkdirs(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        if isinstance(data, (str, bytes)):
            f.write(data)
        else:
            json.dump(data, f)
    os.rename(tmp, path)


# The folders of a file's path, made where missing.
def mkdirs(path):
    i = path.find("/")
    while i > 0:
        try:
            os.mkdir(path[:i])
        except OSError:
            pass  # exists
        i = path.find("/", i + 1)


# Remove everything the module stored (AT+FACTORY).
def wipe():
    remove_tree(DIR)


def remove_tree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for entry in entries:
        child = path + "/" + entry[0]
        if entry[1] == 0x4000:  # directory
            remove_tree(child)
        else:
            os.remove(child)
    os.rmdir(path)
