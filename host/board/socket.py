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
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0, _raw=None):
        self.raw = _Socket(af, type, proto) if _raw is None else _raw
        if _raw is None and type == SOCK_STREAM:  # accepted ones inherit it
            self.raw.setsockopt(SOL_SOCKET, _SO_SNDBUF, _LWIP_SND_BUF // 2)  # Linux doubles it
        self._pending = False  # a non-blocking connect() is under way

    def close(self):
        self.raw.close()

    def fileno(self):
        return self.raw.fileno()

    def ioctl(self, req, arg):
        if req == _MP_STREAM_GET_FILENO:
            return self.raw.fileno()
        return 0

    def connect(self, addr):
        try:
            self.raw.connect(addr)
        except OSError as e:
            self._pending = e.args[0] == 115  # Linux EINPROGRESS
            raise lwip_error(e)
        if self._pending:  # Linux reports the finished connect once; lwIP says EISCONN
            raise OSError(_EISCONN)

    # A call of the unix socket with lwIP's errors.
    def _call(self, f, *args):
        try:
            return f(*args)
        except OSError as e:
            raise lwip_error(e)

    def bind(self, addr):
        self._call(self.raw.bind, addr)

    def listen(self, backlog=0):
        self.raw.listen(backlog)

    def accept(self):
        s, addr = self._call(self.raw.accept)
        return socket(_raw=s), addr

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
        try:
            return self.raw.readinto(buf) if n < 0 else self.raw.readinto(buf, n)
        except OSError as e:
            raise lwip_error(e)

    def write(self, buf, n=-1):
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

    def sendto(self, buf, addr):
        return self._call(self.raw.sendto, buf, addr)
