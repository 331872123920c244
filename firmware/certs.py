# Certificates and keys stored by AT+SSLCERTSET, by type: 0 root CA, 1 client certificate,
# 2 private key, 3 revocation list. Kept as the host sent them (PEM with LF line endings, or
# DER), once check() found them readable.
from firmware import ctx, settings
from firmware.at import E_PARAM, AtError

_DIR = settings.DIR + "/certs"
held = {}  # stored while FLASHLOCK is ON: live until reboot, like settings


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


# PEM text with CR LF or lone CR line endings (a PEM pasted into a terminal) gets LF; DER is
# binary and stays as it is.
def normalise(data):
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


# The data of a certificate or key (bytes, or the path of a file holding them) made ready to
# store: line endings normalised, and each certificate or the key checked to have the DER
# structure mbedTLS parses (without mbedTLS: parsing there takes kilobytes of RAM). AtError
# with a plain reason if it cannot be used; returns the bytes.
def check(kind, data_or_path):
    data = data_or_path
    if isinstance(data, str):
        with open(data, "rb") as f:
            data = f.read()
    data = normalise(bytes(data))
    if not data.strip():
        raise AtError(E_PARAM, "empty certificate")
    try:
        blocks = _blocks(data)
    except ValueError:  # broken base64
        blocks = ()
    if kind == 3:
        return data  # revocation lists are stored only (MicroPython's ssl cannot use them)
    if not blocks or not all(_readable(kind, der) for der in blocks[: 1 if kind == 2 else None]):
        if kind == 2:
            raise AtError(E_PARAM, "not a readable private key")
        raise AtError(E_PARAM, "not a readable X.509 certificate")
    return data


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


# The DER blocks of PEM or DER data. ValueError for PEM whose base64 is broken.
def _blocks(data):
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
