# SNTP (RFC 4330 / RFC 5905 client side) and the RTC, for commands/sntp.py. Written here rather
# than using the frozen ntptime: ntptime blocks the loop (DNS + a 1 s blocking recv) and drops
# the fraction, and AT+SNTPTIME must report microseconds.
#
# Time is handled as (seconds since 1970-01-01 UTC, microseconds) with our own calendar
# functions, so nothing depends on the port's epoch (2000 on the ESP32, 1970 on the unix port)
# nor on its libc's idea of local time: the RTC is read and set as a datetime tuple.
#
# The RTC holds UTC (it sets the system clock, which TLS certificate checks use). AT+SNTPTIME and
# AT+RTCGET both show it in the zone of AT+SNTPCFG, as it is when they are asked: changing the
# zone changes what AT+RTCGET shows at once.
#
# firmware/app.py's housekeeping calls sync() by itself once the station is up: TLS needs the
# date.
#
# Blocking spot: DNS (getaddrinfo) once per server asked, instant for an IP address; on the
# board lwIP's resolver may take a few seconds for a name that does not answer.
import asyncio
import errno
import os
import socket
import time

import machine
from micropython import const

from firmware import at, ctx, wifi
from firmware.aio import readable

_PORT = const(123)
_WAIT_MS = const(2000)  # per server: AT+SNTPTIME fails within about 2 x this
_PKT = const(48)  # an NTP packet without extensions
_NTP_1970 = 2208988800  # seconds from 1900-01-01 to 1970-01-01 (too big for const on the board)
# Y2036: the 32-bit seconds of NTP wrap on 2036-02-07 06:28:16 (era 1). This code was written
# in 2026, so a timestamp before 2024-01-01 (NTP 3913056000) must be of era 1: add 2^32
# (as micropython-lib's ntptime does). Good until 2160.
_NTP_MIN = 3913056000


# Days since 1970-01-01 of a proleptic Gregorian date, and back (H. Hinnant's civil algorithms).
def _days(y, m, d):
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _civil(z):
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


# "2017-09-05T13:34:35.063568": UTC seconds and microseconds shown in the configured zone.
def text(secs, us):
    days, t = divmod(secs + ctx.settings["sntp_zone"] * 60, 86400)
    y, m, d = _civil(days)
    return "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:06d}".format(
        y, m, d, t // 3600, t // 60 % 60, t % 60, us
    )


# The RTC as (UTC seconds since 1970, microseconds). On the ESP32 the 8th field is microseconds.
def rtc_now():
    y, m, d, _, hh, mm, ss, us = machine.RTC().datetime()
    return _days(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss, us


def rtc_set(secs, us):
    days, t = divmod(secs, 86400)
    y, m, d = _civil(days)
    wd = (days + 3) % 7  # 0 is Monday; 1970-01-01 was a Thursday
    machine.RTC().datetime((y, m, d, wd, t // 3600, t // 60 % 60, t % 60, us))


# A zone as AT+SNTPCFG takes it, in minutes, or None. Whole hours "+8", "-5", "8", and the half
# and three-quarter hours real zones have, as "+5:30" / "+5.5", "+5:45" / "+5.75", "-9:30" /
# "-9.5"; -12..+14 hours. (No real zone is at :15, so ":15" / ".25" are refused.)
def parse_zone(v):
    if not v:
        return None
    sign = -1 if v[0] == "-" else 1
    if v[0] in "+-":
        v = v[1:]
    h, sep, f = v, "", ""
    for c in ":.":
        if c in v:
            h, sep, f = v.partition(c)
            break
    if not h or len(h) > 2 or not h.isdigit():
        return None
    if sep == ":":
        mins = {"00": 0, "30": 30, "45": 45}.get(f)
    elif sep == ".":
        mins = {"0": 0, "00": 0, "5": 30, "50": 30, "75": 45}.get(f)
    else:
        mins = 0
    if mins is None:
        return None
    z = sign * (int(h) * 60 + mins)
    return z if -720 <= z <= 840 else None


# "+8", "-5", "+5:30", "+0": the form AT+SNTPCFG? reports.
def zone_text(z):
    h, m = divmod(abs(z), 60)
    return "{}{}{}".format("-" if z < 0 else "+", h, ":{:02d}".format(m) if m else "")


# "host" or "host:port" (the port: an extension, a test server cannot have port 123).
def split_server(v):
    host, sep, port = v.rpartition(":")
    if sep and port.isdigit() and 0 < int(port) <= 0xFFFF:
        return host, int(port)
    return v, _PORT


# Ask the configured servers in turn (the second only if the first fails); set the RTC from the
# first good answer and return it (UTC seconds, microseconds). Raises AtError when there is no
# network or neither server gives a good answer; the RTC is then untouched.
async def sync():
    if not wifi.online():
        raise at.AtError(at.E_STATE, "no Wi-Fi link")
    why = []
    code = at.E_TIMEOUT
    for server in ctx.settings["sntp_servers"]:
        if not server:
            continue
        try:
            secs, us = await _ask(*split_server(server))
        except at.AtError as e:
            why.append("{}: {}".format(server, e.detail))
            if e.code != at.E_TIMEOUT:
                code = at.E_FAIL
            continue
        rtc_set(secs, us)
        return secs, us
    raise at.AtError(code, "; ".join(why) if why else "no server")


# One request to one server, its reply checked; the time at reception as (secs, us).
async def _ask(host, port):
    try:
        # blocking: DNS, once per server asked (instant for an IP address)
        addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][-1]
    except OSError as e:
        raise at.AtError(at.E_FAIL, "DNS failed ({})".format(e.args[0]))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.connect(addr)  # a connected UDP socket only takes datagrams from the server
        req = bytearray(_PKT)
        req[0] = 0x23  # LI 0, version 4, mode 3 (client)
        nonce = os.urandom(8)  # our transmit timestamp: the reply must echo it as its origin
        req[40:48] = nonce
        t1 = time.ticks_us()
        s.send(req)
        end = time.ticks_add(time.ticks_ms(), _WAIT_MS)
        while True:
            try:
                r = s.recv(_PKT + 64)
                break
            except OSError as e:
                if e.args[0] != errno.EAGAIN:
                    raise at.AtError(at.E_FAIL, "socket error {}".format(e.args[0]))
            left = time.ticks_diff(end, time.ticks_ms())
            if left <= 0:
                raise at.AtError(at.E_TIMEOUT, "no answer")
            try:
                await asyncio.wait_for_ms(readable(s), left)
            except asyncio.TimeoutError:
                raise at.AtError(at.E_TIMEOUT, "no answer")
        rtt = time.ticks_diff(time.ticks_us(), t1)
    finally:
        s.close()
    return _decode(r, nonce, rtt)


# An NTP timestamp (8 bytes at r[i:]) as (seconds since 1970, microseconds).
def _stamp(r, i):
    secs = int.from_bytes(r[i : i + 4], "big")
    if secs < _NTP_MIN:
        secs += 0x100000000
    return secs - _NTP_1970, (int.from_bytes(r[i + 4 : i + 8], "big") * 1000000) >> 32


# Check a reply (RFC 4330 section 5, RFC 5905 section 7.3) and return the time at its arrival:
# the transmit timestamp T3 plus half the network delay, delay = (T4 - T1) - (T3 - T2).
def _decode(r, nonce, rtt):
    if len(r) < _PKT:
        raise at.AtError(at.E_FAIL, "short reply")
    mode = r[0] & 7
    if mode != 4:
        raise at.AtError(at.E_FAIL, "not a server reply (mode {})".format(mode))
    if r[1] == 0:  # kiss-of-death: the reference id is a code such as RATE or DENY
        kod = "".join(chr(c) for c in r[12:16] if 32 < c < 127)
        raise at.AtError(at.E_FAIL, "kiss-of-death " + kod)
    if r[0] >> 6 == 3 or r[1] > 15:
        raise at.AtError(at.E_FAIL, "server not synchronized")
    if r[24:32] != nonce:
        raise at.AtError(at.E_FAIL, "origin timestamp mismatch")
    if r[40:48] == bytes(8):
        raise at.AtError(at.E_FAIL, "zero transmit timestamp")
    secs, us = _stamp(r, 40)
    if r[32:40] == bytes(8):
        held = 0  # no receive timestamp: count it all as network delay
    else:
        s2, us2 = _stamp(r, 32)
        held = (secs - s2) * 1000000 + us - us2
    delay = rtt - max(held, 0)
    if delay > 0:
        us += delay // 2
        secs += us // 1000000
        us %= 1000000
    return secs, us
