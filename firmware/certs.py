# Certificates and keys stored by AT+SSLCERTSET, by type: 0 root CA, 1 client certificate,
# 2 private key, 3 revocation list. Kept as the host sent them (PEM with LF line endings, or
# DER), once check() found them readable.
from firmware import ctx, settings
from firmware.at import E_PARAM, AtError

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


# PEM text with CR LF or lone CR line endings (a PEM pasted into a terminal) gets LF; DER is
# binary and stays as it is.
def normalise(data):
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


# The data of a certificate or key (bytes, or the path of a file holding them) made ready to
# store: line endings normalised, and each certificate or the key parsed by mbedTLS as a
# connection will parse it. AtError with a plain reason if it cannot be used; returns the bytes.
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
    except ValueError:
        blocks = None
    if not blocks:
        raise AtError(E_PARAM, "not a PEM or DER certificate or key")
    if kind == 3:
        return data  # revocation lists are stored only (MicroPython's ssl cannot use them)
    import ssl

    t = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if kind == 2:
            t.load_cert_chain(b"", blocks[0])  # the key is parsed first: "invalid key"
        else:
            for der in blocks:
                t.load_verify_locations(cadata=der)
    except (ValueError, OSError) as e:
        if kind != 2:
            raise AtError(E_PARAM, "not a readable X.509 certificate")
        if "invalid key" in str(e):
            raise AtError(E_PARAM, "not a readable private key")
    return data


# Written atomically like settings; not at all under FLASHLOCK.
def store(kind, data):
    if ctx.settings["flashlock"]:
        _held[kind] = bytes(data)
    else:
        settings.write_file(_path(kind), data)


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
