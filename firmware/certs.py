# Certificates and keys stored by AT+SSLCERTSET, by type: 0 root CA, 1 client certificate,
# 2 private key, 3 revocation list. Kept as the host sent them (PEM with LF line endings, or
# DER), once check() found them readable.
import os
import sys

from micropython import const

from firmware import ctx, settings
from firmware.at import E_PARAM, AtError

MAX = const(16384)  # bytes of a certificate chain or key: a real CA chain is 6.5 KB and more

_DIR = settings.DIR + "/certs"
held = ctx.certs_held  # stored while FLASHLOCK is ON: live until reboot, like settings


def path(kind):
    return "{}/{}.pem".format(_DIR, kind)


def load(kind):
    if kind in held:
        return held[kind]
    try:
        with open(path(kind), "rb") as f:
            return f.read()
    except OSError:
        return None


# The stored text in pieces of at most 512 bytes (one buffer, reused), or None if there is
# none: AT+SSLCERTGET sends a 16 KB chain without holding it whole.
def pieces(kind):
    if kind in held:
        return (held[kind],)
    try:
        f = open(path(kind), "rb")
    except OSError:
        return None
    return _read(f)


def _read(f):
    buf = bytearray(512)
    mv = memoryview(buf)
    with f:
        while True:
            n = f.readinto(buf)
            if not n:
                return
            yield mv[:n]


# AT+SSLCERTSET's data, written to a temporary file as it streams in (a chain can be larger
# than any RAM buffer) and put in place by commit(); abort() leaves the stored one as it was.
class Upload:
    def __init__(self, kind):
        self.kind = kind
        self.size = 0
        self._pem = None  # text (line endings made LF as it streams) or DER; known at byte 1
        self._cr = False  # the last piece ended with a CR
        self._tmp = path(kind) + ".part"
        settings.mkdirs(self._tmp)
        self._f = open(self._tmp, "wb")

    def write(self, mv):
        self.size += len(mv)
        if self.size > MAX:
            raise AtError(E_PARAM, "certificate longer than {}".format(MAX))
        if self._pem is None:
            self._pem = mv[0] != 0x30  # DER starts with a SEQUENCE; PEM is text
        if self._pem:
            piece, self._cr = lf(bytes(mv), self._cr)
            self._f.write(piece)
        else:
            self._f.write(mv)

    def abort(self):
        self._f.close()
        _remove(self._tmp)

    # The new text replaces the stored one once check() found it readable (garbage is
    # refused with a reason and nothing stored): renamed over it or, under FLASHLOCK, held in
    # RAM.
    def commit(self):
        if self._cr:
            self._f.write(b"\n")
        self._f.close()
        try:
            if not self.size:
                raise AtError(E_PARAM, "empty certificate")
            check(self.kind, self._tmp)
        except BaseException:
            _remove(self._tmp)
            raise
        if ctx.settings["flashlock"]:
            with open(self._tmp, "rb") as f:
                held[self.kind] = f.read()
            _remove(self._tmp)
        else:
            os.rename(self._tmp, path(self.kind))
        tls = sys.modules.get("firmware.tls")
        if tls:
            tls.version += 1


def _remove(name):
    try:
        os.remove(name)
    except OSError:
        pass  # gone already


# PEM text with CR LF or lone CR line endings (a PEM pasted into a terminal) gets LF, one
# piece of an upload at a time (`cr`: the previous piece ended with a CR). Returns the piece
# and whether it ends with a CR (held back: the next piece may start with its LF).
def lf(piece, cr):
    if cr and piece[:1] != b"\n":
        piece = b"\n" + piece
    end = piece[-1:] == b"\r"
    if end:
        piece = piece[:-1]
    if b"\r" in piece:
        piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return piece, end


# Check a stored upload (a file): each certificate, or the key, must have the DER structure
# mbedTLS parses (checked without mbedTLS: parsing there takes kilobytes of RAM). Read a line
# at a time, one PEM block in RAM at most (a chain can be 16 KB). AtError with a plain reason.
def check(kind, path):
    if kind == 3:
        return  # revocation lists are stored only (MicroPython's ssl cannot use them)
    import binascii

    ok = None  # None: no PEM block seen
    block = None
    with open(path, "rb") as f:
        while True:
            line = f.readline()
            if not line:
                break
            if line.startswith(b"-----BEGIN"):
                block = []
            elif line.startswith(b"-----END") and block is not None:
                try:
                    ok = _readable(kind, binascii.a2b_base64(b"".join(block)))
                except ValueError:  # broken base64
                    ok = False
                block = None
                if not ok or kind == 2:  # a key file: its first block is the key
                    break
            elif block is not None:
                block.append(line.strip())
        if ok is None:  # DER: the whole file is one certificate or key
            f.seek(0)
            data = f.read()
            if not data or data.isspace():
                raise AtError(E_PARAM, "empty certificate")
            ok = _readable(kind, data)
    if not ok:
        if kind == 2:
            raise AtError(E_PARAM, "not a readable private key")
        raise AtError(E_PARAM, "not a readable X.509 certificate")


# One DER element at d[i] within d[:end]: (tag, start of content, end of content).
def _tlv(d, i, end):
    if i + 2 > end:
        raise ValueError
    tag, n = d[i], d[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if not 0 < k < 4 or i + k > end:
            raise ValueError
        n = int.from_bytes(d[i : i + k], "big")
        i += k
    if i + n > end:
        raise ValueError
    return tag, i, i + n


# A certificate is SEQUENCE { SEQUENCE tbsCertificate, SEQUENCE algorithm, BIT STRING } (RFC
# 5280 4.1); a key is a SEQUENCE of an INTEGER version and more (PKCS#1, SEC1, PKCS#8).
def _readable(kind, der):
    try:
        tag, i, end = _tlv(der, 0, len(der))
        if tag != 0x30 or end != len(der):
            return False
        tags = []
        while i < end:
            tag, _, i = _tlv(der, i, end)
            tags.append(tag)
        if kind == 2:
            return len(tags) > 1 and tags[0] == 0x02
        return tags == [0x30, 0x30, 0x03]
    except ValueError:
        return False


# The DER blocks of a stored certificate or key (a PEM bundle gives several), or None.
# Every mbedTLS build takes DER; the PC's rejects PEM, and hosts send PEM.
def der(kind):
    data = load(kind)
    return None if data is None else _blocks(data)


# The DER blocks of PEM or DER data, one at a time (DER data is one block). ValueError for PEM
# whose base64 is broken.
def _each(data):
    import binascii

    i = 0
    found = False
    while True:
        b = data.find(b"-----BEGIN", i)
        if b < 0:
            break
        b = data.find(b"\n", b) + 1
        e = data.find(b"-----END", b)
        if b <= 0 or e < 0:
            break
        found = True
        yield binascii.a2b_base64(data[b:e])  # skips the line breaks
        i = e + 8
    if not found:
        yield data


def _blocks(data):
    return list(_each(data))
