# MQTT: one session with the broker of AT+MQTTSOCK (connect, keep alive, reconnect with
# back-off, subscriptions 0-5, publishing and receiving at QoS 0-2), on asyncio with a
# non-blocking socket. The packets are firmware/mqttpkt.py (MQTT 3.1.1); the commands are in
# commands/mqtt.py.
#
# Tasks, owned by the session and cancelled with it:
#   session  connect (CONNECT, CONNACK, SUBSCRIBE of the stored ids), wait for the connection
#            to be lost, then reconnect with back-off or give up
#   reader   read packets: acks complete requests, messages are held for the deliverer
#   deliver  write held messages to the UART once no response is open
#   watch    keepalive pings, a silent broker, Wi-Fi loss, acks that never come
# Handlers write their packet and answer OK; outcomes arrive as +MQTTEVENT from the reader.
# Messages arrive as +MQTTRECV:<sub id>,<len>,<payload> (wire notes).
#
# Blocking spot: DNS (getaddrinfo), once per session and host; instant for an IP address.
import asyncio
import errno
import gc
import socket
import time

from micropython import const

from firmware import aio, at, ctx, events, log, mqttpkt, registry, serial, settings, wifi

tls = None  # firmware.tls, imported for the first session over TLS: a plain one carries none

SUBS = const(6)  # subscription ids 0-5
TOPIC_MAX = const(256)  # bytes of a topic or topic filter

_CONNECT_MS = const(10000)  # TCP + TLS + CONNACK + SUBACK of the stored subscriptions
_ACK_MS = const(10000)  # SUBACK, UNSUBACK, PUBACK, PUBCOMP
_ROOM_MS = const(10000)  # a publish or subscribe waits this long for room in the window
_WRITE_MS = const(5000)  # a write that makes no progress this long: the connection is gone
_TICK_MS = const(250)  # watchdog period
_WIFI_MS = const(1000)  # Wi-Fi check while waiting for it
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(16000)
_WINDOW = const(16)  # requests awaiting their acks at once
_RX = const(4096 + 256 + 9)  # a received packet: 4 KB of payload, topic, headers
# In a heap fragmented past _RX, the largest half of it found, down to this: a session whose
# longer packets are dropped (and logged) beats none.
_RX_MIN = const(1024)
# And the largest half that leaves this much free beside it: for the transmit buffer (_TX_MIN
# for most configurations), the connection's objects (socket, TLS, tasks: ~2.5 KB) and the
# host's commands. At 110k, MQTT over TLS after every other feature was used once got the
# whole buffer and left ~1.5 KB: AT+MQTTPUB then ran out of memory.
_ROOM = const(7168)
# Packets to send: at least a SUBSCRIBE of one filter or a PUBLISH's header with the longest
# topic (a payload is written from the data phase's buffer), and as much as the stored
# configuration's CONNECT and SUBSCRIBE take (_tx_size): 1.6 KB for the longest, about 300
# bytes for most.
_TX_MIN = const(TOPIC_MAX + 16)

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


# Why a connection failed or ended: Failure(reason for AT+MQTTERR), worth retrying, or
# Failure(reason, word) to give up with that result word: INIT_ERROR when the configuration
# cannot work, FAILED when refused in a way that retrying cannot fix.
class Failure(Exception):
    pass


# The subscription of an id as (topic, qos), or None; a malformed stored entry counts as none.
def sub(i):
    s = ctx.settings["mqtt_subs"]
    e = s[i] if len(s) == SUBS else None
    if e and len(e) == 2 and isinstance(e[0], str) and e[0] and e[1] in (0, 1, 2):
        return e[0], e[1]
    return None


# Bytes of the packet buffer for the stored configuration: CONNECT with its id (the module's
# own: 16) and credentials, SUBSCRIBE of its filters, and at least _TX_MIN.
def _tx_size():
    st = ctx.settings
    user, pswd = st["mqtt_auth"]
    n = 21 + (len(st["mqtt_cid"].encode()) or 16) + len(user.encode()) + len(pswd.encode())
    m = 7
    for i in range(SUBS):
        e = sub(i)
        if e:
            m += 3 + len(e[0].encode())
    return max(_TX_MIN, n, m)


def store_sub(i, entry):
    s = ctx.settings["mqtt_subs"]
    s = list(s) if len(s) == SUBS else [[] for _ in range(SUBS)]  # a new list: see settings
    s[i] = entry
    ctx.settings.set("mqtt_subs", s)


_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the broker",
    errno.ECONNABORTED: "connection aborted",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "timed out",
    errno.ENOTCONN: "not connected",
}


# A failure in plain words, one line.
def _why(e):
    if isinstance(e, Failure):
        return e.args[0]
    if isinstance(e, at.AtError):  # from tls: no clock yet, no memory for another session
        return e.detail
    if isinstance(e, ValueError) and tls:  # mbedTLS: the certificate check, with its reason
        return "TLS: " + tls.reason(e)
    if isinstance(e, asyncio.TimeoutError):
        return "no answer from the broker within {} s".format(_CONNECT_MS // 1000)
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        code = e.args[0]
        if code < 0:  # mbedTLS error codes are negative
            return "TLS error -0x{:x}".format(-code)
        return _WORDS.get(code) or errno.errorcode.get(code, "error {}".format(code))
    return aio.why(e)


class Session:
    def __init__(self):
        self.status = CLOSED
        self.subs = [None] * SUBS  # per id: result word for AT+MQTTSTATUS=subscribe
        self.pub = None  # result word of the latest publish (None: none yet or awaiting)
        self._task = None  # the session task while started, else None
        self._tasks = ()  # reader, deliverer and watchdog of the current connection
        self._attempting = False  # the session task is connecting now (not waiting)
        self._sock = None
        self._tls_held = False  # holds one of tls's sessions
        self._tls = None  # (tls.made_for, SSLContext) of the session's connections, made at start
        self._tx = None  # packet buffer (bytearray), from AT+MQTTSTART to AT+MQTTCLOSE
        self._rx = None  # mqttpkt.Reader, same lifetime
        self._lock = None  # one packet at a time on the socket
        self._room = asyncio.Event()  # set when an awaited ack leaves the window
        self._pending = {}  # packet id -> [kind, sub id, deadline ticks]
        self._pid = 0  # the last packet id used
        self._rel = set()  # ids of QoS 2 messages delivered, awaiting their PUBREL
        self._addr = None  # (host, port, address) resolved for this session
        self._last_rx = 0  # ticks of the latest bytes from the broker
        self._held = asyncio.Event()  # set when the reader holds a message for the UART
        self._freed = asyncio.Event()  # set when the deliverer gives the reader room again
        self._busy = False  # the reader waits for room: held messages fill its buffer
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
        if self._tx is None:  # the buffers: all or none (MemoryError)
            gc.collect()  # the commands' garbage goes first: the buffers take the lowest runs
            # The context first: it takes 3 KB in one piece, where the receive buffer can be
            # smaller. Made, it serves the next AT+MQTTSTART if the buffers do not fit now.
            try:
                self._context()
            except at.AtError:
                pass  # no certificate: the attempt says so (CONNECT,INIT_ERROR)
            gc.collect()  # the certificates' garbage: what is free is counted (_ROOM)
            buf = aio.buffer(_RX, _RX_MIN, _ROOM)
            tx = bytearray(_tx_size())
            rx = mqttpkt.Reader(buf)
            if len(buf) < _RX:
                log.warn(
                    "mqtt: {} bytes for a received packet (heap fragmented or full)".format(
                        len(buf)
                    )
                )
            self._tx, self._rx, self._lock = tx, rx, asyncio.Lock()
        self._addr = None
        ctx.mqtt_error = ""
        self.status = CONNECTING
        self._task = aio.task(self._session())

    # AT+MQTTCLOSE: DISCONNECT, close, stop reconnecting, release the buffers. True if there
    # was a session.
    def close(self):
        had = self._task is not None or self.up()
        if self.up() and not self._lock.locked():  # not inside another packet
            try:  # one try without waiting: the broker sees the connection close anyway
                self._sock.write(self._tx[: mqttpkt.disconnect(self._tx)])
            except OSError:
                pass
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._stop_tasks()
        self._drop(False)
        self._lost = None
        self._attempting = False
        self.status = CLOSED
        self._tx = self._rx = self._lock = self._tls = None
        return had

    # The TLS context of the session's connections (None without TLS), made again only when the
    # configuration or the certificates changed: a reconnect takes no second 3 KB block, even
    # after tls forgot the context with its last session. Raises at.AtError.
    def _context(self):
        global tls
        st = ctx.settings
        if not st["mqtt_ssl"]:
            return None
        tls = tls or registry.use("mqtt", "firmware.tls")
        server, client = st["mqtt_caverify"]
        key = tls.made_for(server, client)
        if self._tls is None or self._tls[0] != key:
            self._tls = None  # the old one goes first
            self._tls = (key, tls.context(server, client))
        return self._tls[1]

    def _stop_tasks(self):
        for t in self._tasks:
            t.cancel()
        self._tasks = ()

    # Connect; on loss reconnect with back-off (AT+MQTTRECONN=ON) or give up.
    # Events: CONNECT,SUCCESS on each connection; CONNECT,RECONNECTING once per outage
    # (and when the first attempt fails); CONNECT,FAIL or CONNECT,INIT_ERROR when giving up.
    async def _session(self):
        try:
            backoff = _BACKOFF_MIN_MS
            told = False  # CONNECT,RECONNECTING already announced for this outage
            while True:
                if wifi.online():
                    self._attempting = True
                    try:
                        await asyncio.wait_for_ms(aio.task(self._open()), _CONNECT_MS)
                        ok = True
                    except Exception as e:  # OSError, Failure, AtError, TimeoutError, ValueError
                        if isinstance(e, Failure) and len(e.args) > 1:
                            return self._give_up(e.args[1], e.args[0])
                        if isinstance(e, ValueError):  # a refused certificate stays refused
                            return self._give_up(FAILED, _why(e))
                        self._failed(e)
                        ok = False
                    self._attempting = False
                    if ok:
                        backoff = _BACKOFF_MIN_MS
                        told = False
                        await self._serve()
                        if not ctx.settings["mqtt_reconn"]:
                            return self._give_up(FAILED, ctx.mqtt_error)
                        self.status = CONNECTING
                        events.emit("MQTTEVENT", CONNECTING)
                        told = True
                        continue  # reconnect at once after a loss, back off after failures
                else:
                    ctx.mqtt_error = "Wi-Fi is down"
                if not ctx.settings["mqtt_reconn"]:
                    return self._give_up(FAILED, ctx.mqtt_error)
                if not told:
                    events.emit("MQTTEVENT", CONNECTING)
                    told = True
                if not wifi.online():
                    while not wifi.online():
                        await asyncio.sleep_ms(_WIFI_MS)
                    continue
                await asyncio.sleep_ms(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_MS)
        except Exception as e:  # a bug: say so rather than stay "connecting" forever
            log.exc(e, "mqtt session")
            self._drop(False)
            self._give_up(FAILED, "internal error: " + _why(e))

    def _failed(self, e):
        ctx.mqtt_error = _why(e)
        log.info("mqtt: " + ctx.mqtt_error)

    # The reason also goes to AT+ERRNO: CONNECT,FAIL is the outcome of the host's AT+MQTTSTART.
    def _give_up(self, word, why):
        log.info("mqtt: {} ({})".format(word, why))
        ctx.mqtt_error = why
        ctx.serial.last_error = (at.E_FAIL, "MQTT: " + why)
        self._attempting = False
        self._task = None
        self.status = word
        events.emit("MQTTEVENT", word)

    # Open TCP (and TLS) without blocking, CONNECT, CONNACK, then subscribe the stored ids in
    # one SUBSCRIBE and report them before CONNECT,SUCCESS (so a driver that sends its next
    # command on CONNECT,SUCCESS never meets them). Raises Failure, at.AtError (tls),
    # OSError or a TLS ValueError.
    async def _open(self):
        st = ctx.settings
        host, port = st["mqtt_sock"]
        if not host:
            raise Failure("no broker address (AT+MQTTSOCK)", INIT_ERROR)
        try:  # certificates from AT+SSLCERTSET
            context = self._context()
        except at.AtError as e:
            raise Failure(e.detail, INIT_ERROR)
        if context is not None and st["mqtt_caverify"][0]:
            await tls.clock_ready()  # first (bounded): the certificate dates are checked
        a = self._addr
        if a is None or a[0] != host or a[1] != port:
            try:  # blocks: DNS, once per session and host (instant for an IP address)
                ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
            except OSError:
                raise Failure("DNS: cannot resolve " + host)
            a = self._addr = (host, port, ai[-1])
        user, pswd = st["mqtt_auth"]
        cid = st["mqtt_cid"] or "EMW_" + wifi.mac_text(wifi.station.wlan.config("mac"), "")
        size = _tx_size()
        if len(self._tx) < size:  # configured longer since AT+MQTTSTART
            self._tx = None  # the old one can go before the new one is made
            self._tx = bytearray(size)
        s = self._sock = socket.socket()
        try:
            # A packet goes out in two writes (head, then the payload in place): with Nagle's
            # algorithm the second waited for the broker's delayed ACK, 40 ms per QoS 1 publish.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            try:
                s.connect(a[2])
            except OSError as e:
                if e.args[0] != errno.EINPROGRESS:
                    raise
            await aio.writable(s)
            if context is not None:  # the first writes run the handshake
                tls.acquire()
                self._tls_held = True
                s = self._sock = context.wrap_socket(
                    s, server_hostname=host, do_handshake_on_connect=False
                )
            self._rx.clear()
            self._rel.clear()  # a clean session forgets QoS 2 ids
            keepalive = st["mqtt_keepalive"]
            await self._send(
                mqttpkt.connect, (cid.encode(), user.encode(), pswd.encode(), keepalive)
            )
            first, body = await self._packet()
            if first >> 4 != mqttpkt.CONNACK or body is None or len(body) != 2:
                raise Failure("the broker did not answer CONNECT with CONNACK")
            code = body[1]
            if code == mqttpkt.UNAVAILABLE:
                raise Failure("broker refused: server unavailable")
            if code:
                raise Failure("broker refused: " + mqttpkt.refusal(code), FAILED)
            ids = [i for i in range(SUBS) if sub(i)]
            if ids:
                pid = self._next_pid()
                await self._send(
                    mqttpkt.subscribe, (pid, [(sub(i)[0].encode(), sub(i)[1]) for i in ids])
                )
                while True:
                    first, body = await self._packet()
                    if (
                        first >> 4 == mqttpkt.SUBACK
                        and body is not None
                        and mqttpkt.pid(body) == pid
                    ):
                        break
                    await self._handle(first, body)
                for k, i in enumerate(ids):
                    code = body[2 + k] if 2 + k < len(body) else mqttpkt.SUB_FAILURE
                    self._complete(_SUB, i, code != mqttpkt.SUB_FAILURE)
        except BaseException:  # failures, timeout and cancellation alike
            self._close_socket()
            raise

    # Connected: run reader, deliverer and watchdog until the connection is lost.
    async def _serve(self):
        self.status = CONNECTED
        events.emit("MQTTEVENT", CONNECTED)
        me = self._task
        lost = self._lost = asyncio.Event()
        self._tasks = (
            aio.task(self._read(lost)),
            aio.task(self._deliver()),
            aio.task(self._watch(lost)),
        )
        try:
            for i in range(SUBS):
                if sub(i) and self.subs[i] is None:  # stored while the connection was made
                    await self.subscribe(i)
        except (OSError, at.AtError) as e:
            self._failed(e)
            lost.set()
        try:
            await lost.wait()
        finally:
            if self._task is me:  # not closed (AT+MQTTCLOSE drops the connection itself)
                self._stop_tasks()
                self._lost = None
                self._drop(ctx.settings["mqtt_reconn"])

    def _close_socket(self):
        s = self._sock
        self._sock = None
        if self._tls_held:
            self._tls_held = False
            tls.release()
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    # Forget the connection: close the socket, report awaited acks. With `again` (a reconnect
    # follows) subscriptions are simply redone; otherwise they are reported failed.
    def _drop(self, again):
        self._close_socket()
        if self.up():
            self.status = CONNECTING
        pending = self._pending
        self._pending = {}
        self._room.set()
        for kind, i, _ in pending.values():
            if kind != _SUB or not again:  # the broker forgets subscriptions with the session
                self._complete(kind, i, kind == _UNSUB)
        for i in range(SUBS):
            if self.subs[i] == SUB_OK:
                self.subs[i] = None

    # Report the outcome of a request (kind, subscription id): ok or failed.
    def _complete(self, kind, i, ok):
        if kind == _PUB:
            self.pub = word = PUB_OK if ok else PUB_FAIL
        elif kind == _QUIET:
            return
        else:
            if kind == _SUB:
                word = SUB_OK if ok else SUB_FAIL
            else:
                word = UNSUB_OK if ok else UNSUB_FAIL
            self.subs[i] = word
            word = "{},{}".format(i, word)
        events.emit("MQTTEVENT", word)

    # Write one packet: encode(buffer, *args) fills the buffer and returns the length; the
    # packet's payload, if it has one, is tail (bytes or a memoryview), written as it is after
    # the encoded part: no copy, no buffer the size of a message. One packet at a time.
    # OSError when the connection is gone.
    async def _send(self, encode, args=(), tail=None):
        s = self._sock
        if s is None:
            raise OSError(errno.ENOTCONN)
        async with self._lock:
            n = encode(self._tx, *args)
            await aio.write_all(s, memoryview(self._tx)[:n], _WRITE_MS)
            if tail:
                await aio.write_all(s, tail, _WRITE_MS)

    # The next packet from the broker: (first byte, body or None if it was too large).
    async def _packet(self):
        rx = self._rx
        while True:
            p = rx.next()
            if p is not None:
                return p
            space = rx.space()
            if not space:
                self._busy = True
                self._freed.clear()
                await self._freed.wait()
                self._busy = False
                continue
            n = await aio.read_some(self._sock, space)
            if not n:
                raise Failure("the broker closed the connection")
            rx.filled(n)
            self._last_rx = time.ticks_ms()

    # Reader: handle packets until the connection fails. Messages stay in its buffer until the
    # deliverer has written them, and it reads on past them (acks are never stuck behind a
    # message waiting for the UART); when they fill the buffer, data waits in the socket
    # (TCP back-pressure, no copy held here).
    async def _read(self, lost):
        try:
            while True:
                first, body = await self._packet()
                await self._handle(first, body)
        except Exception as e:  # OSError, Failure; ValueError, IndexError: a malformed packet
            if isinstance(e, (ValueError, IndexError)):
                e = Failure("the broker sent a malformed packet")
            self._failed(e)
        lost.set()

    async def _handle(self, first, body):
        kind = first >> 4
        if body is None:
            log.warn("mqtt: a packet larger than the receive buffer was dropped")
        elif kind == mqttpkt.PUBLISH:
            topic, pid, payload = mqttpkt.publish_parts(first, body)
            qos = first >> 1 & 3
            if qos < 2 or pid not in self._rel:  # a QoS 2 resent before PUBREL came: once
                self._rx.hold(first)
                self._held.set()
            if qos == 1:
                await self._send(mqttpkt.ack, (mqttpkt.PUBACK, pid))
            elif qos == 2:
                self._rel.add(pid)
                await self._send(mqttpkt.ack, (mqttpkt.PUBREC, pid))
        elif kind == mqttpkt.PUBREL:
            pid = mqttpkt.pid(body)
            self._rel.discard(pid)
            await self._send(mqttpkt.ack, (mqttpkt.PUBCOMP, pid))
        elif kind == mqttpkt.PUBREC:
            pid = mqttpkt.pid(body)
            if pid in self._pending:  # our QoS 2 publish: PUBCOMP completes it
                await self._send(mqttpkt.ack, (mqttpkt.PUBREL, pid))
        elif kind in (mqttpkt.PUBACK, mqttpkt.PUBCOMP, mqttpkt.UNSUBACK, mqttpkt.SUBACK):
            e = self._pending.pop(mqttpkt.pid(body), None)
            if e is not None:  # else an ack that came after its deadline
                self._room.set()
                self._complete(
                    e[0], e[1], kind != mqttpkt.SUBACK or body[2] != mqttpkt.SUB_FAILURE
                )
        # PINGRESP: its arrival is all that counts (_last_rx)

    # Deliverer: each held message goes out as soon as no response is open on the UART, so a
    # +MQTTRECV goes out whole, never inside a response; each one written gives the reader its
    # room back. It yields after each: a buffer of 200 small messages is 350 ms of UART at
    # 115200, longer than the UART's RX ring takes to fill.
    async def _deliver(self):
        while True:
            await self._held.wait()
            self._held.clear()
            while await ctx.serial.send(_message):
                self._freed.set()
                await asyncio.sleep_ms(0)

    # Watchdog: PINGREQ every keepalive/2; the broker is dead after 2 keepalives without a
    # packet; Wi-Fi loss drops the connection (as the board's stack would); ack deadlines.
    async def _watch(self, lost):
        k = ctx.settings["mqtt_keepalive"] * 1000
        pinged = time.ticks_ms()
        try:
            while True:
                await asyncio.sleep_ms(_TICK_MS)
                now = time.ticks_ms()
                if not wifi.online():
                    raise Failure("Wi-Fi is down")
                if k:
                    if not self._busy and time.ticks_diff(now, self._last_rx) > 2 * k:
                        raise Failure(
                            "keepalive timeout: no packet from the broker in {} s".format(
                                2 * k // 1000
                            )
                        )
                    if time.ticks_diff(now, pinged) >= k // 2:
                        pinged = now
                        await self._send(mqttpkt.pingreq)
                for pid in [p for p, e in self._pending.items() if time.ticks_diff(now, e[2]) > 0]:
                    kind, i, _ = self._pending.pop(pid)  # its ack is late
                    self._room.set()
                    self._complete(kind, i, False)
        except (OSError, Failure) as e:
            self._failed(e)
        lost.set()

    def _next_pid(self):
        p = self._pid
        while True:
            p = p % 65535 + 1
            if p not in self._pending:
                self._pid = p
                return p

    # Send a packet that awaits an ack, once the window has room: a host that pipelines
    # faster than the broker answers waits (up to _ROOM_MS) rather than failing at once.
    async def _request(self, kind, i, encode, args, tail=None):
        end = time.ticks_add(time.ticks_ms(), _ROOM_MS)
        while len(self._pending) >= _WINDOW:
            left = time.ticks_diff(end, time.ticks_ms())
            if not self.up():
                raise at.AtError(at.E_STATE, "MQTT is not connected")
            if left <= 0:
                raise at.AtError(
                    at.E_TIMEOUT, "{} requests awaited their acks for {} s".format(
                        _WINDOW, _ROOM_MS // 1000
                    )
                )  # fmt: skip
            self._room.clear()
            try:
                await asyncio.wait_for_ms(self._room.wait(), left)
            except asyncio.TimeoutError:
                pass
        pid = self._next_pid()
        self._pending[pid] = [kind, i, time.ticks_add(time.ticks_ms(), _ACK_MS)]
        try:
            await self._send(encode, (pid,) + args, tail)  # noqa: RUF005 (no *x in MicroPython)
        except OSError:
            self._pending.pop(pid, None)
            raise

    # Send SUBSCRIBE for stored id i (connected only); SUBACK reports it.
    async def subscribe(self, i):
        topic, qos = sub(i)
        self.subs[i] = None
        for pid, e in list(self._pending.items()):  # an earlier request for the same id
            if e[0] in (_SUB, _UNSUB) and e[1] == i:
                del self._pending[pid]
        await self._request(_SUB, i, mqttpkt.subscribe, (((topic.encode(), qos),),))

    # Send UNSUBSCRIBE for a topic that id i used; UNSUBACK reports it (quietly for a
    # replaced topic). A topic that another id still uses stays subscribed at the broker.
    async def unsubscribe(self, i, topic, quiet=False):
        self.subs[i] = None
        for j in range(SUBS):
            e = sub(j)
            if j != i and e and e[0] == topic:
                if not quiet:
                    self._complete(_UNSUB, i, True)
                return
        await self._request(_QUIET if quiet else _UNSUB, i, mqttpkt.unsubscribe, (topic.encode(),))

    # Publish data (a memoryview valid during the call) to the AT+MQTTPUB topic.
    async def publish(self, data):
        topic, qos = ctx.settings["mqtt_pub"]
        topic = topic.encode()
        size = len(data)
        self.pub = None
        if qos:
            await self._request(_PUB, None, mqttpkt.publish_head, (topic, size, qos), data)
        else:
            await self._send(mqttpkt.publish_head, (0, topic, size, 0), data)
            self._complete(_PUB, None, True)

    # A handler's write failed: the connection is gone; the session task takes it from here.
    def broken(self, e):
        self._failed(e)
        if self._lost is not None:
            self._lost.set()


# The oldest held message as a +MQTTRECV line (serial.send writes it while the line is free),
# to the lowest id whose filter matches its topic; None when none is held. Messages are data,
# not status events: they are always delivered, whatever AT+MQTTEVENT says.
def _message():
    rx = _session._rx
    while True:
        p = rx.take()
        if p is None:
            return None
        topic, _, payload = mqttpkt.publish_parts(p[0], p[1])
        try:
            t = str(topic, "utf-8")
        except UnicodeError:
            t = ""
        for i in range(SUBS):
            e = sub(i)
            if e and mqttpkt.match(e[0], t):
                return "+MQTTRECV:{},{},".format(i, len(payload)), payload
        log.info("mqtt: message on {!r} matches no subscription".format(t))


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
        _auto = aio.task(_autostart())


async def _autostart():
    global _auto
    while not wifi.online():
        await asyncio.sleep_ms(_WIFI_MS)
    s = get()
    if s.status == CLOSED and s._task is None:
        s.start()
    _auto = None  # done: the task can go


# AT+MQTTPUB= and AT+MQTTSEND (their rows are in commands/mqtt.py; here so that a session
# publishes without that module, registry.get: beside a link at 110 KiB the module's 8k often
# found no room to load again). The data phase is always taken (drivers write the data without
# waiting for ">"), then a publish that cannot go out answers ERROR.
def at_mqttpub(p):
    at.count(p, 2)
    topic = at.text(p, 0, TOPIC_MAX)
    if not mqttpkt.valid_topic(topic):
        raise at.AtError(at.E_PARAM, "parameter 1: wildcards in a publish topic")
    qos = at.integer(p, 1, 0, 2)
    ctx.settings.set("mqtt_pub", [topic, qos])


def at_mqttsend(p):
    at.count(p, 1)
    return serial.DataPhase(at.integer(p, 0, 1, serial.LENGTH_MAX), _send_data)


async def _send_data(data):
    s = get()
    try:
        if not s.up():
            why = ": " + ctx.mqtt_error if ctx.mqtt_error else ""
            raise at.AtError(at.E_STATE, "MQTT is not connected" + why)
        if not ctx.settings["mqtt_pub"][0]:
            raise at.AtError(at.E_STATE, "no topic (AT+MQTTPUB)")
        try:
            await s.publish(data)
        except OSError as e:
            s.broken(e)
            raise at.AtError(at.E_FAIL, "publish: " + ctx.mqtt_error)
    except at.AtError:
        s.pub = PUB_FAIL
        raise


# AT+MQTTCLOSE (its row is in commands/mqtt.py; here so that it runs without that module,
# registry.get): CLOSE,SUCCESS if a session was started. OK once the session's tasks have
# ended: what they held is free for the host's next command.
async def at_mqttclose():
    if get().close():
        events.emit("MQTTEVENT", CLOSED)
    await aio.settle()


# Nothing runs: no session started, none waiting to auto-start (registry.py may release this
# module).
def idle():
    s = _session
    return (_auto is None or _auto.done()) and (s is None or (s._task is None and not s.up()))
