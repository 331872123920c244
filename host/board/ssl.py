# ssl.py: the ssl module of the ESP32 image on the PC: micropython-lib's ssl API (SSLContext,
# wrap_socket, the tls constants) over the unix port's tls (extmod/modtls_mbedtls.c), with what
# the chip's mbedTLS does that the PC's does not: with CERT_REQUIRED, certificate dates are
# checked against the board RTC (CONFIG_MBEDTLS_HAVE_TIME_DATE, ports/esp32/main.c
# platform_mbedtls_time), which starts at 2000-01-01 after power-on. A chain outside its dates
# fails as modtls_mbedtls.c reports it (host/board/x509dates.py, loaded only for the board
# clock: the VM tests that run stand-ins in a small heap need no more). Of the trusted
# certificates only their dates are kept: on the chip mbedTLS parses them into the ESP-IDF
# heap, and the data given is garbage once loaded (a 16 KB chain held here would take the
# Python heap the chip has).
import os

import tls
from tls import (  # the module's constants
    CERT_NONE,
    CERT_OPTIONAL,
    CERT_REQUIRED,
    MBEDTLS_VERSION,
    PROTOCOL_TLS_CLIENT,
    PROTOCOL_TLS_SERVER,
)

# The board RTC exists in the virtual module (host/launcher.py sets EMW_STATE); elsewhere the
# clock is the host's, which the unix port's mbedTLS checks already.
_board_clock = bool(os.getenv("EMW_STATE"))


class SSLContext:
    def __init__(self, protocol):
        self._ctx = tls.SSLContext(protocol)
        self._ctx.verify_mode = CERT_NONE
        self._cas = []  # (notBefore, notAfter) of each trusted certificate (board clock only)

    @property
    def verify_mode(self):
        return self._ctx.verify_mode

    @verify_mode.setter
    def verify_mode(self, mode):
        self._ctx.verify_mode = mode

    def load_cert_chain(self, certfile, keyfile):
        self._ctx.load_cert_chain(_data(certfile), _data(keyfile))

    def load_verify_locations(self, cafile=None, cadata=None):
        data = _data(cafile) if cafile else cadata
        self._ctx.load_verify_locations(data)
        if _board_clock:
            import x509dates

            self._cas += x509dates.validities(data)

    def wrap_socket(
        self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None
    ):
        sock = getattr(sock, "raw", sock)  # the unix socket inside host/board/socket.py's
        raw = self._ctx.wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            server_hostname=server_hostname,
        )
        if self._ctx.verify_mode != CERT_REQUIRED or server_side or not _board_clock:
            return raw
        import x509dates

        return x509dates.check(raw, self._cas, do_handshake_on_connect)


# A file's bytes, or the bytes given.
def _data(v):
    if isinstance(v, str):
        with open(v, "rb") as f:
            return f.read()
    return v


def wrap_socket(
    sock,
    server_side=False,
    key=None,
    cert=None,
    cert_reqs=CERT_NONE,
    cadata=None,
    server_hostname=None,
    do_handshake=True,
):
    ctx = SSLContext(PROTOCOL_TLS_SERVER if server_side else PROTOCOL_TLS_CLIENT)
    if cert or key:
        ctx.load_cert_chain(cert, key)
    if cadata:
        ctx.load_verify_locations(cadata=cadata)
    ctx.verify_mode = cert_reqs
    return ctx.wrap_socket(
        sock,
        server_side=server_side,
        do_handshake_on_connect=do_handshake,
        server_hostname=server_hostname,
    )
