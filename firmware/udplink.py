# A UDP link (udp_unicast, udp_broadcast): its bound socket, and each datagram as one event or
# kept in the link's pull buffer. Loaded with the first UDP link (firmware/links.py _code).
import socket

from firmware import aio, ctx, events, links


# Bound at AT+CIPSTART's OK, so that a port in use is its ERROR.
def start(link):
    _bind(link)
    events.emit("CIPEVENT", "{},UDP,CONNECTED".format(link.id), True)


async def run(link):
    if link.sock is None:  # bound again after a failure (AT+CIPSTART binds the first time)
        _bind(link)
        events.emit("CIPEVENT", "{},UDP,CONNECTED".format(link.id))
    s = link.sock
    link.udp = links.Peer(s, link.host, link.rport)
    link.peers = [link.udp]
    link.state = links.CONNECTED

    def take():
        return _datagram(link)

    while True:
        await aio.readable(s)
        if ctx.serial.sink is link or ctx.settings["recvcfg"]:
            await ctx.serial.send(take, link)  # in transparent mode: raw bytes
        else:
            _keep(link, s.recvfrom(links.CHUNK)[0])


def _bind(link):
    link.addr = links.resolve(link.host, link.rport)  # blocking: DNS
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    link.sock = s
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if link.type == "udp_broadcast":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(socket.getaddrinfo("0.0.0.0", link.lport)[0][-1])
    s.setblocking(False)


# One datagram as an event (the engine calls it with the line free); an empty one is nothing
# to deliver.
def _datagram(link):
    if link.udp.n:
        return link.held(link.udp)
    data, addr = link.sock.recvfrom(links.CHUNK)
    if not data:
        return None
    if link.type == "udp_broadcast":
        ip, port = links.ip_port(addr)
        head = "+CIPEVENT:UDP_BROADCAST,{},{},{},{},".format(ip, port, link.id, len(data))
    else:
        head = "+CIPEVENT:SOCKET,{},{},".format(link.id, len(data))
    return head, data


def _keep(link, data):
    p = link.udp
    if p.buf is None:
        p.buf = link.pull_buffer()
    if p.n + len(data) > len(p.buf):
        link.drops += 1
        return
    p.buf[p.n : p.n + len(data)] = data
    p.n += len(data)
