# Section 10 of the spec: OTA of the AT firmware, from an HTTP(S) server the user runs, named
# by the extension AT+OTAURL (the EMW cloud does not exist for this product). docs/OTA.md has
# the manifest, the flow and the events; boot.py and firmware/ota.py the switch and rollback.
#   <url>manifest.json             the latest release: AT+OTACHECK reports its version
#   <url><version>/manifest.json   {"version", "files": [{"path", "size", "sha256"}...],
#                                   optional "image": {"path", "size", "sha256"}}
#   <url><version>/<path>          each file (.mpy of firmware/ and lib/; the image)
# Downloads stream through one buffer to flash, hashed as they go; nothing whole is held.
import asyncio
import errno
import gc
import hashlib
import json
import os
import select
import socket
import time

from micropython import const

from firmware import at, certs, ctx, events, log, ota, settings, wifi
from firmware.aio import BUSY, write_all
from firmware.at import AtError

_URL_MAX = const(200)
_VERSION_MAX = const(32)  # what AT+FWVER can show
_BUF = const(1024)  # network reads
_BLOCK = const(4096)  # flash sector: image writes
_HEAD_MAX = const(1024)  # longest HTTP response header
_MANIFEST_MAX = const(16384)
_CONNECT_MS = const(5000)
_IDLE_MS = const(5000)  # a server silent this long mid-transfer has failed
_SPIN_MS = const(5)  # poll period of a busy non-blocking socket
_MARGIN = const(4)  # blocks kept free on the filesystem besides the release
_ENOSPC = const(28)  # newlib ENOSPC (a full filesystem): not in MicroPython's errno module
_NEW = "ota/new"  # staging folder

_task = None  # the running AT+OTASTART


# A failure with its +OTAEVENT:FAIL reason word and a detail for AT+ERRNO.
class Fail(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


# ----- HTTP(S) client: one keep-alive connection, non-blocking, fenced by timeouts


class Http:
    def __init__(self, url, buf):
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise Fail("URL", "scheme must be http or https")
        self.tls = scheme == "https"
        hostport, _, path = rest.partition("/")
        self.host, _, port = hostport.partition(":")
        if not self.host or (port and not port.isdigit()):
            raise Fail("URL", "bad host or port")
        self.port = int(port) if port else (443 if self.tls else 80)
        self.base = "/" + path if path.endswith("/") or not path else "/" + path + "/"
        self.buf = buf
        self.mv = memoryview(buf)
        self.sock = None
        self.keep = False  # the server keeps the connection after this response
        self.at = self.end = 0  # body bytes already in buf (see get)
        self._ctx = None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    async def _connect(self):
        if self._ctx is None and self.tls:
            self._ctx = _tls()
        if self.tls:
            from firmware.tls import clock_ready  # loaded only for HTTPS

            try:
                await clock_ready()  # verification checks the certificate dates
            except AtError as e:
                raise Fail("TLS", e.detail)
        try:
            # TODO this is blocking: DNS, once per connection (instant for an IP address)
            addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        except OSError as e:
            raise Fail("CONNECT", "DNS {}: {!r}".format(self.host, e))
        s = socket.socket()
        self.sock = s
        s.setblocking(False)
        try:
            s.connect(addr)
        except OSError as e:
            if e.args[0] != errno.EINPROGRESS:
                raise Fail("CONNECT", repr(e))
        p = select.poll()
        p.register(s, select.POLLOUT)
        t0 = time.ticks_ms()
        while not p.poll(0):
            if time.ticks_diff(time.ticks_ms(), t0) > _CONNECT_MS:
                raise Fail("CONNECT", "timeout")
            await asyncio.sleep_ms(_SPIN_MS)
        if self._ctx is not None:
            self.sock = self._ctx.wrap_socket(
                s, server_hostname=self.host, do_handshake_on_connect=False
            )

    # GET base+path; returns the body length, with the first body bytes in buf[at:end]
    # (self.at, self.end). One retry on a kept-alive connection the server has closed.
    async def get(self, path):
        req = "GET {}{} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n".format(
            self.base, path, self.host
        ).encode()
        for attempt in (0, 1):
            fresh = self.sock is None
            if fresh:
                await self._connect()
            try:
                await self._send(req)
                n = await self._head()
            except Fail:
                raise
            except ValueError as e:  # mbedTLS: the server's certificate does not verify
                self.close()
                raise Fail("TLS", str(e).strip())
            except OSError as e:
                self.close()
                if fresh:
                    raise Fail(_reason(e, self.tls), repr(e))
                continue
            if n is not None:
                return n
            self.close()  # closed before answering: a kept-alive connection timed out
            if fresh:
                raise Fail("NETWORK", "connection closed")
        raise Fail("NETWORK", "connection closed")

    async def _send(self, data):
        try:
            await write_all(self.sock, data, _IDLE_MS)
        except OSError as e:
            if e.args[0] == errno.ETIMEDOUT:
                raise Fail("TIMEOUT", "sending")
            raise

    # Read into buf[off:]; 0 when the server closed. Fails after _IDLE_MS of silence.
    async def read(self, off=0):
        t0 = time.ticks_ms()
        mv = self.mv[off:]
        while True:
            try:
                n = self.sock.readinto(mv)
            except OSError as e:
                if e.args[0] not in BUSY:
                    raise
                n = None
            if n is not None:
                return n
            if time.ticks_diff(time.ticks_ms(), t0) > _IDLE_MS:
                raise Fail("TIMEOUT", "server silent")
            await asyncio.sleep_ms(_SPIN_MS)

    # The status line and headers; returns Content-Length (None if closed at once).
    async def _head(self):
        buf = self.buf
        got = 0
        while True:
            n = await self.read(got)
            if n == 0:
                if got == 0:
                    return None
                raise Fail("NETWORK", "closed in header")
            got += n
            end = buf.find(b"\r\n\r\n", 0, got)
            if end >= 0:
                break
            if got >= _HEAD_MAX:
                raise Fail("HTTP", "header too long")
        head = bytes(buf[:end]).decode().lower().split("\r\n")
        status = head[0].split(" ")
        if len(status) < 2 or status[1] != "200":
            self.close()
            raise Fail("HTTP", head[0][:40])
        length = None
        keep = status[0] == "http/1.1"
        for line in head[1:]:
            k, _, v = line.partition(":")
            v = v.strip()
            if k == "content-length" and v.isdigit():
                length = int(v)
            elif k == "connection":
                keep = v != "close"
            elif k == "transfer-encoding" and v != "identity":
                raise Fail("HTTP", "chunked transfer not supported")
        if length is None:
            raise Fail("HTTP", "no Content-Length")
        self.keep = keep
        self.at = end + 4
        self.end = got
        return length

    # The body of the last get(), chunk by chunk: sink(memoryview) for each.
    async def body(self, length, sink):
        left = length
        k = min(self.end - self.at, left)
        if k:
            sink(self.mv[self.at : self.at + k])
            left -= k
        while left:
            try:
                n = await self.read()
            except OSError as e:
                self.close()
                raise Fail("NETWORK", repr(e))
            if n == 0:
                self.close()
                raise Fail("NETWORK", "closed after {} of {} bytes".format(length - left, length))
            n = min(n, left)
            sink(self.mv[:n])
            left -= n
        if not self.keep:
            self.close()


# The reason word of a failed exchange: mbedTLS errors are negative.
def _reason(e, tls):
    code = e.args[0] if e.args else 0
    if tls and isinstance(code, int) and code < 0:
        return "TLS"
    if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
        return "CONNECT"
    return "NETWORK"


# The TLS context: the server is verified with the root CA stored by AT+SSLCERTSET=0.
def _tls():
    import ssl

    ca = certs.der(0)
    if not ca:
        raise Fail("TLS", "no root CA (AT+SSLCERTSET=0)")
    t = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        for der in ca:
            t.load_verify_locations(cadata=der)
    except (ValueError, OSError) as e:
        raise Fail("TLS", "root CA: {!r}".format(e))
    t.verify_mode = ssl.CERT_REQUIRED
    return t


# ----- the update


def _url():
    url = ctx.settings["ota_url"]
    if not url:
        raise AtError(at.E_STATE, "no update server (AT+OTAURL)")
    if not wifi.online():
        raise AtError(at.E_STATE, "no network")
    return url


async def _manifest(http, path):
    n = await http.get(path)
    if n > _MANIFEST_MAX:
        raise Fail("MANIFEST", "too long")
    data = bytearray()
    await http.body(n, data.extend)
    try:
        m = json.loads(data)
    except ValueError:
        raise Fail("MANIFEST", "not JSON")
    if not isinstance(m, dict) or not isinstance(m.get("version"), str):
        raise Fail("MANIFEST", "no version")
    return m


def _entry(e):
    if not isinstance(e, dict):
        raise Fail("MANIFEST", "bad entry")
    p, n, h = e.get("path"), e.get("size"), e.get("sha256")
    if (
        not isinstance(p, str)
        or not isinstance(n, int)
        or not isinstance(h, str)
        or len(h) != 64
        or n < 0
        or p.startswith("/")
        or ".." in p
        or "\\" in p
    ):
        raise Fail("MANIFEST", "bad entry {!r}".format(p))
    return p, n, h


def _check(h, want, name):
    import binascii

    got = binascii.hexlify(h.digest()).decode()
    if got != want.lower():
        raise Fail("HASH", name)


# One file of the release into ota/new/<path>, hashed as it streams.
async def _file(http, prefix, path, size, sha):
    n = await http.get(prefix + path)
    if n != size:
        raise Fail("SIZE", "{}: {} bytes, manifest says {}".format(path, n, size))
    dest = _NEW + "/" + path
    settings.mkdirs(dest)
    h = hashlib.sha256()
    with open(dest, "wb") as f:

        def sink(mv):
            h.update(mv)
            f.write(mv)

        await http.body(n, sink)
    _check(h, sha, path)


# The MicroPython image into the next app partition, sector by sector, then read back.
async def _image(http, prefix, path, size, sha):
    import esp32

    part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    if size > part.info()[3] or size == 0:
        raise Fail("IMAGE", "{} bytes do not fit {}".format(size, part.info()[4]))
    n = await http.get(prefix + path)
    if n != size:
        raise Fail("SIZE", "{}: {} bytes, manifest says {}".format(path, n, size))
    block = bytearray(_BLOCK)
    h = hashlib.sha256()
    st = [0, 0]  # bytes in block, next block number

    def sink(mv):
        while mv:
            k = min(len(mv), _BLOCK - st[0])
            block[st[0] : st[0] + k] = mv[:k]
            st[0] += k
            mv = mv[k:]
            if st[0] == _BLOCK:
                h.update(block)
                part.writeblocks(st[1], block)
                st[0] = 0
                st[1] += 1

    await http.body(n, sink)
    if st[0]:
        for i in range(st[0], _BLOCK):
            block[i] = 0xFF
        h.update(memoryview(block)[: st[0]])
        part.writeblocks(st[1], block)
    _check(h, sha, path)
    h = hashlib.sha256()  # read back what the flash holds
    left = size
    for b in range((size + _BLOCK - 1) // _BLOCK):
        part.readblocks(b, block)
        h.update(memoryview(block)[: min(left, _BLOCK)])
        left -= _BLOCK
    _check(h, sha, path + " (read back)")
    return part


def _free_bytes():
    s = os.statvfs(".")
    return s[0] * s[4]


async def _install(version):
    url = ctx.settings["ota_url"]
    buf = bytearray(_BUF)
    http = Http(url, buf)
    try:
        prefix = version + "/"
        m = await _manifest(http, prefix + "manifest.json")
        if m["version"] != version:
            raise Fail("MANIFEST", "version {} is not {}".format(m["version"], version))
        files = m.get("files")
        if not isinstance(files, list) or not files:
            raise Fail("MANIFEST", "no files")
        files = [_entry(e) for e in files]
        if not any(p == "firmware/app.mpy" for p, _, _ in files):
            raise Fail("MANIFEST", "no firmware/app.mpy")
        image = _entry(m["image"]) if m.get("image") else None
        slot = ota.free_slot()
        if slot is None:
            raise Fail("STATE", "an update waits for confirmation")
        settings.remove_tree(_NEW)  # what a cut-short update left
        settings.remove_tree("ota/" + slot)  # an older release nothing points to
        bs = os.statvfs(".")[0]
        need = sum((n + bs - 1) // bs + 1 for _, n, _ in files) + _MARGIN
        if need * bs > _free_bytes():
            raise Fail("NOSPACE", "{} bytes needed, {} free".format(need * bs, _free_bytes()))
        for p, n, h in files:
            await _file(http, prefix, p, n, h)
            gc.collect()
        part = await _image(http, prefix, *image) if image else None
    finally:
        http.close()
    # The switch: the staged tree takes the free slot, then one atomic write arms it.
    os.rename(_NEW, "ota/" + slot)
    old = "-"
    new = "-"
    if part is not None:
        import esp32

        old = esp32.Partition(esp32.Partition.RUNNING).info()[4]
        new = part.info()[4]
    settings.write_file(ota.PENDING, "{} 0 {} {}".format(slot, new, old))
    if part is not None:
        try:
            part.set_boot()
        except OSError as e:
            ota.remove(ota.PENDING)
            raise Fail("IMAGE", "set_boot: {!r}".format(e))
    log.info("ota: {} staged in ota/{}, restarting".format(version, slot))


async def _update(version):
    global _task
    events.emit("OTAEVENT", "START")
    try:
        await _install(version)
    except Exception as e:
        if isinstance(e, Fail):
            reason, detail = e.reason, e.detail
        elif isinstance(e, OSError) and e.args[0] == _ENOSPC:
            reason, detail = "NOSPACE", "flash full"
        elif isinstance(e, OSError):
            reason, detail = "FLASH", repr(e)
        elif isinstance(e, MemoryError):
            reason, detail = "MEMORY", "out of memory"
        else:
            log.exc(e, "ota")
            reason, detail = "INTERNAL", repr(e)
        settings.remove_tree(_NEW)
        gc.collect()
        log.info("ota: {} failed: {} {}".format(version, reason, detail))
        ctx.serial.last_error = (at.E_FAIL, "OTA {}: {}".format(reason, detail))
        _task = None
        events.emit("OTAEVENT", "FAIL," + reason)
        return
    await ctx.serial.until_idle()
    events.emit("OTAEVENT", "SUCCESS")  # no await since: goes out now, before the reset
    from firmware.commands.system import restart

    restart()


# ----- commands


async def _check_cmd():
    url = _url()
    http = Http(url, bytearray(_BUF))
    try:
        m = await _manifest(http, "manifest.json")
    except Fail as e:
        raise AtError(at.E_FAIL, "OTA {}: {}".format(e.reason, e.detail))
    finally:
        http.close()
    return "+OTACHECK:" + m["version"]


def _start(p):
    global _task
    at.count(p, 1)
    version = at.text(p, 0, _VERSION_MAX)
    for c in version:
        if not (c.isalpha() or c.isdigit() or c in "._-"):
            raise AtError(at.E_PARAM, "parameter 1: letters, digits, . _ - only")
    _url()
    if _task is not None:
        raise AtError(at.E_STATE, "an update is running")
    if ota.free_slot() is None:
        raise AtError(at.E_STATE, "an update waits for confirmation")
    _task = asyncio.create_task(_update(version))


def _url_query():
    return "+OTAURL:" + at.escape(ctx.settings["ota_url"])


def _url_set(p):
    at.count(p, 1)
    url = at.text(p, 0, _URL_MAX)
    try:
        Http(url, b"")
    except (Fail, ValueError):
        raise AtError(at.E_PARAM, "parameter 1: http://host[:port]/path or https://...")
    ctx.settings.set("ota_url", url)


COMMANDS = {
    "OTACHECK": (_check_cmd, _check_cmd, None, _check_cmd),
    "OTASTART": (None, None, _start, None),
    "OTAURL": (_url_query, _url_query, _url_set, _url_query),
}
