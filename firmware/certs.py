# Certificates and keys stored by AT+SSLCERTSET, by type: 0 root CA, 1 client certificate,
# 2 private key, 3 revocation list. Kept as the host sent them (PEM, or DER).
import os

from micropython import const

from firmware import ctx, settings
from firmware.at import E_PARAM, AtError

MAX = const(16384)  # a certificate chain or key: a real CA chain is 6.5 KB and more

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


# AT+SSLCERTSET's data, written to a temporary file as it streams in (a chain can be larger
# than any RAM buffer) and put in place by commit(); abort() leaves the stored one as it was.
class Upload:
    def __init__(self, kind):
        self.kind = kind
        self.size = 0
        self._tmp = _path(kind) + ".part"
        settings.mkdirs(self._tmp)
        self._f = open(self._tmp, "wb")

    def write(self, mv):
        self.size += len(mv)
        if self.size > MAX:
            raise AtError(E_PARAM, "certificate longer than {}".format(MAX))
        self._f.write(mv)

    def abort(self):
        self._f.close()
        _remove(self._tmp)

    # The new text replaces the stored one: renamed over it, or, under FLASHLOCK, held in RAM.
    # (The check of its contents, where one is made, belongs here, before the rename.)
    def commit(self):
        self._f.close()
        if not self.size:
            self.abort()
            raise AtError(E_PARAM, "empty certificate")
        if ctx.settings["flashlock"]:
            with open(self._tmp, "rb") as f:
                _held[self.kind] = f.read()
            _remove(self._tmp)
        else:
            os.rename(self._tmp, _path(self.kind))


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass  # gone already


# The DER blocks of a stored certificate or key (a PEM bundle gives several), or None.
# Every mbedTLS build takes DER; the PC's rejects PEM, and hosts send PEM.
def der(kind):
    data = load(kind)
    if data is None:
        return None
    import binascii

    out = []
    i = 0
    while True:
        b = data.find(b"-----BEGIN", i)
        if b < 0:
            break
        b = data.find(b"\n", b) + 1
        e = data.find(b"-----END", b)
        if b <= 0 or e < 0:
            break
        out.append(binascii.a2b_base64(data[b:e]))  # skips the line breaks
        i = e + 8
    return out or [data]
