# A tcp_server link (AT+CIPSTART=<id>,tcp_server,<port>): its listening socket and up to five
# clients, each read as a client link's stream is (links.Link.pump). Loaded with the first
# server (firmware/links.py _code).
from micropython import const

from firmware import aio, events, links

_CLIENTS_MAX = const(5)


# Listening at AT+CIPSTART's OK, so that a port in use is its ERROR.
def start(link):
    link.sock = aio.listen("0.0.0.0", link.lport, _CLIENTS_MAX)


async def run(link):
    if link.sock is None:
        start(link)
    s = link.sock
    link.state = links.CONNECTED
    while True:
        c, addr = await aio.accept(s)
        ip, port = links.ip_port(addr)
        if len(link.peers) >= _CLIENTS_MAX:
            c.close()
            continue
        peer = links.Peer(c, ip, port)
        link.peers.append(peer)
        events.emit("CIPEVENT", "CLIENT,CONNECTED,{},{}".format(ip, port))
        peer.task = aio.task(_serve(link, peer))


async def _serve(link, peer):
    try:
        await link.pump(peer)
    except Exception as e:  # a reset ends this client only
        link.error = links.reason(e)
    peer.task = None
    drop_client(link, peer)


def drop_client(link, peer):
    if peer in link.peers:
        link.peers.remove(peer)
        peer.close()
        events.emit("CIPEVENT", "CLIENT,CLOSED,{},{}".format(peer.ip, peer.port), True)
