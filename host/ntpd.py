"""The virtual module's NTP server: the PC's clock over SNTP, on 127.0.0.1 (RFC 5905 server mode).

The launcher starts it and maps the firmware's factory SNTP servers to it (EMW_NETMAP, see
host/board/socket.py), so AT+SNTPTIME works on a fresh `make run` without the Internet.
"""

from __future__ import annotations

import asyncio
import struct
import time

NTP_1970 = 2208988800  # seconds from 1900-01-01 (NTP's era 0) to 1970-01-01
PACKET = struct.Struct("!BBbbII4sQQQQ")  # RFC 5905 figure 8: the 48-byte header
MODE_CLIENT, MODE_SERVER = 3, 4
STRATUM = 1  # a primary server: its reference is the PC's clock
PRECISION = -20  # about a microsecond, log2 seconds
REFERENCE = b"LOCL"  # an uncalibrated local clock (RFC 5905 figure 12)


def ntp_time(t: float) -> int:
    """A Unix time as an NTP timestamp: 32 bits of seconds (they wrap in 2036), 32 of fraction."""
    secs = int(t)
    return (((secs + NTP_1970) & 0xFFFFFFFF) << 32) | int((t - secs) * 2**32)


def reply(request: bytes, received: float, now: float) -> bytes | None:
    """The answer to a client's request (None for anything that is not one)."""
    if len(request) < PACKET.size:
        return None
    first = request[0]
    version, mode = first >> 3 & 7, first & 7
    if mode != MODE_CLIENT or not 1 <= version <= 4:
        return None
    poll = request[2]
    (transmit,) = struct.unpack_from("!Q", request, 40)
    return PACKET.pack(
        version << 3 | MODE_SERVER,  # leap indicator 0: no warning
        STRATUM,
        poll if poll < 128 else 0,
        PRECISION,
        0,  # root delay
        0,  # root dispersion
        REFERENCE,
        ntp_time(now),  # reference: the clock is always "just set"
        transmit,  # origin: the client's transmit timestamp, echoed
        ntp_time(received),
        ntp_time(now),
    )


class NtpProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        received = time.time()
        out = reply(data, received, time.time())
        if out is not None:
            self.transport.sendto(out, addr)  # type: ignore[attr-defined]


async def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.DatagramTransport, int]:
    """Start answering on host:port (0: a free port); the transport and the port."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        NtpProtocol, local_addr=(host, port)
    )
    return transport, transport.get_extra_info("sockname")[1]
