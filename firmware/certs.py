# Certificates and keys stored by AT+SSLCERTSET, by type: 0 root CA, 1 client certificate,
# 2 private key, 3 revocation list. Kept as the host sent them (PEM, or DER).
from firmware import ctx, settings

_DIR = settings.DIR + "/certs"
_held = {}  # stored while FLASHLOCK is ON: live until reboot, like settings


def _path(kind):
    return "{}/{}.pem".format(_DIR, kind)


def load(kind):
    if kind in _held:
        return _held[kind]
    try:
        with open(_path(kind), "rb") as f:
            return f.read()
    except OSError:
        return None


# Written atomically like settings; not at all under FLASHLOCK.
def store(kind, data):
    if ctx.settings["flashlock"]:
        _held[kind] = bytes(data)
    else:
        settings.write_file(_path(kind), data)
