# The five socket links (ids 0-4) of section 4: one state machine per id over non-blocking
# sockets, the connection events of the spec, push and pull receive modes, auto-reconnect.
# A client link's connection is here; a server's listening and clients and a UDP link's
# datagrams are in firmware/tcpserver.py and udplink.py, loaded with the first of their kind.
import asyncio
import errno
import gc
import socket

from micropython import const

from firmware import aio, at, ctx, events, log, registry, settings, wifi
from firmware.at import E_FAIL, E_PARAM, E_STATE, E_TIMEOUT, E_UNSUPPORTED, AtError


# AT+CIPSTATUS words. "close" for a stopped link is what drivers test for (wire notes).
CONNECTING = "connecting"
CONNECTED = "connected"
DISCONNECTED = "disconnected"
CLOSE = "close"

CHUNK = const(1024)  # largest +CIPEVENT:SOCKET payload
PULL_MAX = const(2048)  # bytes buffered per peer in pull mode (AT+CIPRECVCFG=0)
_PULL_MIN = const(256)
_CONNECT_MS = const(10000)
_TLS_TIMEOUT_S = const(5)
_SEND_WAIT_MS = const(10000)  # CIPSEND waits this long for a link to connect or take data
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(30000)
_WIFI_POLL_MS = const(200)  # how often a link waiting for the station looks again
_EISCONN = const(127)  # lwIP/newlib EISCONN: not in MicroPython's errno module


tls = None  # firmware.tls, imported for the first ssl_client link: a plain link carries none
tcpserver = None  # firmware.tcpserver, imported for the first tcp_server link
udplink = None  # firmware.udplink, imported for the first UDP link

_rx = bytearray(CHUNK)  # the one receive buffer of push mode: read, then pushed at once
_rxmv = memoryview(_rx)


# One connected stream (a client link's socket, or one client of a server) and its pull buffer.
class Peer:
    def __init__(self, sock, ip, port):
        self.sock = sock
        self.ip = ip
        self.port = port
        self.buf = None  # pull-mode buffer, made on first use
        self.n = 0  # bytes in buf
        self.room = asyncio.Event()  # set when buf has room again
        self.task = None
        self.got = None  # what the last push-mode read returned

    def close(self):
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.sock.close()

    # AT+CIPRECV: up to n buffered bytes, removed from the buffer.
    def take(self, n):
        n = min(n, self.n)
        if not n:
            return b""
        mv = memoryview(self.buf)
        out = bytes(mv[:n])
        mv[: self.n - n] = mv[n : self.n]
        self.n -= n
        self.room.set()
        return out


class Link:
    def __init__(self, lid):
        self.id = lid
        self.type = "tcp_client"  # the last type used (AT+CIPSTATUS names it even when closed)
        self.state = CLOSE
        self.sock = None  # listening, UDP or client socket
        self.addr = None  # resolved remote address (clients, UDP)
        self.peers = []
        self.task = None
        self.error = ""  # why the link last failed (AT+CIPERR)
        self.drops = 0  # UDP datagrams that did not fit in pull mode
        self.udp = None  # the Peer holding a UDP link's pull buffer
        self.leftover = None  # pull mode: a closed peer whose buffer still holds data
        self.told = False  # SERVER,DISCONNECTED announced for this outage (not once per retry)

    # --- starting and stopping

    # Servers and UDP links bind here, so that OK means listening and a port in use is ERROR.
    def start(self, typ, host, rport, lport):
        self.type = typ
        self.host, self.rport, self.lport = host, rport, lport
        self.error = ""
        self.leftover = None
        self.told = False
        try:
            code = _code(typ)
            if code is not None:
                code.start(self)
        except OSError as e:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            raise AtError(E_FAIL, "cannot bind port {}: {}".format(lport, reason(e)))
        # Listening or bound is up at the OK (AT+CIPSTATUS says so even before the task runs).
        self.state = CONNECTING if self.sock is None else CONNECTED
        self.task = aio.task(self._run())

    def stop(self):
        if self.task is not None:
            self.task.cancel()
            self.task = None
        was = self.state
        self.state = CLOSE
        self.leftover = None
        if was != CLOSE and self.type == "ssl_client":
            tls.release()
        for p in self.peers:  # the events are part of AT+CIPSTOP's response
            p.close()
            if self.type == "tcp_server":
                events.emit("CIPEVENT", "CLIENT,CLOSED,{},{}".format(p.ip, p.port), True)
        self.peers = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if was == CLOSE:
            return
        if self.type.startswith("udp"):
            events.emit("CIPEVENT", "{},UDP,CLOSED".format(self.id), True)
        else:
            events.emit("CIPEVENT", "{},SERVER,CLOSED".format(self.id), True)

    # Keep the link up: connect, serve, and with AT+CIPAUTOCONN on, connect again with
    # back-off when a client link drops.
    async def _run(self):
        backoff = _BACKOFF_MIN_MS
        while True:
            try:
                code = _code(self.type)
                await (self._client() if code is None else code.run(self))
                backoff = _BACKOFF_MIN_MS
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure ends this connection
                if isinstance(e, MemoryError):
                    ctx.serial.out_of_memory("serving link {}".format(self.id))
                self.error = reason(e)
                log.info("link {}: {}".format(self.id, self.error))
            self._drop()
            if not ctx.settings["autoconn"][self.id] or self.type == "tcp_server":
                self.task = None
                return
            if wifi.online():
                await asyncio.sleep_ms(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_MS)
            else:  # no station: again as soon as it is back (drivers wait from STATION_UP)
                backoff = _BACKOFF_MIN_MS
                while not wifi.online():
                    await asyncio.sleep_ms(_WIFI_POLL_MS)
            self.state = CONNECTING

    def _drop(self):
        for p in self.peers:
            if p.n:  # what it sent before closing can still be read with AT+CIPRECV
                self.leftover = p
            p.close()
        self.peers = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        up = self.state == CONNECTED and not self.type.startswith("udp")
        if up or (self.state == CONNECTING and self.type != "tcp_server" and not self.told):
            events.emit("CIPEVENT", "{},SERVER,DISCONNECTED".format(self.id))
            self.told = True
        self.state = DISCONNECTED

    async def _client(self):
        if self.type == "ssl_client" and ctx.settings["sslopt"][self.id][0]:
            await tls.clock_ready()  # verification checks the certificate dates
        # A connection's objects live as long as it does. Made after a collection, they fill
        # the lowest holes; made among other commands' garbage, they were left as islands in
        # the free heap once it was collected: at 110k, with three links just started, 22 KB
        # were free and no run of 3 KB for a TLS context.
        gc.collect()
        self.addr = resolve(self.host, self.rport)  # blocking: DNS, once per connection
        s = socket.socket()
        self.sock = s
        if self.lport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(socket.getaddrinfo("0.0.0.0", self.lport)[0][-1])
        s.setblocking(False)
        try:
            s.connect(self.addr)
        except OSError as e:
            if e.errno != errno.EINPROGRESS:
                raise
        await asyncio.wait_for_ms(aio.writable(s), _CONNECT_MS)
        try:  # a second connect() tells how the first one ended
            s.connect(self.addr)
        except OSError as e:
            if e.errno != _EISCONN:
                raise
        if self.type == "ssl_client":
            s = self._tls(s)
            self.sock = s
        peer = Peer(s, self.host, self.rport)
        self.peers = [peer]
        self.state = CONNECTED
        self.told = False
        events.emit("CIPEVENT", "{},SERVER,CONNECTED".format(self.id))
        await self.pump(peer)

    # TLS on a connected socket. blocking: the handshake, up to _TLS_TIMEOUT_S, as
    # MicroPython's own wrap_socket does; the non-blocking form cannot tell that a certificate
    # was refused before data flows, and a refused server must never count as connected.
    def _tls(self, s):
        verify, client = ctx.settings["sslopt"][self.id]
        context = tls.context(verify, client)
        s.setblocking(True)
        s.settimeout(_TLS_TIMEOUT_S)
        t = context.wrap_socket(s, server_hostname=self.host)
        t.setblocking(False)
        return t

    # Move received data from a stream to the host until the peer closes.
    async def pump(self, peer):
        s = peer.sock

        def take():  # the engine calls it with the line free: read, and it writes at once
            if peer.n:
                return self.held(peer)
            n = peer.got = s.readinto(_rx)
            return ("+CIPEVENT:SOCKET,{},{},".format(self.id, n), _rxmv[:n]) if n else None

        while True:
            await aio.readable(s)
            if ctx.serial.sink is self or ctx.settings["recvcfg"]:
                await ctx.serial.send(take, self)  # in transparent mode: raw bytes
                n = peer.got
            else:
                n = await self._pull(peer)
            if n == 0:
                return  # closed by the peer
            # None: nothing to read yet (TLS records in progress)

    # Data held in pull mode goes first once push mode is on (AT+CIPRECVCFG=1), in order: as
    # events, before anything read after it (the readers serve it first, push_held() at once).
    def held(self, peer):
        data = peer.take(CHUNK)
        return ("+CIPEVENT:SOCKET,{},{},".format(self.id, len(data)), data) if data else None

    def push_held(self, peer):
        if peer.n:
            aio.task(self._push(peer))

    async def _push(self, peer):
        while peer.n and ctx.settings["recvcfg"]:
            await ctx.serial.send(lambda: self.held(peer), self)

    async def _pull(self, peer):
        if peer.buf is None:
            peer.buf = self.pull_buffer()
        while peer.n == len(peer.buf):  # full: stop reading, so TCP pushes back on the sender
            peer.room.clear()
            await peer.room.wait()
        n = peer.sock.readinto(memoryview(peer.buf)[peer.n :])
        if n:
            peer.n += n
        return n

    # A pull buffer of PULL_MAX bytes or, in a heap fragmented past that, a smaller one (down to
    # _PULL_MIN): it only slows the link, TCP holds the rest back in the sender, where a
    # MemoryError would have dropped the link.
    def pull_buffer(self):
        buf = aio.buffer(PULL_MAX, _PULL_MIN)
        if len(buf) < PULL_MAX:
            log.warn(
                "link {}: pull buffer of {} bytes (heap fragmented)".format(self.id, len(buf))
            )
        return buf

    # --- sending (AT+CIPSEND, transparent mode)

    # The peer data goes to: the client of a tcp_server with that remote port, else the one.
    def peer(self, port):
        if self.state not in (CONNECTED, CONNECTING):
            raise AtError(E_STATE, "link {} is {}".format(self.id, self.state))
        if self.type == "tcp_server":
            if port is None:  # a driver that knows of one client names none
                if len(self.peers) == 1:
                    return self.peers[0]
                if not self.peers:
                    raise AtError(E_STATE, "no client connected")
                raise AtError(E_PARAM, "{} clients: give the remote port".format(len(self.peers)))
            for p in self.peers:
                if p.port == port:
                    return p
            raise AtError(E_PARAM, "no client with remote port {}".format(port))
        return None  # resolved at send time: the link may still be connecting

    async def send(self, peer, data):
        waited = 0
        while self.state == CONNECTING and waited < _SEND_WAIT_MS:
            await asyncio.sleep_ms(20)  # data sent right after CIPSTART's OK is not lost
            waited += 20
        if self.state != CONNECTED:
            raise AtError(E_STATE, "link {} is {}".format(self.id, self.state))
        if self.type.startswith("udp"):
            try:  # no interface up: no route (EHOSTUNREACH); lwIP out of buffers: ENOMEM
                self.sock.sendto(data, self.addr)
            except OSError as e:
                raise AtError(E_FAIL, "send: " + reason(e))
            return
        # Polled, not wait_for(writable(s)): asyncio's IOQueue.remove, run when such a wait is
        # cancelled, unregisters the whole socket, the reader task's wait included, and then a
        # reset by the peer would go unseen.
        peer = peer or self.peers[0]
        try:
            await aio.write_all(peer.sock, data, _SEND_WAIT_MS)
        except OSError as e:
            if e.args[0] != errno.ETIMEDOUT:  # write_all's (a socket's own is in aio.BUSY)
                raise AtError(E_FAIL, "send: " + reason(e))
            if not e.args[1]:
                raise AtError(E_TIMEOUT, "send: peer does not take data")
            self._cut(peer)
            raise AtError(
                E_TIMEOUT,
                "send: peer does not take data, {} of {} bytes sent, link closed".format(
                    e.args[1], len(data)
                ),
            )

    # A send gave up with part of its data out (lwIP holds 5.7 KB per connection: a peer that
    # stops reading leaves most sends so): what follows would not join what the peer got, and a
    # host that sends it again would repeat that part. So the stream ends, as at a reset:
    # +CIPEVENT:<id>,SERVER,DISCONNECTED (a client of a server: CLIENT,CLOSED), and a client
    # link with AT+CIPAUTOCONN on connects again.
    def _cut(self, peer):
        if self.type == "tcp_server":
            tcpserver.drop_client(self, peer)
            return
        self.error = "peer does not take data"
        self.task.cancel()
        self._drop()
        self.task = None
        if ctx.settings["autoconn"][self.id]:
            self.state = CONNECTING
            self.task = aio.task(self._run())

    # Transparent mode (AT+CIPSENDRAW): the engine hands each UART frame to write().
    async def write(self, frame):
        try:
            await self.send(None, frame)
        except AtError as e:
            log.warn("transparent link {}: {}".format(self.id, e.detail))

    def close(self):
        pass  # leaving transparent mode keeps the link up


# The address of a host name or IP. lwIP's resolver fails with a negative OSError (EAI_FAIL).
def resolve(host, port):
    try:
        return socket.getaddrinfo(host, port)[0][-1]
    except OSError:
        raise AtError(E_FAIL, "cannot resolve " + host)


def reason(e):
    why = tls and tls.reason(e)
    if why is not None:
        return why
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return aio.why(e)


# (ip, port) of a socket address: a tuple on the ESP32, raw sockaddr bytes on the unix port.
def ip_port(addr):
    if isinstance(addr, tuple):
        return addr[0], addr[1]
    # the unix port's raw sockaddr_in: family (2), port (2, big-endian), address (4)
    return "{}.{}.{}.{}".format(addr[4], addr[5], addr[6], addr[7]), addr[2] << 8 | addr[3]


links = [None] * ctx.LINKS  # the Link of each id, made on its first use (~300 bytes each)


def get(lid):
    link = links[lid]
    if link is None:
        link = links[lid] = Link(lid)
    return link


# AT+CIPRECVCFG=1: what pull mode holds goes to the host now.
def push_held():
    for link in links:
        for peer in link.peers if link else ():
            link.push_held(peer)
        if link and link.leftover:
            link.push_held(link.leftover)


# The code of a tcp_server or UDP link (firmware/tcpserver.py, udplink.py: start() at
# AT+CIPSTART, run() as its task), loaded with the first link of its kind; None for a client
# link, whose code is Link's own: it carries neither.
def _code(typ):
    global tcpserver, udplink
    if typ == "tcp_server":
        tcpserver = tcpserver or registry.use("tcpip", "firmware.tcpserver")
        return tcpserver
    if typ.startswith("udp"):
        udplink = udplink or registry.use("tcpip", "firmware.udplink")
        return udplink
    return None


# Validate and start a link (AT+CIPSTART); remembered for AT+CIPAUTOCONN.
def open_link(lid, typ, host, rport, lport, remember=True):
    global tls
    link = get(lid)
    if link.state != CLOSE:
        raise AtError(E_STATE, "link {} is not stopped (AT+CIPSTOP first)".format(lid))
    if not wifi.online():
        raise AtError(E_STATE, "no Wi-Fi link")
    if typ == "ssl_client":
        tls = tls or registry.use("tcpip", "firmware.tls")
        tls.acquire()  # a started ssl_client link holds its TLS session until AT+CIPSTOP
    try:
        link.start(typ, host, rport, lport)
    except AtError:
        if typ == "ssl_client":
            tls.release()
        raise
    if remember:
        stored = list(ctx.settings["links"])
        stored[lid] = [typ, host or "", rport, lport]
        ctx.settings.set("links", stored)


# AT+CIPSTOP=<id>[,<remote port>] (its row is in commands/tcpip.py; here so that it runs
# without that module, registry.get). OK even for an id that was never started: drivers stop
# ids 0..4 at start-up (wire notes). OK once the link's tasks have ended: what they held is
# free for the host's next command.
def at_cipstop(p):
    at.count(p, 1, 2)
    lid = at.integer(p, 0, 0, ctx.LINKS - 1)
    link = get(lid)
    if len(p) == 2 and link.type == "tcp_server" and link.state != CLOSE:
        tcpserver.drop_client(link, link.peer(at.integer(p, 1, 1, 65535)))
    else:
        close_link(lid)
    return aio.settle()


def close_link(lid):
    link = get(lid)
    link.stop()
    if ctx.settings["links"][lid]:
        stored = list(ctx.settings["links"])
        stored[lid] = []
        ctx.settings.set("links", stored)


_restorer = None  # the power-on task of start()


# At power-on: restore the links that were started with AT+CIPAUTOCONN on, once Wi-Fi is up.
def start():
    global _restorer
    _restorer = aio.task(_restore())


async def _restore():
    while not wifi.online():
        await asyncio.sleep_ms(_WIFI_POLL_MS)
    for lid, cfg in enumerate(ctx.settings["links"]):
        if cfg and ctx.settings["autoconn"][lid]:
            try:
                open_link(lid, cfg[0], cfg[1], cfg[2], cfg[3], remember=False)
            except AtError as e:
                log.warn("link {} not restored: {}".format(lid, e.detail))


# Nothing runs: every link is stopped and none waits to be restored (registry.py may release
# this module).
def idle():
    return (_restorer is None or _restorer.done()) and all(
        L is None or L.state == CLOSE for L in links
    )
