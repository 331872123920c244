# socket.py: the ESP32 port's socket module (ports/esp32/modsocket.c, v1.24) on the PC. The unix
# port's sockets inside a stream object that behaves as lwIP's where Linux differs:
# - errno values are newlib's, not Linux's, when the ESP32's errno is installed (host/start.py
#   does it for the virtual module: host/board/esp32_errno.py); elsewhere the unix port's;
# - a second connect() on an established socket raises EISCONN (esp-lwip api_msg.c,
#   lwip_netconn_do_connect: ERR_ISCONN), where Linux answers 0 once;
# - a TCP connection holds lwIP's send buffer, not Linux's (_LWIP_SND_BUF);
# - getaddrinfo() of a name fails before an interface is up: lwIP has no DNS server then
#   (lwip_getaddrinfo answers EAI_FAIL, raised as OSError(-202) by _getaddrinfo_inner).
# The virtual module's addresses are not the PC's: the launcher passes EMW_NETMAP, rules
# "host[:port]=host[:port]" separated by blanks, and getaddrinfo answers for the right-hand side
# when the name and port match a rule's left side (no port: any port, kept). That is how the
# soft AP's 192.168.4.1:80 opens on a loopback port, binds to 0.0.0.0 stay on loopback (launcher
# --listen) and the factory SNTP servers reach the launcher's NTP responder. Every socket the
# firmware opens or binds takes its address from getaddrinfo (asyncio's too).
# A TCP connection goes through the station: connect() fails without its address, and the
# connections end when it loses it, as lwIP's do (sta_down below).
# A wrapper, not a subclass: select.poll reports POLLNVAL for a Python subclass of the socket
# type, while an io.IOBase whose ioctl answers MP_STREAM_GET_FILENO is polled on its descriptor.
import errno
import io
import os
import sys

from micropython import const

_path = sys.path
sys.path = ()
try:
    from socket import *  # the constants (AF_INET, SOL_SOCKET...)
    from socket import getaddrinfo as _getaddrinfo
    from socket import socket as _Socket
finally:
    sys.path = _path
    del _path

# ports/esp32/modsocket.c exports lwIP's IPPROTO_TCP and TCP_NODELAY (setsockopt passes them to
# lwip_setsockopt); the unix port's module has neither. Linux's values are the same.
IPPROTO_TCP = const(6)
TCP_NODELAY = const(1)
_MP_STREAM_GET_FILENO = const(10)
_EISCONN_NEWLIB = const(127)
_EISCONN_LINUX = const(106)
_EAI_FAIL = const(-202)  # lwIP netdb.h EAI_FAIL, negated by modsocket.c
_ECONNABORTED_LINUX = const(103)
_ENOTCONN_LINUX = const(107)
_EHOSTUNREACH_LINUX = const(113)
# What a TCP connection holds unsent or unacknowledged: lwIP's TCP_SND_BUF, ESP-IDF's
# CONFIG_LWIP_TCP_SND_BUF_DEFAULT (5760; ports/esp32/boards/sdkconfig.base keeps it). Linux grows
# a socket's to 4 MB: a peer that stops reading stalled a send only after megabytes.
_LWIP_SND_BUF = const(5760)
_SO_SNDBUF = const(7)  # Linux's; the unix port's socket module does not export it

# Linux errno -> newlib errno (ESP-IDF sys/errno.h), where they differ
_LINUX_TO_NEWLIB = {
    97: 106,  # EAFNOSUPPORT
    98: 112,  # EADDRINUSE
    99: 125,  # EADDRNOTAVAIL
    100: 115,  # ENETDOWN
    101: 114,  # ENETUNREACH
    103: 113,  # ECONNABORTED
    106: 127,  # EISCONN
    107: 128,  # ENOTCONN
    110: 116,  # ETIMEDOUT
    112: 117,  # EHOSTDOWN
    113: 118,  # EHOSTUNREACH
    114: 120,  # EALREADY
    115: 119,  # EINPROGRESS
}
_NEWLIB = _LINUX_TO_NEWLIB if errno.EINPROGRESS == 119 else {}
_EISCONN = _EISCONN_NEWLIB if _NEWLIB else _EISCONN_LINUX


# The OSError lwIP raises where Linux raised e.
def lwip_error(e):
    code = e.args[0] if e.args else None
    return OSError(_NEWLIB[code]) if code in _NEWLIB else e


def _numeric(host):
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


def _rules(text):
    rules = {}
    for rule in text.split():
        left, _, right = rule.partition("=")
        host, _, port = left.partition(":")
        to_host, _, to_port = right.partition(":")
        rules[(host, int(port) if port else None)] = (to_host, int(to_port) if to_port else None)
    return rules


_MAP = _rules(os.getenv("EMW_NETMAP") or "")
# The firmware's open TCP client connections, in slots made at boot (the stand-ins' share of
# the heap: recording one never takes the firmware's memory; not a limit of the chip's).
_conns = [None] * 32


# The station lost its address: ESP-IDF sets it to 0.0.0.0 at STA_DISCONNECTED
# (esp_netif_lwip.c esp_netif_down_api, static addresses too), and lwIP aborts every TCP
# connection bound to the old one (tcp.c tcp_netif_ip_addr_changed: tcp_abort). Its socket
# polls readable and writable (api_msg.c err_tcp); reads and writes raise ECONNABORTED twice,
# then ENOTCONN (sockets.c, err.c). Linux's disconnect (connect() to AF_UNSPEC) wakes the poller
# the same way; its peer gets a reset (the chip's RST most likely never leaves the radio) and
# data received but not yet read is gone (the chip would give it first). Listening sockets
# stay. A server's clients end too while the soft AP is off (every one came through the
# station); with it on they stay: the PC cannot tell the station's from the AP's (loopback).
def sta_down():
    import network

    ap = network._ifs[network.AP_IF]
    ap_on = ap is not None and ap._act
    for i, s in enumerate(_conns):
        if s is not None and not (s._accepted and ap_on):
            _conns[i] = None
            s._lost = 1
            try:
                s.raw.connect(bytes(16))  # AF_UNSPEC: Linux disconnects the socket
            except OSError:
                pass


# A socket closed through TLS (host/board/ssl.py wraps its .raw) leaves its slot here.
def _track(s):
    free = -1
    for i, t in enumerate(_conns):
        if t is not None and t.raw.fileno() < 0:
            _conns[i] = t = None
        if t is None and free < 0:
            free = i
    if free >= 0:
        _conns[free] = s


def _untrack(s):
    for i, t in enumerate(_conns):
        if t is s:
            _conns[i] = None


# The station has an address. Without it lwIP's tcp_connect finds no route (ip_route: ERR_RTE,
# EHOSTUNREACH; with the soft AP up the chip's SYN goes out there instead, unanswered, until
# the caller's timeout).
def _station_up():
    import network

    sta = network._ifs[network.STA_IF]
    return sta is not None and sta.isconnected()


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if host and not _numeric(host):
        import network

        if not network._up():
            raise OSError(_EAI_FAIL)
    host = host or "0.0.0.0"
    to = _MAP.get((host, port)) or _MAP.get((host, None))
    if to is not None:
        host = to[0]
        port = port if to[1] is None else to[1]
    return _getaddrinfo(host, port, af, type, proto, flags)


class socket(io.IOBase):
    # The state an instance sets only when it differs: an instance's attributes are a hash
    # table on the firmware's heap, where the chip's socket_obj_t (modsocket.c) is a fixed
    # 32-byte block, so each one set costs the firmware bytes the board does not.
    _pending = False  # a non-blocking connect() is under way
    _via_station = False  # a TCP connection of the firmware's, through the station
    _lost = 0  # aborted: the reads and writes since (sta_down)
    _accepted = False  # a server's client

    # station=False: a connection of the PC's plumbing (the launcher's UART, radio, control), not
    # one of the firmware's through the station.
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0, _raw=None, station=True):
        self.raw = _Socket(af, type, proto) if _raw is None else _raw
        if _raw is None and type == SOCK_STREAM:  # accepted ones inherit it
            self.raw.setsockopt(SOL_SOCKET, _SO_SNDBUF, _LWIP_SND_BUF // 2)  # Linux doubles it
        if type == SOCK_STREAM and station:
            self._via_station = True

    def close(self):
        _untrack(self)
        self.raw.close()

    def fileno(self):
        return self.raw.fileno()

    def ioctl(self, req, arg):
        if req == _MP_STREAM_GET_FILENO:
            return self.raw.fileno()
        return 0

    def connect(self, addr):
        if self._via_station and not self._pending:
            if not _station_up():
                raise lwip_error(OSError(_EHOSTUNREACH_LINUX))
            _track(self)
        try:
            self.raw.connect(addr)
        except OSError as e:
            self._pending = e.args[0] == 115  # Linux EINPROGRESS
            raise lwip_error(e)
        if self._pending:  # Linux reports the finished connect once; lwIP says EISCONN
            raise OSError(_EISCONN)

    # A call of the unix socket with lwIP's errors.
    def _call(self, f, *args):
        if self._lost:
            raise self._aborted()
        try:
            return f(*args)
        except OSError as e:
            raise lwip_error(e)

    def _aborted(self):
        self._lost += 1
        return lwip_error(OSError(_ECONNABORTED_LINUX if self._lost <= 3 else _ENOTCONN_LINUX))

    def bind(self, addr):
        self._call(self.raw.bind, addr)

    def listen(self, backlog=0):
        self.raw.listen(backlog)

    # With neither interface up no SYN reaches the chip; loopback's client is taken and closed
    # unseen (the listening socket polls readable: aio.accept waits again on EAGAIN).
    def accept(self):
        s, addr = self._call(self.raw.accept)
        import network

        if not network._up():
            s.close()
            raise OSError(errno.EAGAIN)
        s = socket(_raw=s)
        s._accepted = True
        _track(s)
        return s, addr

    def setsockopt(self, level, opt, value):
        self.raw.setsockopt(level, opt, value)

    def setblocking(self, flag):
        self.raw.setblocking(flag)

    def settimeout(self, value):
        self.raw.settimeout(value)

    def makefile(self, *args, **kw):
        return self

    # The data path: readinto and write without the extra call.
    def readinto(self, buf, n=-1):
        if self._lost:
            raise self._aborted()
        try:
            return self.raw.readinto(buf) if n < 0 else self.raw.readinto(buf, n)
        except OSError as e:
            raise lwip_error(e)

    def write(self, buf, n=-1):
        if self._lost:
            raise self._aborted()
        try:
            return self.raw.write(buf) if n < 0 else self.raw.write(buf, n)
        except OSError as e:
            raise lwip_error(e)

    def read(self, *n):
        return self._call(self.raw.read, *n)

    def readline(self):
        return self._call(self.raw.readline)

    def recv(self, n, *flags):  # flags: the PC's plumbing (machine.UART peeks); not the ESP32's
        return self._call(self.raw.recv, n, *flags)

    def recvfrom(self, n):
        return self._call(self.raw.recvfrom, n)

    def send(self, buf):
        return self._call(self.raw.send, buf)

    def sendall(self, buf):
        return self._call(self.raw.sendall, buf)

    # With neither interface up lwIP finds no route (ESP-IDF's esp_netif_down_api sets the
    # station's netif down; udp.c udp_sendto: ERR_RTE, EHOSTUNREACH); Linux's loopback always has.
    def sendto(self, buf, addr):
        import network

        if not network._up():
            raise lwip_error(OSError(_EHOSTUNREACH_LINUX))
        return self._call(self.raw.sendto, buf, addr)
