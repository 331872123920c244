# bluetooth.py: MicroPython's bluetooth module (ESP32, NimBLE) on the PC, peripheral role.
# C source: extmod/modbluetooth.c, extmod/nimble/modbluetooth_nimble.c (v1.24.0).
#
# The radio is bumble, running in the launcher (host/btbridge.py); this talks to it over TCP
# (EMW_BT = host:port) with the frames that file describes. What the firmware sees follows
# docs.micropython.org/en/latest/library/bluetooth.html and the ESP32 port:
# - IRQs arrive from the asyncio loop (a task started by active(True)), with the data tuples
#   the docs give (addresses as memoryviews, valid only during the call).
# - The local GATT values live here: gatts_read/gatts_write need no round trip. A phone's
#   write is copied into the value (truncated to its buffer, 20 bytes unless gatts_set_buffer
#   says more; appended in append mode) before the IRQ, and the write is answered only after
#   the IRQ handler returned, as on the ESP32 whose NimBLE task waits for the handler.
# - gatts_notify raises OSError(ENOMEM) while the stack holds _TX_SLOTS notifications that
#   have not left yet (NimBLE's mbufs), so senders must retry, as on the board.
# - Bonds are the firmware's to keep, as on the ESP32 (whose NimBLE has no store of its own in
#   MicroPython): bumble's key store asks for them with _IRQ_GET_SECRET (sec_type, index, key)
#   and _IRQ_SET_SECRET (sec_type, key, value; value None deletes), and the handler's return
#   value goes back (a buffer or None; True or False). These are answered as soon as they
#   arrive, also while a blocking call waits (as the board's NimBLE task calls the handler
#   while active(True) waits), so a handler set before active(True) is asked at start.
# Central role, scanning, L2CAP and the GATT client are not provided (OSError EOPNOTSUPP).

import asyncio
import errno
import json
import os
import select
import socket
import struct
import sys

from asyncio import StreamReader

import machine

# The reader's class (asyncio.stream) and its buffer come with the stand-ins, in their share of
# the heap, not with the first AT+BTDISCOVERY in the firmware's: on the board the radio's
# transport is NimBLE's host task, outside the GC heap. So do the BLE object and its link to
# the radio (_prepare, at the end).
_PUMP_BUF = bytearray(1024)

_ACTIVE = const(1)
_CONFIG = const(2)
_ADV = const(3)
_REGISTER = const(4)
_NOTIFY = const(5)
_WRITE = const(6)
_DISCONNECT = const(7)
_PASSKEY = const(8)
_WRITE_ACK = const(9)
_SECRET = const(10)
_R_ACTIVE = const(0x81)
_R_REGISTER = const(0x84)
_SENT = const(0x85)
_IRQ = const(0x90)

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_GATTS_INDICATE_DONE = const(20)
_IRQ_MTU_EXCHANGED = const(21)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_GET_SECRET = const(29)
_IRQ_SET_SECRET = const(30)
_IRQ_PASSKEY_ACTION = const(31)

_TX_SLOTS = const(8)  # notifications the stack may hold before ENOMEM
_RPC_TIMEOUT_MS = const(5000)
_EOPNOTSUPP = const(95)
_ENOMEM = const(12)
_ENOTCONN = const(107)
_EINVAL = const(22)
_GAP_NAME_MAX = const(31)  # NimBLE's BLE_SVC_GAP_DEVICE_NAME_MAX_LENGTH (extmod/nimble/syscfg)

FLAG_READ = const(0x0002)
FLAG_WRITE_NO_RESPONSE = const(0x0004)
FLAG_WRITE = const(0x0008)
FLAG_NOTIFY = const(0x0010)
FLAG_INDICATE = const(0x0020)


class UUID:
    def __init__(self, value):
        if isinstance(value, UUID):
            value = value._s
        if isinstance(value, int):
            self._s = "{:04X}".format(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            b = bytes(reversed(bytes(value)))  # little-endian on the air
            h = b.hex().upper()
            self._s = h if len(b) == 2 else "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
        else:
            s = value.upper()
            if len(s.replace("-", "")) not in (4, 32):
                raise ValueError("invalid UUID")
            self._s = s
        self._bytes = None

    def __eq__(self, other):
        return isinstance(other, UUID) and other._s == self._s

    def __hash__(self):
        return hash(self._s)

    def __str__(self):
        return self._s

    def __repr__(self):
        return "UUID('{}')".format(self._s) if len(self._s) > 4 else "UUID(0x{})".format(self._s)

    def __bytes__(self):
        return bytes(reversed(bytes.fromhex(self._s.replace("-", ""))))

    def __len__(self):
        return len(self._s.replace("-", "")) // 2


class _Value:
    def __init__(self):
        self.buf = bytearray(20)  # NimBLE's default value size in MicroPython
        self.n = 0
        self.append = False


class BLE:
    _inst = None

    def __new__(cls):
        if BLE._inst is None:
            BLE._inst = object.__new__(cls)
            BLE._inst._init()
        return BLE._inst

    def __init__(self):
        pass

    def _init(self):
        self._sock = None
        self._on = False
        self._handler = None
        self._cfg = {"gap_name": "MPY ESP32", "mtu": 23, "bond": True, "mitm": False}
        self._cfg["io"] = 3  # _IO_CAPABILITY_NO_INPUT_OUTPUT
        self._cfg["le_secure"] = True
        self._values = {}  # value handle -> _Value
        self._rx = bytearray()  # bytes received and not yet framed
        self._replies = {}  # op -> payload of a reply a blocking call waits for
        self._pending = []  # IRQ frames received during a blocking call
        self._tx = 0  # notifications sent and not yet reported SENT
        self._task = None
        mac = bytearray(machine.unique_id())
        mac[5] = (mac[5] + 2) & 0xFF  # the ESP32's Bluetooth MAC is its base MAC + 2
        self._mac = bytes(mac)

    # ----- the link to the bridge

    def _send(self, op, payload=b""):
        if self._sock is None:
            raise OSError(_ENOTCONN)
        hdr = struct.pack(">HB", len(payload) + 1, op)
        self._write_all(hdr + payload)

    def _write_all(self, data):
        mv = memoryview(data)
        while mv:
            try:
                n = self._sock.write(mv)
            except OSError:
                n = None
            if n:
                mv = mv[n:]
            else:
                p = select.poll()
                p.register(self._sock, select.POLLOUT)
                p.poll(100)

    def _connect(self):
        host, _, port = (os.getenv("EMW_BT") or "").rpartition(":")
        if not host:
            raise OSError(_EOPNOTSUPP)  # the launcher has no radio (bumble not installed)
        s = socket.socket(station=False)
        s.connect(socket.getaddrinfo(host, int(port))[0][-1])
        s.setblocking(False)
        self._sock = s

    # Read what is there; return False when the bridge closed the link.
    def _fill(self):
        try:
            data = self._sock.read(4096)
        except OSError:
            return True
        if data is None:
            return True
        if not data:
            return False
        self._rx.extend(data)
        return True

    # Take the complete frames out of _rx: replies are kept, IRQs run (or wait).
    def _frames(self, hold):
        rx = self._rx
        i = 0
        while len(rx) - i >= 2:
            n = (rx[i] << 8) | rx[i + 1]
            if len(rx) - i < 2 + n:
                break
            op = rx[i + 2]
            payload = bytes(rx[i + 3 : i + 2 + n])
            i += 2 + n
            if op == _IRQ and payload[0] in (_IRQ_GET_SECRET, _IRQ_SET_SECRET):
                self._secret(payload)
            elif op == _IRQ:
                if hold:
                    self._pending.append(payload)
                else:
                    self._irq(payload)
            elif op == _SENT:
                self._sent(payload)
            else:
                self._replies[op] = payload
        if i:
            self._rx = rx[i:]  # (bytearray has no del on MicroPython)

    # A blocking request, as the C API's calls are (only used for rare set-up calls).
    def _call(self, op, payload, reply):
        self._send(op, payload)
        p = select.poll()
        p.register(self._sock, select.POLLIN)
        waited = 0
        while reply not in self._replies:
            if waited >= _RPC_TIMEOUT_MS:
                raise OSError(errno.ETIMEDOUT)  # the chip's number (newlib 116)
            p.poll(50)
            waited += 50
            if not self._fill():
                raise OSError(_ENOTCONN)
            self._frames(True)
        return self._replies.pop(reply)

    async def _pump(self):
        s = StreamReader(self._sock)
        buf = _PUMP_BUF
        try:
            while True:
                for payload in self._pending:
                    self._irq(payload)
                self._pending.clear()
                try:
                    n = await s.readinto(buf)
                except OSError:
                    n = None
                if n == 0:
                    break
                if n:
                    self._rx.extend(memoryview(buf)[:n])
                    self._frames(False)
        finally:
            self._task = None

    # ----- IRQs

    def _irq(self, p):
        code = p[0]
        h = self._handler
        if code in (_IRQ_CENTRAL_CONNECT, _IRQ_CENTRAL_DISCONNECT):
            conn, kind = struct.unpack_from(">HB", p, 1)
            if code == _IRQ_CENTRAL_DISCONNECT:
                self._tx = 0
            data = (conn, kind, memoryview(p)[4:10])
        elif code == _IRQ_GATTS_WRITE:
            conn, handle = struct.unpack_from(">HH", p, 1)
            v = self._values.get(handle)
            if v is not None:
                start = v.n if v.append else 0
                k = min(len(p) - 5, len(v.buf) - start)
                v.buf[start : start + k] = memoryview(p)[5 : 5 + k]
                v.n = start + k
            data = (conn, handle)
            try:
                if h is not None:
                    h(code, data)
            finally:
                self._send(_WRITE_ACK)
            return
        elif code == _IRQ_MTU_EXCHANGED:
            data = struct.unpack_from(">HH", p, 1)
        elif code == _IRQ_ENCRYPTION_UPDATE:
            conn, enc, auth, bonded, size = struct.unpack_from(">HBBBB", p, 1)
            data = (conn, bool(enc), bool(auth), bool(bonded), size)
        elif code == _IRQ_PASSKEY_ACTION:
            data = struct.unpack_from(">HBI", p, 1)
        else:
            return
        if h is not None:
            h(code, data)

    # A secret asked for by the stack: the handler answers, the answer goes back at once.
    # IRQ payload: seq u16, sec_type u8, then GET: index u16, has_key u8, key; SET: key length
    # u8, key, has_value u8, value. Reply SECRET: seq u16, ok u8, the value (GET).
    def _secret(self, p):
        code = p[0]
        seq, sec_type = struct.unpack_from(">HB", p, 1)
        mv = memoryview(p)
        if code == _IRQ_GET_SECRET:
            index, has_key = struct.unpack_from(">HB", p, 4)
            data = (sec_type, index, mv[7:] if has_key else None)
        else:
            n = p[4]
            data = (sec_type, mv[5 : 5 + n], mv[6 + n :] if p[5 + n] else None)
        r = None
        h = self._handler
        if h is not None:
            try:
                r = h(code, data)
            except Exception as e:  # printed and taken as None, as the C side does
                sys.print_exception(e)
                r = None
        if code == _IRQ_GET_SECRET:
            out = struct.pack(">HB", seq, r is not None) + (bytes(r) if r is not None else b"")
        else:
            out = struct.pack(">HB", seq, bool(r))
        self._send(_SECRET, out)

    def _sent(self, p):
        conn, handle, indicate, status = struct.unpack(">HHBB", p)
        if indicate:
            if self._handler is not None:
                self._handler(_IRQ_GATTS_INDICATE_DONE, (conn, handle, status))
        elif self._tx:
            self._tx -= 1

    # ----- the API

    def active(self, on=None):
        if on is None:
            return self._on
        on = bool(on)
        if on and self._sock is None:
            self._connect()
        if self._sock is not None:
            self._call(_ACTIVE, self._mac + bytes((on,)), _R_ACTIVE)
            self._send(_CONFIG, json.dumps(self._cfg).encode())
        if on and self._task is None:
            self._task = asyncio.create_task(self._pump())
        if not on:
            self._values = {}
            self._tx = 0
        self._on = on
        return None

    def config(self, *args, **kw):
        if args:
            if len(args) != 1 or kw:
                raise TypeError("must query one param")
            key = args[0]
            if key == "mac":
                return (0, self._mac)  # public address, as the ESP32 uses by default
            if key in ("gap_name",):
                return self._cfg[key].encode()
            if key in self._cfg:
                return self._cfg[key]
            if key == "addr_mode":
                return 0
            raise ValueError("unknown config param")
        for key, v in kw.items():
            if key == "gap_name":
                v = bytes(v, "utf-8") if isinstance(v, str) else bytes(v)
                if len(v) > _GAP_NAME_MAX:
                    raise OSError(_EINVAL)
                v = v.decode()
            elif key == "mtu":
                if not 23 <= v <= 517:
                    raise ValueError("bad mtu")
            elif key not in ("bond", "mitm", "io", "le_secure", "addr_mode", "rxbuf"):
                raise ValueError("unknown config param")
            self._cfg[key] = v
        if self._on:
            self._send(_CONFIG, json.dumps(self._cfg).encode())
        return None

    def irq(self, handler):
        self._handler = handler

    def gap_advertise(self, interval_us, adv_data=None, *, resp_data=None, connectable=True):
        self._need_active()
        a = {"interval_us": interval_us, "connectable": bool(connectable)}
        if adv_data is not None:
            self._adv = bytes(adv_data)
        if resp_data is not None:
            self._resp = bytes(resp_data)
        a["adv"] = getattr(self, "_adv", b"").hex()
        a["resp"] = getattr(self, "_resp", b"").hex()
        self._send(_ADV, json.dumps(a).encode())

    def gap_disconnect(self, conn_handle):
        self._need_active()
        self._send(_DISCONNECT, struct.pack(">H", conn_handle))
        return True

    def gap_passkey(self, conn_handle, action, passkey):
        self._need_active()
        self._send(_PASSKEY, struct.pack(">HBI", conn_handle, action, passkey))

    def gap_pair(self, conn_handle):
        raise OSError(_EOPNOTSUPP)

    def gap_scan(self, *args, **kw):
        raise OSError(_EOPNOTSUPP)

    def gap_connect(self, *args, **kw):
        raise OSError(_EOPNOTSUPP)

    def gatts_register_services(self, services):
        self._need_active()
        desc = []
        for svc_uuid, chars in services:
            row = []
            for ch in chars:
                descs = [[str(UUID(d[0])), d[1]] for d in (ch[2] if len(ch) > 2 else ())]
                row.append([str(UUID(ch[0])), ch[1], descs])
            desc.append([str(UUID(svc_uuid)), row])
        reply = json.loads(self._call(_REGISTER, json.dumps(desc).encode(), _R_REGISTER))
        for row in reply:
            for h in row:
                self._values[h] = _Value()
        return tuple(tuple(row) for row in reply)

    def gatts_read(self, value_handle):
        v = self._value(value_handle)
        out = bytes(v.buf[: v.n])
        if v.append:
            v.n = 0
        return out

    def gatts_write(self, value_handle, data, send_update=False):
        v = self._value(value_handle)
        if len(data) > len(v.buf):
            v.buf = bytearray(len(data))
        v.buf[: len(data)] = data
        v.n = len(data)
        self._send(_WRITE, struct.pack(">HB", value_handle, bool(send_update)) + bytes(data))

    def gatts_notify(self, conn_handle, value_handle, data=None):
        self._tx_send(conn_handle, value_handle, data, 0)

    def gatts_indicate(self, conn_handle, value_handle, data=None):
        self._tx_send(conn_handle, value_handle, data, 1)

    def _tx_send(self, conn, handle, data, indicate):
        self._need_active()
        if data is None:
            v = self._value(handle)
            data = v.buf[: v.n]
        if not indicate:
            if self._tx >= _TX_SLOTS:
                self._fill()
                self._frames(True)
            if self._tx >= _TX_SLOTS:
                raise OSError(_ENOMEM)
            self._tx += 1
        self._send(_NOTIFY, struct.pack(">HHB", conn, handle, indicate) + bytes(data))

    def gatts_set_buffer(self, value_handle, length, append=False):
        v = self._value(value_handle)
        v.buf = bytearray(length)
        v.n = 0
        v.append = bool(append)

    def _value(self, handle):
        v = self._values.get(handle)
        if v is None:
            raise ValueError("invalid handle")
        return v

    def _need_active(self):
        if not self._on:
            raise OSError(_ENOTCONN)


# Made at import, with the stand-ins (host/start.py imports them before it gives the firmware
# its heap): the BLE object (on the board two words: extmod/modbluetooth.c with
# MICROPY_PY_BLUETOOTH_USE_SYNC_EVENTS, ports/esp32/mpconfigport.h), the connection to the
# radio and the task that reads it. Without a radio, active(True) raises as before.
def _prepare():
    ble = BLE()
    try:
        ble._connect()
    except OSError:
        return
    ble._task = asyncio.create_task(ble._pump())


_prepare()
