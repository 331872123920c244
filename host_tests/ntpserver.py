"""A small NTP server for tests (RFC 5905 server mode, UDP on 127.0.0.1), with faults on demand.

Its clock is the host's UTC time plus `offset` seconds, or stands still at `freeze` (a Unix time)
when that is set. Each reply stamps the receive time (T2) when the request arrives and the
transmit time (T3) when it leaves (after `delay` seconds), so T3 - T2 is the server's own
holding time, which a client subtracts from its round trip (RFC 5905 section 8).

Faults: `fraction` forces the fraction field of T2 and T3; `stratum` (0 with `kiss` = a
kiss-of-death, 16 = unsynchronized); `leap` (3 = alarm); `mode` (anything but 4 is wrong);
`zero_transmit`; `bad_origin` (does not echo the client's transmit timestamp); `short` (a
truncated packet); `silent` (reads requests, never answers). `requests` counts what arrived.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from host_tests.module import SERVER_IP

NTP_1970 = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_FORMAT = "!BBbbII4sQQQQ"  # RFC 5905 figure 8, without extensions: 48 bytes


def ntp_stamp(t: float, fraction: int | None = None) -> int:
    """A Unix time as a 64-bit NTP timestamp (era 0 and 1 alike: the seconds wrap in 2036)."""
    secs = int(t // 1)
    frac = int((t - secs) * 2**32) if fraction is None else fraction
    return (((secs + NTP_1970) & 0xFFFFFFFF) << 32) | (frac & 0xFFFFFFFF)


class NtpServer:
    def __init__(self) -> None:
        self.offset = 0.0
        self.freeze: float | None = None
        self.fraction: int | None = None
        self.stratum = 2
        self.kiss = b"RATE"
        self.leap = 0
        self.mode = 4
        self.version = 4
        self.zero_transmit = False
        self.bad_origin = False
        self.short = False
        self.silent = False
        self.delay = 0.0
        self.requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((SERVER_IP, 0))
        self.sock.settimeout(0.1)  # so that close() ends the thread soon
        self.port = self.sock.getsockname()[1]
        self.address = f"{SERVER_IP}:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self.freeze if self.freeze is not None else time.time() + self.offset

    def _serve(self) -> None:
        while not self._stop:
            try:
                req, peer = self.sock.recvfrom(1024)
            except TimeoutError:
                continue
            except OSError:
                return
            t2 = self.now()
            self.requests += 1
            if self.silent or len(req) < 48:
                continue
            if self.delay:
                time.sleep(self.delay)
            with_kiss = self.stratum == 0
            origin = struct.unpack("!Q", req[40:48])[0]
            if self.bad_origin:
                origin ^= 0x5A5A5A5A
            ref = self.kiss if with_kiss else b"GPS\0"
            t3 = self.now()
            reply = struct.pack(
                _FORMAT,
                (self.leap << 6) | (self.version << 3) | self.mode,
                self.stratum,
                6,  # poll
                -20,  # precision (about 1 us)
                0,  # root delay
                0,  # root dispersion
                ref,
                ntp_stamp(t2 - 16),  # reference timestamp: last set
                origin,
                ntp_stamp(t2, self.fraction),
                0 if self.zero_transmit else ntp_stamp(t3, self.fraction),
            )
            if self.short:
                reply = reply[:40]
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
