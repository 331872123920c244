# Persistent settings: one JSON file on the flash filesystem, written atomically.
import json
import os

from firmware import log

DIR = "data"  # everything the module stores; AT+FACTORY removes it
_FILE = "data/settings.json"

# Factory defaults. The type of each default is also the type a stored value must have;
# a stored value of another type is ignored (with a log line) and the default used.
# Later command groups add their keys with defaults().
DEFAULTS = {
    "flashlock": False,
    "echo": True,  # AT+UARTE
    "wevent": True,
    "cipevent": True,
    "verbose_errors": False,  # AT+ERRVERBOSE (extension)
    "hide_secrets": False,  # AT+SECRETS (extension)
    "uart": [115200, 8, 1, "NONE", "NONE"],  # baud, data bits, stop bits, parity, flow
    "uartfomat": [1024, 100],  # transparent-mode frame length (bytes) and idle time (ms)
}


current = None  # the loaded Settings


# Register the factory defaults of a feature. A feature module may be imported after the
# settings were loaded (command groups load on first use): its stored values are checked now.
def defaults(d):
    DEFAULTS.update(d)
    if current is not None:
        current.adopt(d)


class Settings:
    def __init__(self):
        self._live = {}  # what the running module uses
        self._flash = {}  # what the file holds (differs from _live only under FLASHLOCK)

    def __getitem__(self, key):
        return self._live[key]

    # A value that may belong to a feature not loaded yet (as stored, unchecked).
    def get(self, key, default=None):
        return self._live.get(key, default)

    # Read the file; a missing, unreadable or corrupt file means factory defaults. Values
    # of features not loaded yet are kept as stored (so a save does not lose them) until the
    # feature registers its defaults.
    def load(self):
        global current
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
        self._live = stored
        self.adopt(DEFAULTS)
        self._flash = dict(self._live)
        current = self

    def adopt(self, defaults):
        live = self._live
        for key, default in defaults.items():
            v = live.get(key, default)
            if type(v) is not type(default):
                log.warn("settings: bad value for {} ignored".format(key))
                v = default
            live[key] = v

    # Change a setting; it goes to flash at once unless FLASHLOCK is ON.
    def set(self, key, value):
        self.update({key: value})

    # Change several settings with one write.
    def update(self, changes):
        self._live.update(changes)
        if changes.get("flashlock"):
            # FLASHLOCK's own state always persists; with it ON the file keeps the values
            # it had, with it OFF the file takes everything as it is now.
            self._flash["flashlock"] = True
            self._write(self._flash)
        elif not self._live["flashlock"]:
            self._flash = dict(self._live)
            self._write(self._flash)

    def _write(self, values):
        write_file(_FILE, json.dumps(values))


# Temporary file, then rename: a power cut leaves either the old or the new file. Creates the
# folders on the way.
def write_file(path, data):
    mkdirs(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
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
