# machine.py: the ESP32 machine API on the PC (MicroPython, unix port).
#
# Extends the unix port's built-in machine (idle, mem8, Signal...) with what an ESP32 has: UART
# (a TCP connection to host/launcher.py, which relays it to the pty), Pin, RTC, resets and sleep,
# unique_id, WDT. Values and signatures follow docs.micropython.org for the esp32 port.

import sys

_path = sys.path
sys.path = ()
try:
    from machine import *  # the built-in module of the same name
finally:
    sys.path = _path
    del _path

import errno
import io
import json
import os
import select
import socket
import time

# Exit codes the launcher understands (host/launcher.py EXIT_*).
_EXIT_RESET = const(3)
_EXIT_SLEEP = const(4)
_EXIT_SOFT = const(5)
_EXIT_LINK = const(6)

_MP_STREAM_FLUSH = const(1)
_MP_STREAM_POLL = const(3)
_MP_STREAM_CLOSE = const(4)
_MP_STREAM_GET_FILENO = const(10)
_POLL_RD = const(0x0001)
_POLL_WR = const(0x0004)
_TICK_MS = const(10)  # a FreeRTOS tick: ESP-IDF's default CONFIG_FREERTOS_HZ=100

# reset_cause() values (esp32 modmachine.h)
PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)
# wake_reason() values (esp32)
PIN_WAKE = const(2)
EXT0_WAKE = const(2)
EXT1_WAKE = const(3)
TIMER_WAKE = const(4)
TOUCHPAD_WAKE = const(5)
ULP_WAKE = const(6)
SLEEP = const(2)
DEEPSLEEP = const(4)

_CAUSES = {"PWRON": 1, "HARD": 2, "WDT": 3, "DEEPSLEEP": 4, "SOFT": 5}
_WAKES = {"PIN": 2, "TIMER": 4}


# Path of a file in the state folder. Outside the launcher (VM unit tests) there is none:
# use /tmp so nothing lands in the working directory.
def _state(name):
    d = os.getenv("EMW_STATE")
    return d + "/" + name if d else "/tmp/emw-" + name


def _addr(var):
    host, _, port = os.getenv(var).rpartition(":")
    return socket.getaddrinfo(host, int(port))[0][-1]


# Send one request to the launcher's control port and return its decoded reply.
def _ctl(req):
    if not os.getenv("EMW_CONTROL"):
        return {}
    s = socket.socket(station=False)
    try:
        s.connect(_addr("EMW_CONTROL"))
        s.write(json.dumps(req).encode() + b"\n")
        return json.loads(s.readline())
    finally:
        s.close()


# End the process; the launcher starts it again as the reset or wake-up says. UART writes are
# already in the socket: the launcher relays them before it sees the connection close.
def _exit(code):
    raise SystemExit(code)


def reset():
    _exit(_EXIT_RESET)


def soft_reset():
    _exit(_EXIT_SOFT)


def reset_cause():
    return _CAUSES.get(os.getenv("EMW_RESET_CAUSE"), PWRON_RESET)


def wake_reason():
    return _WAKES.get(os.getenv("EMW_WAKE"), 0)


def deepsleep(ms=None):
    _ctl({"op": "sleep", "ms": ms})
    _exit(_EXIT_SLEEP)


# Light sleep keeps RAM: the launcher answers when the wake pin is pulled or ms have passed.
def lightsleep(ms=None):
    _ctl({"op": "lightsleep", "ms": ms})


def freq(hz=None):
    if hz is None:
        return 160000000
    return None


# The base MAC address: made once per state folder, Espressif OUI 24:0A:C4.
def unique_id():
    path = _state("mac")
    try:
        with open(path) as f:
            return bytes.fromhex(f.read().strip())
    except OSError:
        pass
    mac = b"\x24\x0a\xc4" + os.urandom(3)
    with open(path, "w") as f:
        f.write(mac.hex())
    return mac


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        pass


class Pin:
    # esp32 values (machine_pin.c)
    IN = const(1)
    OUT = const(3)
    OPEN_DRAIN = const(7)
    PULL_UP = const(2)
    PULL_DOWN = const(1)
    PULL_HOLD = const(4)
    IRQ_RISING = const(1)
    IRQ_FALLING = const(2)
    WAKE_LOW = const(4)
    WAKE_HIGH = const(5)
    DRIVE_0 = const(0)
    DRIVE_1 = const(1)
    DRIVE_2 = const(2)
    DRIVE_3 = const(3)

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        self.id = id
        self._mode = None
        self._pull = None
        self._value = 1  # inputs read high: the wake pin idles pulled up
        self._irq = None
        self.init(mode, pull, value=value, drive=drive, hold=hold)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self._value = 1 if value else 0

    def value(self, x=None):
        if x is None:
            return self._value
        self._value = 1 if x else 0
        return None

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
        self._irq = (handler, trigger, wake)
        return self

    def mode(self, mode=None):
        if mode is None:
            return self._mode
        self._mode = mode
        return None

    def pull(self, pull=None):
        if pull is None:
            return self._pull
        self._pull = pull
        return None

    def __repr__(self):
        return "Pin({})".format(self.id)


def _days(y, m, d):
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
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


# The clock: the host's UTC time plus an offset (microseconds) kept in STATE/rtc, so a time set
# by the firmware survives resets and deep sleep. A power-on starts it at 2000-01-01 00:00:00:
# the ESP32 keeps its time in the RTC domain, which loses it with the power
# (ports/esp32/machine_rtc.c; the chip has no backup battery).
class RTC:
    def __init__(self, id=0):
        try:
            with open(_state("rtc")) as f:
                self._off = int(f.read())
        except (OSError, ValueError):
            self._off = 0

    def init(self, datetime):
        self.datetime(datetime)

    def _now_us(self):
        return time.time_ns() // 1000 + self._off

    def datetime(self, dt=None):
        if dt is None:
            us = self._now_us()
            s, us = divmod(us, 1000000)
            days, s = divmod(s, 86400)
            y, m, d = _civil(days)
            # weekday: 0 is Monday; 1970-01-01 was a Thursday
            return (y, m, d, (days + 3) % 7, s // 3600, s // 60 % 60, s % 60, us)
        y, m, d, _, hh, mm, ss = dt[:7]
        us = dt[7] if len(dt) > 7 else 0
        want = ((_days(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss) * 1000000) + us
        self._off = want - time.time_ns() // 1000
        with open(_state("rtc"), "w") as f:
            f.write(str(self._off))
        return None

    def memory(self, data=None):
        # RTC memory survives deep sleep: keep it in the state folder.
        path = _state("rtcmem")
        if data is None:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError:
                return b""
        with open(path, "wb") as f:
            f.write(data)
        return None


# At power-on of the virtual module (host/launcher.py sets EMW_STATE), the RTC reads
# 2000-01-01 00:00:00.
def _rtc_power_on():
    with open(_state("rtc"), "w") as f:
        f.write(str(_days(2000, 1, 1) * 86400000000 - time.time_ns() // 1000))


if os.getenv("EMW_STATE") and reset_cause() == PWRON_RESET:
    _rtc_power_on()

_uarts = {}  # id -> socket: every UART(id) object uses the same connection, like one peripheral
_NOT_GIVEN = object()


# UART over a TCP connection to the launcher. Reads are non-blocking by default (timeout=0):
# read()/readinto() return None when nothing is there, as on the board. ioctl answers
# MP_STREAM_GET_FILENO so asyncio's poller sleeps in the OS instead of spinning.
class UART(io.IOBase):
    INV_TX = const(1)
    INV_RX = const(2)
    INV_RTS = const(4)
    INV_CTS = const(8)
    RTS = const(1)
    CTS = const(2)
    IRQ_RXIDLE = const(1)
    IRQ_BREAK = const(2)

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, **kw):
        self._id = id
        self._cfg = {
            "baudrate": 115200,
            "bits": 8,
            "parity": None,
            "stop": 1,
            "flow": 0,
            "timeout": 0,
            "timeout_char": 0,
            "rxbuf": 256,
            "txbuf": 256,
        }
        self._unsent = 0  # bytes written while the host held CTS
        self._s = None
        self.init(baudrate, bits, parity, stop, **kw)

    def init(self, baudrate=_NOT_GIVEN, bits=_NOT_GIVEN, parity=_NOT_GIVEN, stop=_NOT_GIVEN, **kw):
        c = self._cfg
        for k, v in (("baudrate", baudrate), ("bits", bits), ("parity", parity), ("stop", stop)):
            if v is not _NOT_GIVEN:
                c[k] = v
        for k in ("flow", "timeout", "timeout_char", "rxbuf", "txbuf"):
            if k in kw:
                c[k] = kw[k]
        if c["bits"] not in (5, 6, 7, 8) or c["stop"] not in (1, 1.5, 2):
            raise ValueError("invalid UART settings")
        if c["parity"] not in (None, 0, 1):
            raise ValueError("invalid parity")
        self._s = _uarts.get(self._id)
        if self._s is None:
            s = socket.socket(station=False)
            # TCP_NODELAY: without it Nagle holds a response written after its echo until the
            # launcher's delayed ACK (40 ms).
            s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
            # SOL_SOCKET, SO_SNDBUF: what the connection holds is the TX ring (board.UART_TXBUF),
            # so a host that stops reading stops write() as soon as a board's would
            s.setsockopt(1, 7, kw.get("txbuf", 4096))
            s.connect(_addr("EMW_UART"))
            s.setblocking(False)
            _uarts[self._id] = self._s = s
        self._p = select.poll()
        self._p.register(self._s, select.POLLIN)
        _ctl(
            {
                "op": "uart",
                "baudrate": c["baudrate"],
                "bits": c["bits"],
                "parity": c["parity"],
                "stop": c["stop"],
                "flow": c["flow"],
            }
        )

    def deinit(self):
        s = _uarts.pop(self._id, None)
        if s:
            s.close()
        self._s = None

    def __repr__(self):
        c = self._cfg
        return "UART({}, baudrate={}, bits={}, parity={}, stop={}, flow={})".format(
            self._id, c["baudrate"], c["bits"], c["parity"], c["stop"], c["flow"]
        )

    # Wait up to ms for input; True if some is there.
    def _wait(self, ms):
        for _, ev in self._p.ipoll(ms):
            if ev & (select.POLLHUP | select.POLLERR):
                return True  # let recv report it
            return True
        return False

    def _recv_into(self, mv):
        n = self._s.readinto(mv)
        if n == 0:
            self._lost()
        return n or 0

    def _lost(self):
        # The launcher closed the link: it is stopping or replacing this process.
        print("machine.UART: link to the launcher lost")
        raise SystemExit(_EXIT_LINK)

    def any(self):
        if not self._wait(0):
            return 0
        # Peek at most rxbuf bytes: the board's any() counts its RX ring buffer only.
        try:
            return len(self._s.recv(self._cfg["rxbuf"], socket.MSG_PEEK))
        except OSError:
            return 0

    def readinto(self, buf, nbytes=-1):
        if nbytes < 0 and not self._cfg["timeout"]:
            # The asyncio path: one non-blocking read, no allocation (as on the board).
            n = self._s.readinto(buf)  # None when nothing is there
            if n == 0:
                self._lost()
            return n
        mv = memoryview(buf)
        if nbytes >= 0:
            mv = mv[:nbytes]
        c = self._cfg
        got = 0
        wait = c["timeout"]
        while got < len(mv):
            if not self._wait(wait):
                break
            n = self._recv_into(mv[got:])
            got += n
            if n == 0 and not wait:
                break
            wait = c["timeout_char"]
        return got or None

    def read(self, nbytes=-1):
        if nbytes < 0:
            # All that is there, once something is (within timeout).
            self._wait(self._cfg["timeout"])
            nbytes = self.any()
            if not nbytes:
                return None
        buf = bytearray(nbytes)
        n = self.readinto(buf, nbytes)
        if n is None:
            return None
        return bytes(buf) if n == nbytes else bytes(buf[:n])

    def readline(self):
        out = bytearray()
        one = bytearray(1)
        while self.readinto(one):
            out += one
            if one[0] == 10:
                break
        return bytes(out) if out else None

    # ports/esp32/machine_uart.c (v1.24.0). With CTS flow control, a host that holds CTS stops
    # the transmitter: the launcher keeps STATE/cts.hold while it holds (its "cts" control op).
    def _cts_held(self):
        if not self._cfg["flow"] & UART.CTS:
            return False
        try:
            os.stat(_state("cts.hold"))
            return True
        except OSError:
            return False

    # uart_write_bytes() returns once the bytes are in the TX ring; a full ring (CTS held)
    # blocks it until there is room.
    def write(self, buf):
        if self._cts_held():
            self._unsent += len(buf)
            while self._unsent > self._cfg["txbuf"] and self._cts_held():
                time.sleep_ms(_TICK_MS)
        else:
            self._unsent = 0
        n = self._s.write(buf)  # non-blocking: all, part, or None
        if n == len(buf):
            return n  # the usual case, no allocation
        mv = memoryview(buf)
        off = n or 0
        p = None
        while off < len(mv):
            n = self._s.write(mv[off:])
            if n:
                off += n
            else:
                # The launcher is not keeping up: block like a full TX FIFO.
                if p is None:
                    p = select.poll()
                    p.register(self._s, select.POLLOUT)
                p.poll(100)
        return off

    # MP_STREAM_FLUSH: uart_wait_tx_done() for (3 + txbuf) * 26000 / baudrate ticks, then
    # OSError(ETIMEDOUT). Unless CTS is held, the launcher has the bytes: done.
    def flush(self):
        c = self._cfg
        ms = (3 + c["txbuf"]) * 26000 // c["baudrate"] * _TICK_MS
        t0 = time.ticks_ms()
        while self._cts_held():
            if time.ticks_diff(time.ticks_ms(), t0) >= ms:
                raise OSError(errno.ETIMEDOUT)
            time.sleep_ms(_TICK_MS)

    def txdone(self):
        return not self._cts_held()

    def sendbreak(self):
        pass

    def irq(self, handler=None, trigger=0, hard=False):
        return None

    def ioctl(self, req, arg):
        if req == _MP_STREAM_POLL:
            ret = 0
            if arg & _POLL_RD and self._wait(0):
                ret |= _POLL_RD
            if arg & _POLL_WR:
                ret |= _POLL_WR
            return ret
        if req == _MP_STREAM_GET_FILENO:
            return self._s.fileno()
        if req == _MP_STREAM_FLUSH:
            self.flush()
            return 0
        if req == _MP_STREAM_CLOSE:
            return 0
        return -22  # -EINVAL
