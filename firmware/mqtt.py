# MQTT: one session with the broker of AT+MQTTSOCK (connect, keep alive, reconnect with
# back-off, subscriptions 0-5, publishing), driven from asyncio over lib/mqtt_qos2 (umqtt.simple
# with QoS 2 and a non-blocking reader). Commands are in commands/mqtt.py.
#
# Tasks, one per concern, owned by the session task and cancelled with it:
#   session  connect, then wait for the connection to be lost, then reconnect or give up
#   reader   wait until the socket is readable, then poll() packets (acks, messages)
#   watch    keepalive pings, a silent broker, Wi-Fi loss, acks that never come
# Handlers write packets directly (mqtt_qos2.send_*) and answer OK; outcomes arrive as
# +MQTTEVENT from the reader. Messages arrive as +MQTTRECV:<sub id>,<len>,<payload> (wire notes).
#
# Blocking spots (all short on a LAN, named here and at the call):
# - DNS (getaddrinfo) once per session and host: instant for an IP address.
# - mqtt_qos2._write() while the TCP send buffer is full, at most _WRITE_MS; on a healthy link
#   a packet of up to 4 KB goes into the buffer at once.
# The TCP connect, the TLS handshake and CONNECT/CONNACK are non-blocking (below), because
# umqtt.simple's connect() blocks for all of them.
import asyncio
import errno
import socket
import time

from micropython import const

from firmware import at, certs, ctx, events, log, settings, wifi
from firmware.aio import BUSY, readable, writable, write_all

SUBS = const(6)  # subscription ids 0-5
TOPIC_MAX = const(256)  # bytes of a topic or topic filter

_CONNECT_MS = const(10000)  # TCP + TLS + CONNACK
_ACK_MS = const(10000)  # SUBACK, UNSUBACK, PUBACK, PUBCOMP
_WRITE_MS = const(3000)  # longest a write may wait for TCP buffer space (blocking)
_TICK_MS = const(250)  # watchdog period
_WIFI_MS = const(1000)  # Wi-Fi check while waiting for it
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(16000)
_PENDING_MAX = const(16)  # acks awaited at once
_MBEDTLS_VERIFY = const(-0x2700)  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED
_EPROTO = const(71)  # newlib EPROTO: not in MicroPython's errno module

# Result words (AT+MQTTSTATUS, +MQTTEVENT); the connection status is one of the first five.
CONNECTED = "CONNECT,SUCCESS"
CONNECTING = "CONNECT,RECONNECTING"  # the spec: "Connecting", first attempt included
FAILED = "CONNECT,FAIL"  # given up: refused, or lost with AT+MQTTRECONN=OFF
INIT_ERROR = "CONNECT,INIT_ERROR"  # the configuration cannot work: no host, no CA
CLOSED = "CLOSE,SUCCESS"  # never started, or AT+MQTTCLOSE
SUB_OK = "SUBSCRIBE,SUCCESS"
SUB_FAIL = "SUBSCRIBE,FAIL"
UNSUB_OK = "UNSUBSCRIBE,SUCCESS"
UNSUB_FAIL = "UNSUBSCRIBE,FAIL"
PUB_OK = "PUBLISH,SUCCESS"
PUB_FAIL = "PUBLISH,FAIL"

# What an awaited ack completes
_PUB = const(0)
_SUB = const(1)
_UNSUB = const(2)
_QUIET = const(3)  # unsubscribing a topic a slot no longer uses: no event

settings.defaults(
    {
        "mqtt_auth": ["", ""],  # user name, password ("" = none)
        "mqtt_sock": ["", 1883],  # broker host, port
        "mqtt_caverify": [False, False],  # verify the server (root CA), send a client certificate
        "mqtt_ssl": False,
        "mqtt_cid": "",  # "" = "EMW_" + the station MAC
        "mqtt_keepalive": 60,  # s; 0 = none
        "mqtt_reconn": True,
        "mqtt_autostart": False,
        "mqttevent": True,  # factory default drivers rely on (wire notes); gated in events.py
        "mqtt_subs": [[], [], [], [], [], []],  # per id: [] or [topic filter, qos]
        "mqtt_pub": ["", 0],  # topic and QoS of AT+MQTTSEND
    }
)


class InitError(Exception):
    pass


class Refused(Exception):  # CONNACK with a return code that retrying cannot fix
    pass


# The subscription of an id as (topic, qos), or None; a malformed stored entry counts as none.
def sub(i):
    s = ctx.settings["mqtt_subs"]
    e = s[i] if len(s) == SUBS else None
    if e and len(e) == 2 and isinstance(e[0], str) and e[0] and e[1] in (0, 1, 2):
        return e[0], e[1]
    return None


def store_sub(i, entry):
    s = ctx.settings["mqtt_subs"]
    s = list(s) if len(s) == SUBS else [[] for _ in range(SUBS)]  # a new list: see settings
    s[i] = entry
    ctx.settings.set("mqtt_subs", s)


# MQTT 3.1.1 section 4.7: "+" is one whole level, "#" the whole last level.
def valid_filter(t):
    levels = t.split("/")
    last = len(levels) - 1
    for i, x in enumerate(levels):
        if ("#" in x and (x != "#" or i != last)) or ("+" in x and x != "+"):
            return False
    return "\0" not in t


def valid_topic(t):
    return "+" not in t and "#" not in t and "\0" not in t


def _match(filt, topic):
    if topic[:1] == "$" and filt[:1] in ("+", "#"):
        return False  # "$SYS/..." is not matched by a leading wildcard (4.7.2)
    f = filt.split("/")
    t = topic.split("/")
    for i, x in enumerate(f):
        if x == "#":
            return True
        if i >= len(t) or (x != "+" and x != t[i]):
            return False
    return len(f) == len(t)


# A 2-byte length, then the bytes (an MQTT string)
def _field(b):
    return bytes((len(b) >> 8, len(b) & 0xFF)) + b


# CONNECT (MQTT 3.1.1, clean session), as umqtt.simple's connect() writes it
def _connect_packet(cid, user, pswd, keepalive):
    flags = 0x02
    body = [b"\0\x04MQTT\x04", None, bytes((keepalive >> 8, keepalive & 0xFF)), _field(cid)]
    if user:
        flags |= 0x80
        body.append(_field(user))
        if pswd:
            flags |= 0x40
            body.append(_field(pswd))
    body[1] = bytes((flags,))
    body = b"".join(body)
    sz = len(body)
    hdr = bytearray(b"\x10")
    while sz > 0x7F:
        hdr.append(sz & 0x7F | 0x80)
        sz >>= 7
    hdr.append(sz)
    return bytes(hdr) + body


class Session:
    def __init__(self):
        self.status = CLOSED
        self.subs = [None] * SUBS  # per id: result word for AT+MQTTSTATUS=subscribe
        self.pub = None  # result word of the latest publish (None: none yet or awaiting)
        self.client = None  # mqtt_qos2.MQTTClient, made at the first start (4 KB buffer)
        self._task = None  # the session task while started, else None
        self._attempting = False  # the session task is connecting now (not waiting)
        self._pending = {}  # packet id -> [kind, sub id, deadline ticks]
        self._addr = None  # (host, port, address) resolved for this session
        self._busy = False  # the reader has data but waits for the UART to be idle
        self._lost = None  # asyncio.Event of the current connection: set when it is lost

    def up(self):
        return self.status == CONNECTED

    # AT+MQTTSTART: connect now. Idempotent: connected, it says CONNECT,SUCCESS again
    # (drivers re-send AT+MQTTSTART until they see it); connecting, it lets the attempt run.
    def start(self):
        if self.up():
            events.emit("MQTTEVENT", CONNECTED)
            return
        if self._task is not None:
            if self._attempting:
                return
            self._task.cancel()  # waiting for Wi-Fi or in back-off: try at once instead
        if self.client is None:
            import mqtt_qos2  # here, not at the top: 10 KB of RAM only once MQTT is used

            c = mqtt_qos2.MQTTClient("", "")
            c.set_callback(self._on_msg)
            c.set_ack_callback(self._on_ack)
            c.timeout_ms = _WRITE_MS
            self.client = c
        self._addr = None
        self.status = CONNECTING
        self._task = asyncio.create_task(self._session())

    # AT+MQTTCLOSE: DISCONNECT, close, stop reconnecting. True if there was a session.
    def close(self):
        had = self._task is not None or self.up()
        if self.up():
            try:
                self.client.disconnect()
            except OSError:
                pass  # closing anyway
        self._drop(False)
        self._lost = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._attempting = False
        self.status = CLOSED
        return had

    # Connect; on loss reconnect with back-off (AT+MQTTRECONN=ON) or give up.
    # Events: CONNECT,SUCCESS on each connection; CONNECT,RECONNECTING once per outage
    # (and when the first attempt fails); CONNECT,FAIL or CONNECT,INIT_ERROR when giving up.
    async def _session(self):
        try:
            await self._keep()
        except Exception as e:  # a bug: say so rather than stay "connecting" forever
            log.exc(e, "mqtt session")
            self._drop(False)
            self._give_up(FAILED, "internal error")

    async def _keep(self):
        backoff = _BACKOFF_MIN_MS
        told = False  # CONNECT,RECONNECTING already announced for this outage
        while True:
            if wifi.online():
                self._attempting = True
                try:
                    await asyncio.wait_for_ms(self._open(), _CONNECT_MS)
                    ok = True
                except InitError as e:
                    return self._give_up(INIT_ERROR, e)
                except Refused as e:
                    return self._give_up(FAILED, e)
                except Exception as e:  # OSError, TimeoutError; ValueError from TLS
                    # A server certificate that fails verification (ValueError on the unix
                    # port, OSError(-0x2700) elsewhere) stays wrong: no retrying.
                    if isinstance(e, ValueError) or (e.args and e.args[0] == _MBEDTLS_VERIFY):
                        return self._give_up(FAILED, e)
                    log.info("mqtt: connect failed: {!r}".format(e))
                    ok = False
                self._attempting = False
                if ok:
                    backoff = _BACKOFF_MIN_MS
                    told = False
                    await self._serve()
                    if not ctx.settings["mqtt_reconn"]:
                        return self._give_up(FAILED, "connection lost")
                    self.status = CONNECTING
                    events.emit("MQTTEVENT", CONNECTING)
                    told = True
                    continue  # reconnect at once after a loss, back off after failures
            if not ctx.settings["mqtt_reconn"]:
                return self._give_up(FAILED, "no network" if not wifi.online() else "")
            if not told:
                events.emit("MQTTEVENT", CONNECTING)
                told = True
            if not wifi.online():
                while not wifi.online():
                    await asyncio.sleep_ms(_WIFI_MS)
                continue
            await asyncio.sleep_ms(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_MS)

    def _give_up(self, word, why):
        log.info("mqtt: {} ({})".format(word, why))
        self._attempting = False
        self._task = None
        self.status = word
        events.emit("MQTTEVENT", word)

    # Open TCP (and TLS) without blocking, send CONNECT, read CONNACK; hand the socket to
    # the client. Raises InitError, Refused, OSError (retry) or a TLS error.
    async def _open(self):
        st = ctx.settings
        host, port = st["mqtt_sock"]
        if not host:
            raise InitError("no host (AT+MQTTSOCK)")
        tls = self._tls() if st["mqtt_ssl"] else None
        if tls is not None and st["mqtt_caverify"][0]:
            from firmware.tls import clock_ready  # loaded only for verified sessions

            await clock_ready()  # verification checks the certificate dates
        a = self._addr
        if a is None or a[0] != host or a[1] != port:
            # TODO this is blocking: DNS, once per session (instant for an IP address)
            ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
            a = self._addr = (host, port, ai[-1])
        user, pswd = st["mqtt_auth"]
        cid = st["mqtt_cid"] or "EMW_" + wifi.mac_text(wifi.station.wlan.config("mac"), "")
        pkt = _connect_packet(cid.encode(), user.encode(), pswd.encode(), st["mqtt_keepalive"])
        s = socket.socket()
        try:
            s.setblocking(False)
            try:
                s.connect(a[2])
            except OSError as e:
                if e.args[0] != errno.EINPROGRESS:
                    raise
            await writable(s)
            if tls is not None:
                s = tls.wrap_socket(s, server_hostname=host, do_handshake_on_connect=False)
            await write_all(s, pkt)  # on TLS the first write runs the handshake
            ack = await _recv(s, 4)
        except BaseException:  # failures, timeout and cancellation alike
            s.close()
            raise
        if ack[0] != 0x20 or ack[1] != 2:
            s.close()
            raise OSError(_EPROTO)
        if ack[3]:
            s.close()
            if ack[3] == 3:  # server unavailable: worth retrying
                raise OSError(errno.ECONNREFUSED)
            raise Refused("CONNACK {}".format(ack[3]))
        c = self.client
        c.sock = s
        c._reset()  # mqtt_qos2's state of a partly read packet: none on a new connection
        c._rel.clear()  # QoS 2 ids awaiting PUBREL: a clean session forgets them
        c.last_rx = time.ticks_ms()
        c.keepalive = st["mqtt_keepalive"]

    # The TLS context of AT+MQTTSSL / AT+MQTTCAVERIFY, certificates from AT+SSLCERTSET.
    def _tls(self):
        import ssl

        server, client = ctx.settings["mqtt_caverify"]
        t = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            if server:
                ca = certs.der(0)
                if not ca:
                    raise InitError("no root CA (AT+SSLCERTSET=0)")
                for der in ca:  # each adds a trusted certificate
                    t.load_verify_locations(cadata=der)
                t.verify_mode = ssl.CERT_REQUIRED
            else:
                t.verify_mode = ssl.CERT_NONE
            if client:
                cert, key = certs.der(1), certs.der(2)
                if not cert or not key:
                    raise InitError("no client certificate or key (AT+SSLCERTSET=1/2)")
                t.load_cert_chain(cert[0], key[0])
        except (ValueError, OSError) as e:  # a certificate or key mbedTLS cannot parse
            raise InitError(repr(e))
        return t

    # Connected: subscribe the stored ids, run reader and watchdog until the link is lost.
    async def _serve(self):
        self.status = CONNECTED
        events.emit("MQTTEVENT", CONNECTED)
        me = self._task
        lost = self._lost = asyncio.Event()
        tasks = (asyncio.create_task(self._read(lost)), asyncio.create_task(self._watch(lost)))
        try:
            for i in range(SUBS):
                if sub(i):
                    self.subscribe(i)
        except OSError:
            lost.set()
        try:
            await lost.wait()
        finally:
            for t in tasks:
                t.cancel()
            if self._task is me:  # not closed (AT+MQTTCLOSE drops the connection itself)
                self._lost = None
                self._drop(ctx.settings["mqtt_reconn"])

    # Forget the connection: close the socket, report awaited acks. With `again` (a reconnect
    # follows) subscriptions are simply redone; otherwise they are reported failed.
    def _drop(self, again):
        c = self.client
        if c is not None and c.sock is not None:
            try:
                c.sock.close()
            except OSError:
                pass
            c.sock = None
        if self.up():
            self.status = CONNECTING
        pending = self._pending
        self._pending = {}
        for kind, i, _ in pending.values():
            if kind == _PUB:
                self.pub = PUB_FAIL
                events.emit("MQTTEVENT", PUB_FAIL)
            elif kind == _SUB and not again:
                self.subs[i] = SUB_FAIL
                events.emit("MQTTEVENT", "{},{}".format(i, SUB_FAIL))
            elif kind == _UNSUB:  # the broker forgets subscriptions with the session
                self.subs[i] = UNSUB_OK
                events.emit("MQTTEVENT", "{},{}".format(i, UNSUB_OK))
        for i in range(SUBS):
            if self.subs[i] == SUB_OK:
                self.subs[i] = None

    # Reader: handle every packet the socket has, then wait for more. A packet is only read
    # while no response is open on the UART, so a +MQTTRECV goes out at once, never inside a
    # response (data waits in the socket meanwhile: TCP back-pressure, no copy held here).
    async def _read(self, lost):
        c = self.client
        s = c.sock
        try:
            while True:
                await readable(s)
                self._busy = True
                while True:
                    await ctx.serial.until_idle()
                    # no await from here to the end of poll(): _on_msg pushes to the UART
                    if c.poll() is None:
                        break
                    await asyncio.sleep_ms(0)  # let the UART and others run between packets
                self._busy = False
        except Exception as e:  # OSError(-1) when the broker closes, MQTTException
            log.info("mqtt: connection lost: {!r}".format(e))
        self._busy = False
        lost.set()

    # Watchdog: PINGREQ every keepalive/2; the broker is dead after 2 keepalives without a
    # packet; Wi-Fi loss drops the connection (as the board's stack would); ack deadlines.
    async def _watch(self, lost):
        c = self.client
        k = c.keepalive * 1000
        pinged = time.ticks_ms()
        try:
            while True:
                await asyncio.sleep_ms(_TICK_MS)
                now = time.ticks_ms()
                if not wifi.online():
                    log.info("mqtt: Wi-Fi down")
                    break
                if k:
                    if not self._busy and time.ticks_diff(now, c.last_rx) > 2 * k:
                        log.info("mqtt: broker silent")
                        break
                    if time.ticks_diff(now, pinged) >= k // 2:
                        c.ping()
                        pinged = now
                self._expire(now)
        except OSError as e:
            log.info("mqtt: ping failed: {!r}".format(e))
        lost.set()

    def _expire(self, now):
        late = [p for p, e in self._pending.items() if time.ticks_diff(now, e[2]) > 0]
        for pid in late:
            kind, i, _ = self._pending.pop(pid)
            if kind == _PUB:
                self.pub = PUB_FAIL
                events.emit("MQTTEVENT", PUB_FAIL)
            elif kind == _SUB:
                self.subs[i] = SUB_FAIL
                events.emit("MQTTEVENT", "{},{}".format(i, SUB_FAIL))
            elif kind == _UNSUB:
                self.subs[i] = UNSUB_FAIL
                events.emit("MQTTEVENT", "{},{}".format(i, UNSUB_FAIL))

    def _await(self, pid, kind, i):
        self._pending[pid] = [kind, i, time.ticks_add(time.ticks_ms(), _ACK_MS)]

    def _check_room(self):
        if len(self._pending) >= _PENDING_MAX:
            raise at.AtError(at.E_STATE, "{} requests await their acks".format(_PENDING_MAX))

    # Send SUBSCRIBE for stored id i (connected only); SUBACK reports it.
    def subscribe(self, i):
        topic, qos = sub(i)
        self.subs[i] = None
        for pid, e in list(self._pending.items()):  # an earlier request for the same id
            if e[0] in (_SUB, _UNSUB) and e[1] == i:
                del self._pending[pid]
        self._check_room()
        self._await(self.client.send_subscribe(topic.encode(), qos), _SUB, i)

    # Send UNSUBSCRIBE for a topic that id i used; UNSUBACK reports it (quietly for a
    # replaced topic). A topic that another id still uses stays subscribed at the broker.
    def unsubscribe(self, i, topic, quiet=False):
        self.subs[i] = None
        for j in range(SUBS):
            e = sub(j)
            if j != i and e and e[0] == topic:
                if not quiet:
                    self.subs[i] = UNSUB_OK
                    events.emit("MQTTEVENT", "{},{}".format(i, UNSUB_OK))
                return
        self._check_room()
        pid = self.client.send_unsubscribe(topic.encode())
        self._await(pid, _QUIET if quiet else _UNSUB, i)

    # Publish data (a memoryview valid during the call) to the AT+MQTTPUB topic.
    def publish(self, data):
        topic, qos = ctx.settings["mqtt_pub"]
        if qos:
            self._check_room()
        self.pub = None
        pid = self.client.send_publish(topic.encode(), data, qos=qos)
        if qos:
            self._await(pid, _PUB, None)
        else:
            self.pub = PUB_OK
            events.emit("MQTTEVENT", PUB_OK)

    # A handler's write failed: the connection is gone; the session task takes it from here.
    def broken(self):
        if self._lost is not None:
            self._lost.set()

    # PUBACK, PUBCOMP, SUBACK, UNSUBACK (called by poll() in the reader)
    def _on_ack(self, op, pid, code):
        e = self._pending.pop(pid, None)
        if e is None:
            return  # PINGRESP (pid 0), or an ack that came after its deadline
        kind, i, _ = e
        if kind == _PUB:
            self.pub = PUB_OK
            events.emit("MQTTEVENT", PUB_OK)
        elif kind == _SUB:
            self.subs[i] = SUB_FAIL if code == 0x80 else SUB_OK
            events.emit("MQTTEVENT", "{},{}".format(i, self.subs[i]))
        elif kind == _UNSUB:
            self.subs[i] = UNSUB_OK
            events.emit("MQTTEVENT", "{},{}".format(i, UNSUB_OK))

    # A message, to the lowest id whose filter matches its topic (called by poll() in the
    # reader, right after until_idle()). Messages are data, not status events: they are
    # always delivered, whatever AT+MQTTEVENT says.
    def _on_msg(self, topic, msg):
        try:
            t = topic.decode()
        except UnicodeError:
            t = ""
        for i in range(SUBS):
            e = sub(i)
            if e and _match(e[0], t):
                ctx.serial.push("+MQTTRECV:{},{},".format(i, len(msg)), msg)
                return
        log.info("mqtt: message on {!r} matches no subscription".format(topic))


# Write all of buf to a non-blocking socket; on TLS the first writes drive the handshake.
# Read exactly n bytes from a non-blocking socket.
async def _recv(s, n):
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        try:
            r = s.readinto(mv[got:])
        except OSError as e:
            if e.args[0] not in BUSY:
                raise
            r = None
        if r is None:
            await readable(s)
        elif r == 0:
            raise OSError(-1)  # closed by the broker
        else:
            got += r
    return buf


_session = None
_auto = None  # the AT+MQTTAUTOSTART task


# The session, made on first use: the first MQTT command, or start() (this module loads only
# when one of them needs it).
def get():
    global _session
    if _session is None:
        _session = Session()
    return _session


# At start-up (app.py, after wifi.start()): with AT+MQTTAUTOSTART=ON, connect once Wi-Fi is up.
def start():
    global _auto
    if ctx.settings["mqtt_autostart"] and _auto is None:
        _auto = asyncio.create_task(_autostart())


async def _autostart():
    while not wifi.online():
        await asyncio.sleep_ms(_WIFI_MS)
    s = get()
    if s.status == CLOSED and s._task is None:
        s.start()
