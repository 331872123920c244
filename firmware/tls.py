# The one place TLS sessions are made, for links, MQTT and OTA alike:
# - context(): an SSLContext from the certificates stored by AT+SSLCERTSET;
# - acquire()/release(): the session count. Each session holds about 20 KB of the ESP-IDF heap
#   (mbedTLS's record buffers, outside the Python heap, next to Wi-Fi and BLE), so only two
#   at once (_TLS_MAX), refused with a reason before any handshake;
# - clock_ready(): verification checks certificate dates against the RTC, which reads
#   2000-01-01 after power-on until SNTP sets it (app.py's housekeeping keeps it set);
# - reason(): a TLS failure in plain words, on one line.
import asyncio
import time

import machine
from micropython import const

from firmware import at, registry

_TLS_MAX = const(2)
_CLOCK_WAIT_MS = const(10000)
_CLOCK_STEP_MS = const(100)
_CLOCK_YEAR = const(2024)  # an RTC before this year has not been set since power-on
_MBEDTLS_ERR_MIN = const(-0x1000)  # SSL, X509, PK errors; smaller ones are not TLS's

_sessions = 0
_shared = {}  # made_for(...) -> the context its sessions share
# Counted up by each AT+SSLCERTSET (certs.py). A session's module keeps this one loaded while it
# holds a context: a re-import's 0 meets no context made before.
version = 0


def acquire():
    global _sessions
    if _sessions >= _TLS_MAX:
        raise at.AtError(at.E_STATE, "no memory for another TLS session")
    _sessions += 1


def release():
    global _sessions
    if _sessions:
        _sessions -= 1
    if not _sessions:
        _shared.clear()


def sessions():
    return _sessions


def clock_set():
    return machine.RTC().datetime()[0] >= _CLOCK_YEAR


# Wait (bounded) until the RTC holds a real time; AtError "clock not set" if it does not come.
async def clock_ready(ms=_CLOCK_WAIT_MS):
    t0 = time.ticks_ms()
    while not clock_set():
        if time.ticks_diff(time.ticks_ms(), t0) >= ms:
            raise at.AtError(at.E_STATE, "clock not set")
        await asyncio.sleep_ms(_CLOCK_STEP_MS)


# A client context: the server verified with the stored root CA (verify), and our stored
# certificate and key offered (client). One per configuration, shared by the sessions that use
# it until none is left (an SSLContext wraps any number of sockets): a second session takes no
# second 3 KB block of a fragmented heap (the context is a GC object on the chip too, unlike
# the sessions' record buffers) and parses no certificate again.
def context(verify, client=False):
    k = made_for(verify, client)
    t = _shared.get(k)
    if t is None:
        t = _shared[k] = _context(verify, client)
    return t


# What a context is made for: a held one serves while this is unchanged.
def made_for(verify, client=False):
    return (verify, client, version)


# The certificates' module (3.9 KB) only while a context is made: a session holds none of it.
def _context(verify, client):
    certs = registry.imported("firmware.certs")
    try:
        return _made(certs, verify, client)
    finally:
        registry.give_back("firmware.certs")


def _made(certs, verify, client):
    import ssl

    t = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ca = certs.der(0)
        if ca is None:
            raise at.AtError(at.E_STATE, "no root certificate (AT+SSLCERTSET=0)")
        try:
            for der in ca:  # each adds a trusted certificate
                t.load_verify_locations(cadata=der)
        except (ValueError, OSError):
            raise at.AtError(at.E_PARAM, "the stored root certificate cannot be read")
        t.verify_mode = ssl.CERT_REQUIRED
    else:
        t.verify_mode = ssl.CERT_NONE
    if client:
        cert, key = certs.der(1), certs.der(2)
        if cert is None or key is None:
            raise at.AtError(at.E_STATE, "no client certificate or key (AT+SSLCERTSET=1,2)")
        try:
            t.load_cert_chain(cert[0], key[0])
        except (ValueError, OSError):
            raise at.AtError(at.E_PARAM, "the stored client certificate or key cannot be read")
    return t


# mbedTLS's verification texts (mbedtls_x509_crt_verify_info, raised as ValueError), in words.
_VERIFY = (
    ("not correctly signed", "certificate not signed by a trusted CA"),
    ("has expired", "certificate expired"),
    ("in the future", "certificate not yet valid"),
    ("does not match", "certificate is not for this host"),
    ("revoked", "certificate revoked"),
    ("missing", "no server certificate"),
    ("unacceptable", "certificate uses an unacceptable algorithm or key"),
    ("Usage", "certificate not meant for this use"),
)


# A TLS failure as one line of plain words (never a bare LF inside a reply line).
def reason(e):
    if isinstance(e, at.AtError):
        return e.detail
    if isinstance(e, ValueError):
        text = str(e)
        for part, words in _VERIFY:
            if part in text:
                return words
        if "invalid key" in text:
            return "the stored key cannot be read"
        if "invalid cert" in text:
            return "the stored certificate cannot be read"
        return "TLS: " + " ".join(text.split())
    code = e.args[0] if isinstance(e, OSError) and e.args else 0
    if isinstance(code, int) and code <= _MBEDTLS_ERR_MIN:  # mbedTLS's own error codes
        return "TLS handshake failed (-0x{:04X})".format(-code)
    return None
