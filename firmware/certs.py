# Certificates and keys stored by AT+SSLCERTSET, by type: 0 root CA, 1 client certificate,
# 2 private key, 3 revocation list. Kept as the host sent them (PEM, or DER).
from firmware import ctx, settings

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
