# SoftAP provisioning (AT+SMARTSTART=5): the module opens a set-up access point and serves a
# small web page on it where a phone picks the network to join and types its key. Commands
# are in commands/provision.py; this is the state they act on.
#
# The set-up AP is named EMW-SETUP-<last 6 hex digits of AT+WMAC>, open, or WPA2 with the
# key of AT+SMARTKEY (extension). It borrows the soft AP interface: a soft AP the host set
# with AT+WSAP comes back when provisioning ends. While it runs, a station that was still
# trying to join stops trying (the ESP32 radio hops channels while it searches, which drops
# the phone); it tries again if provisioning ends without a new network.
#
# Where the server listens (AT+SMARTHTTP, extension): port 80 of the soft AP's own address
# by default (192.168.4.1). On the PC the launcher maps 192.168.4.1:80 to a loopback port it
# prints (host/board/socket.py); AT+SMARTHTTP=<ip>,<port> picks another address.
#
# HTTP interface (HTTP/1.1, one request per connection, "Connection: close"):
#   GET  /             the set-up page: the networks of the last scan, and a form
#   GET  /?rescan=1    the same after a new scan (at most one per 15 s: a scan blocks the
#                      loop, ~2 s on the board, as network.WLAN.scan does)
#   POST /             the form (application/x-www-form-urlencoded: ssid, key); the module
#                      tries to join, then answers the page with the outcome
#   GET  /networks     JSON [{"ssid": "...", "rssi": -42, "auth": "WPA2_PSK"}, ...]
#   POST /provision    JSON {"ssid": "...", "key": "..."} (key optional) ->
#                      {"ok": true} or {"ok": false, "error": "<why>"}, why one of
#                      "wrong key", "network not found", "could not join", "busy",
#                      "bad request"
#   anything else      404 (405 for another method)
# A successful join stores the credentials as AT+WJAP does (the station keeps them across
# restarts), emits +WEVENT:STATION_UP as usual and then +SMARTEVENT:PROVISIONED,<ssid> (SSID
# escaped as in replies; gated by AT+WEVENT), answers the phone, and 1.5 s later closes the
# set-up AP (+WEVENT:AP_DOWN) and the server. A failed join changes nothing stored and the
# set-up AP stays up.
#
# Limits, against a hostile or broken client: request line and each header line 512 bytes
# (414/431), 32 header lines (431), body 512 bytes (413), no chunked bodies (411), the whole
# request within 10 s (408, against slow-loris), the answer out within 10 s. At most two
# connections are served at a time; a third takes the place of the oldest one that is still
# sending its request (that one is closed). Each connection has a preallocated 512-byte
# buffer, allocated at start and freed at stop.
import asyncio
import json
import time

import network
from micropython import const

from firmware import aio, at, btid, ctx, events, settings, wifi

PREFIX = "EMW-SETUP-"

_LINE = const(512)  # request line, header line, and body
_HEADERS = const(32)
_READ_MS = const(10000)  # the whole request must be in within this
_WRITE_MS = const(10000)  # the answer must be out within this
_SLOTS = const(2)  # connections served at a time
_BACKLOG = const(2)  # connections the stack holds until they are taken
_JOIN_MS = const(25000)  # wifi gives up an attempt after 20 s
_RESCAN_MS = const(15000)
_STOP_MS = const(1500)  # after success: time for the answer to reach the phone
_NETS_MAX = const(20)


# An HTTP failure: status code (0 = the peer is gone, answer nothing).
class _Bad(Exception):
    pass


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

_JOIN_ERRORS = {wifi.ERR_PASSWORD: "wrong key", wifi.ERR_NO_SSID: "network not found"}

# The page, in pieces written one after the other (the page is never whole in RAM): the
# head, a line per network, the form. About 2.5 KB for ten networks.
_HEAD = (
    "<!doctype html><html lang=en><head><meta charset=utf-8>"
    "<meta name=viewport content='width=device-width,initial-scale=1'>"
    "<title>Wi-Fi set-up</title><style>"
    "body{font-family:sans-serif;margin:1em auto;max-width:28em;padding:0 1em;color:#222}"
    "input,button{font-size:1.1em;width:100%;box-sizing:border-box;margin:.3em 0;padding:.5em}"
    "h1{font-size:1.7em}h2{font-size:1.2em}#dev{color:#555;margin-top:-.5em}ul{list-style:none;padding:0}"
    "li button{display:flex;align-items:center;gap:.5em;text-align:left;background:#f4f6fb;"
    "border:1px solid #ccd;border-radius:.3em}li .on{background:#dde6ff;border-color:#46c}"
    ".n{flex:1;overflow-wrap:anywhere}small{color:#555;white-space:nowrap}"
    ".g{display:inline-flex;align-items:flex-end;gap:2px;height:1em}"
    ".g i{width:4px;background:#ccd}.g i:nth-child(2){height:45%}.g i:nth-child(3){height:70%}"
    ".g i:nth-child(1){height:20%}.g i:nth-child(4){height:100%}"
    ".s1 i:nth-child(-n+1),.s2 i:nth-child(-n+2),.s3 i:nth-child(-n+3),.s4 i{background:#2a7}"
    ".k{display:inline-block;position:relative;width:.6em;height:.45em;margin:.3em .1em 0;"
    "background:#666;border-radius:1px}.k:before{content:'';position:absolute;left:.1em;"
    "bottom:100%;width:.24em;height:.22em;border:.08em solid #666;border-bottom:0;"
    "border-radius:.2em .2em 0 0}"
    "label{display:block;margin-top:.5em}label.c{display:flex;gap:.4em;align-items:center}"
    "label.c input{width:auto}.ok{color:#070}.err{color:#b00}"
    "</style><script>function p(b){document.f.ssid.value=b.value;"
    "for(const e of document.querySelectorAll('.net'))e.classList.toggle('on',e==b);"
    "document.f.key.focus()}</script></head><body><h1>Wi-Fi set-up</h1>"
)
_FORM = (
    "<label>Network<input name=ssid id=ssid maxlength=32 required value='{}'></label>"
    "<label>Key<input name=key id=key type=password maxlength=64></label>"
    "<label class=c><input type=checkbox id=show "
    "onclick=\"document.f.key.type=this.checked?'text':'password'\">Show key</label>"
    "<button id=join>Join</button></form></body></html>"
)
# Security as people name it, by the ESP32's authmode number (network.AUTH_*: OPEN, WEP,
# WPA_PSK, WPA2_PSK, WPA_WPA2_PSK, WPA2_ENTERPRISE, WPA3_PSK, WPA2_WPA3_PSK, WAPI_PSK, OWE).
_SECURITY = (
    "Open",
    "WEP",
    "WPA",
    "WPA2",
    "WPA/WPA2",
    "WPA2 Enterprise",
    "WPA3",
    "WPA2/WPA3",
    "WAPI",
    "Enhanced Open",
)
_UNLOCKED = (0, 9)  # no key to type: open, and OWE (encrypted, keyless)


# 1..4 bars for a signal strength in dBm.
def bars(rssi):
    return 4 if rssi >= -55 else 3 if rssi >= -67 else 2 if rssi >= -78 else 1


def security(auth):
    return _SECURITY[auth] if 0 <= auth < len(_SECURITY) else "Secured"


def ap_ssid():
    mac = wifi.station.wlan.config("mac")
    return PREFIX + wifi.mac_text(mac[3:], "").upper()


# Text for HTML: what a hostile SSID could use to inject markup is escaped.
def _html(s):
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#39;")):
        if a in s:
            s = s.replace(a, b)
    return s


_HEX = b"0123456789abcdefABCDEF"


# application/x-www-form-urlencoded value (bytes) -> str
def _unquote(b):
    b = b.replace(b"+", b" ")
    if b"%" in b:
        parts = b.split(b"%")
        out = bytearray(parts[0])
        for p in parts[1:]:
            if len(p) < 2 or p[0] not in _HEX or p[1] not in _HEX:
                raise _Bad(400)
            out.append(int(p[:2].decode(), 16))
            out.extend(p[2:])
        b = bytes(out)
    try:
        return b.decode()
    except UnicodeError:
        raise _Bad(400)


# The credentials a client sent, checked as AT+WJAP checks them.
def _credentials(ssid, key):
    if not isinstance(ssid, str) or not isinstance(key, str):
        return None
    if not 1 <= len(ssid.encode()) <= 32 or len(key.encode()) > 64:
        return None
    return ssid, key


class _Slot:
    def __init__(self):
        self.buf = bytearray(_LINE)
        self.mv = memoryview(self.buf)
        self.i = 0  # start of the unread bytes in buf
        self.n = 0  # end of the bytes in buf
        self.task = None  # the task serving the connection; None: free
        self.reading = False  # the request is still coming in
        self.since = 0  # ticks when the connection was taken


class Server:
    def __init__(self):
        self.slots = [_Slot() for _ in range(_SLOTS)]
        self.srv = None  # the listening socket
        self.nets = []  # (ssid, rssi, authmode) of the last scan, strongest first
        self.scanned = None  # ticks of the last scan
        self.joining = False
        self.done = False  # a network was joined
        self.resume = False  # the station was stopped at start: rejoin at stop
        self.tasks = []

    # ----- connections

    async def _accept(self):
        while True:
            c, _ = await aio.accept(self.srv)
            aio.task(self.client(c))

    async def client(self, sock):
        me = asyncio.current_task()
        slot = self._take(me)
        try:
            if slot is None:
                return  # every slot is answering a request: this one is closed at once
            try:
                req = await asyncio.wait_for_ms(aio.task(self._request(sock, slot)), _READ_MS)
            except asyncio.TimeoutError:
                raise _Bad(408)
            slot.reading = False
            status, ctype, body = await self._answer(*req)
            await asyncio.wait_for_ms(aio.task(self._send(sock, status, ctype, body)), _WRITE_MS)
        except _Bad as e:
            code = e.args[0]
            if code:
                try:
                    msg = _REASONS[code]
                    sending = aio.task(self._send(sock, code, "text/plain", msg))
                    await asyncio.wait_for_ms(sending, 2000)
                except Exception:
                    pass  # the client has gone or does not read: closed below
        except Exception:
            pass  # OSError: the peer reset or went away; TimeoutError: it stopped reading
        finally:
            if slot is not None and slot.task is me:
                slot.task = None
            sock.close()

    # A free slot, or the one of the oldest connection still sending its request.
    def _take(self, task):
        pick = None
        for s in self.slots:
            if s.task is None:
                pick = s
                break
            if s.reading and (pick is None or time.ticks_diff(s.since, pick.since) < 0):
                pick = s
        if pick is None:
            return None
        if pick.task is not None:
            pick.task.cancel()  # it owns pick no more: its finally sees another task in it
        pick.task = task
        pick.reading = True
        pick.since = time.ticks_ms()
        pick.i = pick.n = 0
        return pick

    # One line of the request, without its CR LF, as bytes.
    async def _line(self, sock, slot):
        buf = slot.buf
        while True:
            j = buf.find(b"\n", slot.i, slot.n)
            if j >= 0:
                line = bytes(slot.mv[slot.i : j])
                slot.i = j + 1
                return line[:-1] if line[-1:] == b"\r" else line
            await self._more(sock, slot)

    # Read more into the slot's buffer, moving the unread bytes to its start first.
    async def _more(self, sock, slot):
        if slot.i:
            rest = slot.n - slot.i
            slot.mv[:rest] = bytes(slot.mv[slot.i : slot.n])
            slot.i, slot.n = 0, rest
        if slot.n == _LINE:
            raise _Bad(431)
        k = await aio.read_some(sock, slot.mv[slot.n :])
        if not k:
            raise _Bad(0)  # the peer closed before its request was complete
        slot.n += k

    # (method, path, query, content type, body) of the request.
    async def _request(self, sock, slot):
        try:
            line = await self._line(sock, slot)
        except _Bad as e:
            raise _Bad(414 if e.args[0] == 431 else e.args[0])
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _Bad(400)
        length = 0
        ctype = b""
        for _ in range(_HEADERS + 1):
            h = await self._line(sock, slot)
            if not h:
                break
            k, sep, v = h.partition(b":")
            if not sep:
                raise _Bad(400)
            k = k.strip().lower()
            v = v.strip()
            if k == b"content-length":
                if not v.isdigit() or len(v) > 6:
                    raise _Bad(400)
                length = int(v)
            elif k == b"content-type":
                ctype = v.lower()
            elif k == b"transfer-encoding":
                raise _Bad(411)
        else:
            raise _Bad(431)
        if length > _LINE:
            raise _Bad(413)
        while slot.n - slot.i < length:
            await self._more(sock, slot)
        body = bytes(slot.mv[slot.i : slot.i + length])
        path, _, query = parts[1].partition(b"?")
        return parts[0], path, query, ctype, body

    # body: text, or pieces of text (a generator: sent one by one, the end of the body is
    # the end of the connection, so the whole never needs to be in RAM at once).
    async def _send(self, sock, status, ctype, body):
        whole = isinstance(body, str)
        head = (
            "HTTP/1.1 {} {}\r\nContent-Type: {}; charset=utf-8\r\n{}"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n".format(
                status,
                _REASONS[status],
                ctype,
                "Content-Length: {}\r\n".format(len(body.encode())) if whole else "",
            )
        )
        await aio.write_all(sock, head)
        for piece in (body,) if whole else body:
            await aio.write_all(sock, piece)

    # ----- what the server says

    # (status, content type, body) for a request.
    async def _answer(self, method, path, query, ctype, body):
        if path == b"/":
            if method == b"GET":
                if query == b"rescan=1" or self.scanned is None:
                    self.scan()
                return 200, "text/html", self.page(None, None, "")
            if method == b"POST":
                ssid = key = ""
                for field in body.split(b"&"):
                    k, _, v = field.partition(b"=")
                    if k == b"ssid":
                        ssid = _unquote(v)
                    elif k == b"key":
                        key = _unquote(v)
                cred = _credentials(ssid, key)
                if cred is None:
                    return 200, "text/html", self.page(False, "the network name is missing", "")
                err = await self.join(*cred)
                if err is None:
                    return 200, "text/html", self.page(True, ssid, ssid)
                return 200, "text/html", self.page(False, "{}: {}".format(ssid, err), ssid)
            raise _Bad(405)
        if path == b"/networks":
            if method != b"GET":
                raise _Bad(405)
            nets = [{"ssid": s, "rssi": r, "auth": wifi.auth_name(a)} for s, r, a in self.nets]
            return 200, "application/json", json.dumps(nets)
        if path == b"/provision":
            if method != b"POST":
                raise _Bad(405)
            try:
                d = json.loads(body)
                cred = _credentials(d.get("ssid"), d.get("key", ""))
            except Exception:  # ValueError, or not an object
                cred = None
            err = "bad request" if cred is None else await self.join(*cred)
            res = {"ok": err is None}
            if err is not None:
                res["error"] = err
            return 200, "application/json", json.dumps(res)
        raise _Bad(404)

    # The set-up page, as pieces of text: ok None (no attempt yet), True (msg = the SSID
    # joined) or False (msg = what went wrong); chosen: the SSID to show picked in the form.
    def page(self, ok, msg, chosen):
        yield _HEAD
        yield "<p id=dev>{} &middot; MAC {}</p>".format(
            _html(btid.name()), wifi.mac_text(wifi.station.wlan.config("mac")).upper()
        )
        if ok:
            yield (
                "<p id=result class=ok>Connected to <b>{}</b>. "
                "This set-up network now closes.</p></body></html>".format(_html(msg))
            )
            return
        if ok is not None:
            yield "<p id=result class=err>Could not connect: {}.</p>".format(_html(msg))
        yield "<form name=f method=post action='/'><h2>Networks</h2><ul id=nets>"
        for ssid, rssi, auth in self.nets:
            e = _html(ssid)
            yield (
                "<li><button type=button class='net{}' onclick=p(this) value='{}'>"
                "<span class=n>{}</span><small>{}</small>{}"
                "<b class='g s{}' title='{} dBm'><i></i><i></i><i></i><i></i></b>"
                "</button></li>".format(
                    " on" if ssid == chosen else "",
                    e,
                    e,
                    security(auth),
                    "" if auth in _UNLOCKED else "<i class=k title='needs a key'></i>",
                    bars(rssi),
                    rssi,
                )
            )
        yield "</ul><p><a href='/?rescan=1'>Scan again</a></p>"
        yield _FORM.format(_html(chosen))

    # ----- the radio

    # Scan for networks (rate-limited). blocking: network.WLAN.scan holds the loop ~2 s on
    # the board (scan_ms on the PC); MicroPython has no non-blocking scan.
    def scan(self):
        now = time.ticks_ms()
        if self.scanned is not None and time.ticks_diff(now, self.scanned) < _RESCAN_MS:
            return
        self.scanned = now
        try:
            found = wifi.station.scan()
        except OSError:
            return
        if not found and wifi.station.state == wifi.CONNECTING:
            return  # ESP-IDF does not scan while joining: keep the last list
        nets = []
        seen = set()
        for ssid, _bssid, _chan, rssi, auth, _hidden in found:
            if ssid and ssid not in seen and len(nets) < _NETS_MAX:
                seen.add(ssid)
                try:
                    nets.append((ssid.decode(), rssi, auth))
                except UnicodeError:
                    pass  # an SSID that is not UTF-8 cannot be typed in the form either
        self.nets = nets

    # Join ssid with key: None on success, else why not. The credentials are stored as
    # AT+WJAP stores them; on failure the previous ones come back, and a station that was
    # joined joins its AP again.
    async def join(self, ssid, key):
        if self.joining or self.done:
            return "busy"
        self.joining = True
        st = wifi.station
        old = {"sta": ctx.settings["sta"], "sta_on": ctx.settings["sta_on"]}
        was_up = st.state == wifi.UP
        ok = False
        try:
            ctx.settings.update({"sta": [ssid, key], "sta_on": True})
            st.join()
            waited = 0
            while waited < _JOIN_MS:
                await asyncio.sleep_ms(50)
                waited += 50
                if st.state != wifi.CONNECTING:
                    break
            ok = st.state == wifi.UP
            if not ok:
                return _JOIN_ERRORS.get(st.error, "could not join")
            self.done = True
            self.resume = False
            events.emit("SMARTEVENT", "PROVISIONED," + at.escape(ssid))
            self.tasks.append(aio.task(_stop_later()))
            return None
        finally:
            self.joining = False
            if not ok:
                ctx.settings.update(old)
                if was_up:
                    st.join()
                else:
                    st.quit(announce=False)  # no retries with a key that failed

    # Every task cancelled (the accept task leaves the poller), then the socket closed.
    def close(self):
        for s in self.slots:
            if s.task is not None:
                s.task.cancel()
                s.task = None
        me = asyncio.current_task()
        for t in self.tasks:
            if t is not me:
                t.cancel()
        if self.srv is not None:
            self.srv.close()


_server = None  # the running Server, None when provisioning is off


def running():
    return _server is not None


# Provisioning is off (registry.py may release this module).
def idle():
    return _server is None


# Open the set-up AP and its web server (AT+SMARTSTART=5). Raises at.AtError when the
# server cannot listen; nothing is left running then.
def start():
    global _server
    if _server is not None:
        return
    s = Server()
    addr, port = ctx.settings["prov_http"]
    ap = wifi.softap.wlan
    ap.active(True)
    key = ctx.settings["prov_key"]
    if key:
        ap.config(ssid=ap_ssid(), key=key, authmode=network.AUTH_WPA2_PSK)
    else:
        ap.config(ssid=ap_ssid(), authmode=network.AUTH_OPEN)
    wifi.softap.apply_ip()
    if addr == "AP":
        addr = ap.ifconfig()[0]
    try:
        s.srv = aio.listen(addr, port, _BACKLOG)
    except OSError as e:
        _restore_ap(False)
        raise at.AtError(at.E_FAIL, "web server on {}:{}: {}".format(addr, port, e))
    events.emit("WEVENT", "AP_UP")
    st = wifi.station
    if st.state != wifi.UP:
        s.resume = ctx.settings["sta_on"] and bool(ctx.settings["sta"][0])
        st.quit(announce=False)
    _server = s
    s.tasks.append(aio.task(s._accept()))
    s.tasks.append(aio.task(_first_scan(s)))


async def _first_scan(s):
    await asyncio.sleep_ms(100)  # after the OK of AT+SMARTSTART has gone out
    s.scan()


async def _stop_later():
    await asyncio.sleep_ms(_STOP_MS)
    stop()


# End provisioning (AT+SMARTSTOP, or after success): the server closes, the soft AP goes
# back to what the host set (or down), a station stopped at start tries again.
def stop():
    global _server
    s = _server
    if s is None:
        return
    _server = None
    s.close()
    _restore_ap(True)
    if s.resume and not s.done:
        wifi.station.join()


# AT+SMARTSTOP=<type> (the spec) or AT+SMARTSTOP (its row is in commands/provision.py; here so
# that it runs without that module, registry.get): OK when none runs and its tasks have ended
# (what they held is free for the host's next command).
async def at_smartstop(p=None):
    if p is not None:
        at.count(p, 1)
        at.integer(p, 0, 1, 5)
    stop()
    await aio.settle()


# Give the soft AP back to the host's AT+WSAP settings, or turn it off (announced only if
# the set-up AP was).
def _restore_ap(announced):
    if ctx.settings["ap_on"] and ctx.settings["ap"][0]:
        wifi.softap.start()
    elif announced:
        wifi.softap.stop()
    else:
        wifi.softap.wlan.active(False)
