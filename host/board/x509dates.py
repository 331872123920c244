# x509dates.py: certificate dates against the board RTC, for host/board/ssl.py. mbedTLS on the
# chip checks every certificate of a verified chain against the time (x509_crt_verify_chain,
# CONFIG_MBEDTLS_HAVE_TIME_DATE; ports/esp32/main.c platform_mbedtls_time) and
# extmod/modtls_mbedtls.c raises MBEDTLS_ERR_X509_CERT_VERIFY_FAILED as ValueError with
# mbedtls_x509_crt_verify_info's text: "\n" before each reason, "\n" after.
import binascii
import io

from micropython import const

_MP_STREAM_POLL = const(3)
_FUTURE = "\nThe certificate validity starts in the future\n"
_EXPIRED = "\nThe certificate validity has expired\n"


# One DER element at d[i]: (tag, start of content, end of content).
def _tlv(d, i):
    tag = d[i]
    n = d[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(d[i : i + k], "big")
        i += k
    return tag, i, i + n


# A UTCTime (0x17) or GeneralizedTime (0x18) as (Y, M, D, h, m, s).
def _time(d, tag, a, b):
    t = bytes(d[a:b]).decode()
    if tag == 0x17:
        y = int(t[:2])
        y += 1900 if y >= 50 else 2000
        t = t[2:]
    else:
        y = int(t[:4])
        t = t[4:]
    return (y, int(t[0:2]), int(t[2:4]), int(t[4:6]), int(t[6:8]), int(t[8:10]))


# (notBefore, notAfter) of a DER certificate (RFC 5280 4.1: Certificate > TBSCertificate >
# [0] version, serialNumber, signature, issuer, validity).
def validity(der):
    _, i, _ = _tlv(der, 0)  # Certificate
    _, i, _ = _tlv(der, i)  # TBSCertificate
    tag, a, b = _tlv(der, i)
    if tag == 0xA0:  # explicit version
        i = b
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, i = _tlv(der, i)
    _, i, _ = _tlv(der, i)  # Validity
    tag, a, b = _tlv(der, i)
    start = _time(der, tag, a, b)
    tag, a, b = _tlv(der, b)
    return start, _time(der, tag, a, b)


# The (notBefore, notAfter) of each certificate in PEM or DER data.
def validities(data):
    return [validity(der) for der in _ders(data)]


# Why mbedTLS refuses a chain at the board's time, or None. The unix port's tls cannot show the
# peer's certificate (no MBEDTLS_SSL_KEEP_PEER_CERTIFICATE), so the dates checked are the trusted
# roots' (periods: their validities): mbedTLS checks every certificate of the chain, the root
# included (x509_crt_verify_chain). A chain fails when no trusted root is within its dates.
def date_error(periods):
    import machine

    now = machine.RTC().datetime()
    now = (now[0], now[1], now[2], now[4], now[5], now[6])
    why = None
    for start, end in periods:
        if start <= now <= end:
            return None
        why = _FUTURE if now < start else _EXPIRED
    return why


# A TLS stream whose handshake will fail on the certificate dates (do_handshake_on_connect=False):
# the first read or write raises, as modtls_mbedtls.c does when mbedTLS's handshake, run by
# read/write, ends in MBEDTLS_ERR_X509_CERT_VERIFY_FAILED. Ready for polling, so it is tried.
class _Refused(io.IOBase):
    def __init__(self, raw, why):
        self.raw = raw
        self.why = why

    def _fail(self, *args):
        self.raw.close()
        raise ValueError(self.why)

    readinto = read = readline = write = _fail

    def ioctl(self, req, arg):
        return arg if req == _MP_STREAM_POLL else -1  # -1: MP_STREAM_ERROR

    def setblocking(self, flag):
        pass

    def close(self):
        self.raw.close()


# The DER certificates of PEM or DER data.
def _ders(data):
    if not data.startswith(b"-----"):
        return [data]
    out = []
    for block in data.split(b"-----BEGIN")[1:]:
        body = block[block.find(b"\n") + 1 : block.find(b"-----END")]
        out.append(binascii.a2b_base64(body))
    return out


# The TLS socket raw, or the failure mbedTLS would have at the board's time: raised now when the
# handshake runs in wrap_socket, else from the first read or write.
def check(raw, periods, handshake_now):
    why = date_error(periods)
    if why is None:
        return raw
    if not handshake_now:
        return _Refused(raw, why)
    raw.close()
    raise ValueError(why)
