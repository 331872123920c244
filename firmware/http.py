# An HTTP(S)/1.1 client for OTA: GET only, one keep-alive connection, non-blocking, fenced by
# timeouts. The message parsing is firmware/httpmsg.py (pure, table-tested under CPython).
import asyncio
import errno
import socket

from micropython import const

from firmware import aio, httpmsg, registry
from firmware.aio import read_some, writable, write_all
from firmware.at import AtError

_CONNECT_MS = const(5000)
_IDLE_MS = const(5000)  # a server silent this long mid-transfer has failed

tls = None  # firmware.tls, imported for the first https URL


# A failed exchange: the reason word (+OTAEVENT:FAIL,<reason>) and a detail for AT+ERRNO
class Fail(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class Http:
    # url: http[s]://host[:port][/path]; buf: the one buffer every read goes through (its
    # size bounds a response head and a chunk-size line)
    def __init__(self, url, buf):
        try:
            self.tls, self.host, self.port, self.base = httpmsg.split_url(url)
        except ValueError as e:
            raise Fail("URL", str(e))
        self.buf = buf
        self.mv = memoryview(buf)
        self.sock = None
        self.keep = False  # the server keeps the connection after this response
        self.frame = None  # the body framing of the last response (httpmsg.Length, Chunked)
        self.at = self.end = 0  # received bytes not yet used: buf[at:end]
        self._ctx = None
        self._session = False  # holds one of tls's sessions

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        if self._session:
            self._session = False
            tls.release()

    async def _connect(self):
        global tls
        if self.tls:
            tls = tls or registry.use("ota", "firmware.tls")
            try:
                if self._ctx is None:
                    self._ctx = tls.context(True)
                await tls.clock_ready()  # verification checks the certificate dates
            except AtError as e:
                raise Fail("TLS", e.detail)
        try:
            # Blocking, once per connection: DNS (instant for an IP address)
            addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        except OSError as e:
            raise Fail("CONNECT", "DNS {}: {}".format(self.host, aio.why(e)))
        s = socket.socket()
        self.sock = s
        s.setblocking(False)
        try:
            s.connect(addr)
        except OSError as e:
            if e.args[0] != errno.EINPROGRESS:
                raise Fail("CONNECT", aio.why(e))
        try:
            await asyncio.wait_for_ms(writable(s), _CONNECT_MS)
        except asyncio.TimeoutError:
            raise Fail("CONNECT", "timeout")
        if self._ctx is not None:
            try:
                tls.acquire()
            except AtError as e:
                raise Fail("TLS", e.detail)
            self._session = True
            self.sock = self._ctx.wrap_socket(
                s, server_hostname=self.host, do_handshake_on_connect=False
            )

    # GET base+path; returns the body's length (None if chunked). The body is read with body().
    # One retry on a kept-alive connection the server has closed.
    async def get(self, path):
        req = httpmsg.request(self.base + path, self.host, self.port, self.tls)
        for _ in (0, 1):
            fresh = self.sock is None
            if fresh:
                await self._connect()
            try:
                await self._send(req)
                answered = await self._head()
            except ValueError as e:  # mbedTLS: the server's certificate does not verify
                self.close()
                raise Fail("TLS", tls.reason(e) if tls else aio.why(e))
            except OSError as e:
                self.close()
                if fresh:
                    raise Fail(_reason(e, self.tls), aio.why(e))
                continue
            if answered:
                return self.frame.left if isinstance(self.frame, httpmsg.Length) else None
            self.close()  # closed before answering: a kept-alive connection timed out
            if fresh:
                break
        raise Fail("NETWORK", "connection closed")

    async def _send(self, data):
        try:
            await write_all(self.sock, data, _IDLE_MS)
        except OSError as e:
            if e.args[0] == errno.ETIMEDOUT:
                raise Fail("TIMEOUT", "sending")
            raise

    # Append what the server sends next to buf[at:end]; returns how many bytes, 0 when it
    # closed. Fails when it fell silent.
    async def _more(self):
        if self.at:
            n = self.end - self.at
            self.buf[:n] = self.mv[self.at : self.end]
            self.at, self.end = 0, n
        if self.end == len(self.buf):
            raise Fail("HTTP", "line too long")
        try:
            n = await asyncio.wait_for_ms(read_some(self.sock, self.mv[self.end :]), _IDLE_MS)
        except asyncio.TimeoutError:
            self.close()
            raise Fail("TIMEOUT", "server silent")
        self.end += n
        return n

    # The status line and headers of a 200 response; False if the server closed at once.
    async def _head(self):
        self.at = self.end = 0
        while True:
            e = self.buf.find(b"\r\n\r\n", 0, self.end)
            if e >= 0:
                break
            if not await self._more():
                if self.end:
                    raise Fail("NETWORK", "closed in header")
                return False
        try:
            code, self.keep, self.frame = httpmsg.parse_head(self.mv[:e])
        except ValueError as err:
            self.close()
            raise Fail("HTTP", str(err))
        if code != 200:
            self.close()
            raise Fail("HTTP", "status {}".format(code))
        self.at = e + 4
        return True

    # The body of the last get(), piece by piece through sink(memoryview); returns its length.
    # More than limit bytes fail. One yield per piece: a fast server never holds the loop. On
    # a failure the caller closes the connection.
    async def body(self, sink, limit):
        frame = self.frame
        got = 0
        while not frame.done():
            try:
                a, b, k = frame.step(self.buf, self.at, self.end)
            except ValueError as e:
                raise Fail("HTTP", str(e))
            if b > a:
                got += b - a
                if got > limit:
                    raise Fail("SIZE", "more than {} bytes".format(limit))
                sink(self.mv[a:b])
                await asyncio.sleep_ms(0)
            elif k == self.at:
                try:
                    n = await self._more()
                except OSError as e:
                    raise Fail("NETWORK", aio.why(e))
                if not n:
                    raise Fail("NETWORK", "closed after {} bytes".format(got))
                continue
            self.at = k
        if not self.keep:
            self.close()
        return got


# The reason word of a failed exchange: mbedTLS errors are negative.
def _reason(e, tls):
    code = e.args[0] if e.args else 0
    if tls and isinstance(code, int) and code < 0:
        return "TLS"
    if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
        return "CONNECT"
    return "NETWORK"
