# Section 4 of the spec: TCP, UDP and SSL links, certificates. The links are firmware/links.py.
#
# Replies and events (wire notes: what drivers send and parse):
#   AT+CIPSTART=...    OK at once, then +CIPEVENT:<id>,SERVER,CONNECTED (clients),
#                      +CIPEVENT:<id>,UDP,CONNECTED (UDP); a failure or a peer that closes:
#                      +CIPEVENT:<id>,SERVER,DISCONNECTED; AT+CIPSTOP: <id>,SERVER|UDP,CLOSED;
#                      a tcp_server's clients: +CIPEVENT:CLIENT,CONNECTED|CLOSED,<ip>,<port>
#   AT+CIPSTATUS=<id>  +CIPSTATUS:<type>,connecting|connected|disconnected|close
#   AT+CIPSEND=...     >, exactly <len> bytes, OK once sent
#   data, push mode    +CIPEVENT:SOCKET,<id>,<len>,<data>
#                      +CIPEVENT:UDP_BROADCAST,<ip>,<port>,<id>,<len>,<data>
#   AT+CIPRECV=...     +CIPRECV=<len>,<data> (the document's "=")
# Extensions: AT+CIPERR=<id> (why the link last failed), AT+CIPDROPS=<id> (UDP datagrams
# dropped in pull mode).
import socket
import sys

from firmware import at, ctx, registry, serial
from firmware.at import AtError
from firmware.commands.system import action, refuse_if_hidden, setter, value

_CTRL_Z = b"\x1a"
# The spec's certificate types: 0 root, 1 client certificate, 2 private key, 3 CRL.
_PRIVATE_KEY = 2
_HOST_MAX = 253
_TYPES = ("tcp_server", "tcp_client", "ssl_client", "udp_broadcast", "udp_unicast")


def _id(p, i=0):
    return at.integer(p, i, 0, ctx.LINKS - 1)


# The links (firmware/links.py), loaded by the first command that needs them. A driver's
# start-up (wire notes: AT+CIPAUTOCONN=<id>,0 and AT+CIPSTOP=<id> for every id, then
# AT+CIPRECVCFG=1) needs none when no link runs: beside an MQTT session over TLS at 110 KiB
# there is room for this module, not for both.
def _links():
    return registry.use("tcpip", "firmware.links")


def _port(p, i, lo=1):
    return at.integer(p, i, lo, 65535)


# AT+CIPSTART=<id>,<type>,[domain],[remote_port],[local_port]: the parameters each type takes.
def _start(p):
    at.count(p, 3, 5)
    lid = _id(p)
    typ = at.choice(p, 1, _TYPES)
    if typ == "tcp_server":
        if len(p) == 3:
            lport = _port(p, 2)
        elif len(p) == 5 and p[2] is None and p[3] is None:  # id,tcp_server,,,port
            lport = _port(p, 4)
        else:
            raise AtError(at.E_COUNT, "tcp_server takes id,tcp_server,local_port")
        host, rport = None, 0
    else:
        at.count(p, 4, 5)
        host = at.text(p, 2, _HOST_MAX)
        rport = _port(p, 3)
        # no local port (EWF's udp_unicast, wire notes), or an empty one: 0, any
        lport = _port(p, 4, lo=0) if len(p) == 5 and p[4] is not None else 0
    _links().open_link(lid, typ, host, rport, lport)


def _status(p):
    at.count(p, 1)
    link = _links().get(_id(p))
    return "+CIPSTATUS:{},{}".format(link.type, link.state)


# AT+CIPSEND=<id>[,<remote_port>],<len>: the remote port picks a tcp_server's client. The
# link is looked at once the data is in: a refused send takes its data all the same.
def _send(p):
    at.count(p, 2, 3)

    def done(data):
        link = _links().get(_id(p))
        return link.send(link.peer(_port(p, 1) if len(p) == 3 else None), data)

    return serial.DataPhase(at.integer(p, len(p) - 1, 1, serial.LENGTH_MAX), done)


# Transparent mode on the lowest connected link; "+++" alone leaves it.
def _sendraw():
    links = _links()
    for link in links.links:
        if link and link.state == links.CONNECTED and link.type != "tcp_server":
            ctx.serial.after_reply(lambda: ctx.serial.enter_transparent(link))
            return
    raise AtError(at.E_STATE, "no connected link")


def _recv(p):
    at.count(p, 3)
    link = _links().get(_id(p))
    port = _port(p, 1, lo=0)
    n = at.integer(p, 2, 1, serial.DATA_MAX)
    if link.type == "tcp_server":
        peer = link.peer(port)
    else:
        peer = link.peers[0] if link.peers else link.leftover
    data = peer.take(n) if peer is not None and peer.buf is not None else b""
    return "+CIPRECV={},".format(len(data)).encode() + data


def _recvcfg_query():
    return "+CIPRECVCFG:{}".format(ctx.settings["recvcfg"])


def _recvcfg_set(p):
    at.count(p, 1)
    ctx.settings.set("recvcfg", at.integer(p, 0, 0, 1))
    links = sys.modules.get("firmware.links")
    if links and ctx.settings["recvcfg"]:
        links.push_held()


def _autoconn(p):
    at.count(p, 1, 2)
    lid = _id(p)
    if len(p) == 1:
        return "+CIPAUTOCONN:{}".format(ctx.settings["autoconn"][lid])
    flags = list(ctx.settings["autoconn"])
    flags[lid] = at.integer(p, 1, 0, 1)
    ctx.settings.set("autoconn", flags)


def _sslopt(p):
    at.count(p, 3, 4)
    lid = _id(p)
    root = at.integer(p, 1, 0, 1)
    client = at.integer(p, 2, 0, 1)
    if len(p) == 4 and at.integer(p, 3, 0, 1):
        raise AtError(at.E_UNSUPPORTED, "CRL checking is not available in MicroPython's ssl")
    opts = list(ctx.settings["sslopt"])
    opts[lid] = [root, client]
    ctx.settings.set("sslopt", opts)


def _domain(p):
    at.count(p, 1)
    name = at.text(p, 0, _HOST_MAX)
    try:
        found = socket.getaddrinfo(name, 0)  # blocking: DNS
    except OSError:
        raise AtError(at.E_FAIL, "cannot resolve " + name)
    ips = []
    for entry in found:
        ip, _port = _links().ip_port(entry[-1])
        if ip not in ips:
            ips.append(ip)
    ips.insert(0, "+CIPDOMAIN:{}".format(len(ips)))
    return ips


# The certificate store, loaded by the commands that use it (and by TLS): a link without TLS
# does not carry it.
def _certs():
    return registry.use("tcpip", "firmware.certs")


# The text streams to flash as it comes (certs.Upload): any length up to certs.MAX. Refused,
# the text is read up to its Ctrl+Z all the same.
def _certset(p):
    try:
        at.count(p, 1)
        upload = _certs().Upload(at.integer(p, 0, 0, 3))
    except (AtError, OSError) as e:
        return serial.DataPhase(0, None, end=_CTRL_Z, error=e)
    return serial.DataPhase(0, lambda _: upload.commit(), end=_CTRL_Z, sink=upload)


def _certget(p):
    at.count(p, 1)
    kind = at.integer(p, 0, 0, 3)
    if kind == _PRIVATE_KEY:
        refuse_if_hidden("the private key is not read back")
    data = _certs().pieces(kind)
    if data is None:
        raise AtError(at.E_STATE, "no certificate of this type")
    return serial.Line(b"+SSLCERTGET:", data)


# With the links not loaded no link runs: a stop is OK at once, unless the link is stored to
# be restored at power-on (AT+CIPAUTOCONN), which the links then forget.
def _stop(p):
    at.count(p, 1, 2)
    if "firmware.links" in sys.modules or ctx.settings["links"][_id(p)]:
        return _links().at_cipstop(p)
    return None


def _err(p):
    at.count(p, 1)
    link = _links().get(_id(p))
    return "+CIPERR:{},{}".format(link.id, link.error)


def _drops(p):
    at.count(p, 1)
    link = _links().get(_id(p))
    return "+CIPDROPS:{},{}".format(link.id, link.drops)


COMMANDS = {
    "SSLCERTGET": setter(_certget),
    "SSLCERTSET": setter(_certset),
    "CIPDOMAIN": setter(_domain),
    "CIPAUTOCONN": setter(_autoconn),
    "CIPSSLOPT": setter(_sslopt),
    "CIPSTART": setter(_start),
    "CIPSTOP": setter(_stop),
    "CIPSTATUS": setter(_status),
    "CIPSEND": setter(_send),
    "CIPSENDRAW": action(_sendraw),
    "CIPRECV": setter(_recv),
    "CIPRECVCFG": value(_recvcfg_query, _recvcfg_set),
    "CIPERR": setter(_err),
    "CIPDROPS": setter(_drops),
}
