# socket.py: the unix port's socket module, with the PC's address map in getaddrinfo.
# C source: ports/unix/modsocket.c (the ESP32's is ports/esp32/modsocket.c; same getaddrinfo).
#
# The virtual module's addresses are not the PC's: the launcher passes EMW_NETMAP, rules
# "host[:port]=host[:port]" separated by blanks, and getaddrinfo answers for the right-hand
# side when the name and port match a rule's left side (no port: any port, kept). That is how
# the soft AP's 192.168.4.1:80 opens on a loopback port, binds to 0.0.0.0 stay on loopback
# (launcher --listen) and the factory SNTP servers reach the launcher's NTP responder. Every
# socket the firmware opens or binds takes its address from getaddrinfo (asyncio's too).

import os
import sys

_path = sys.path
sys.path = ()
try:
    from socket import *  # the built-in module of the same name
    from socket import getaddrinfo as _getaddrinfo
finally:
    sys.path = _path
    del _path


def _rules(text):
    rules = {}
    for rule in text.split():
        left, _, right = rule.partition("=")
        host, _, port = left.partition(":")
        to_host, _, to_port = right.partition(":")
        rules[(host, int(port) if port else None)] = (to_host, int(to_port) if to_port else None)
    return rules


_MAP = _rules(os.getenv("EMW_NETMAP") or "")


def getaddrinfo(host, port, *args):
    to = _MAP.get((host, port)) or _MAP.get((host, None))
    if to is not None:
        host = to[0]
        port = port if to[1] is None else to[1]
    return _getaddrinfo(host, port, *args)
