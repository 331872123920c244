# Bluetooth serial: the Nordic UART Service (NUS) over BLE, on MicroPython's bluetooth.BLE.
# The EMW3239 offers Classic SPP (RFCOMM); the ESP32's MicroPython has BLE only, so this offers
# the same serial service as NUS, the BLE serial profile phone apps speak. Commands are in
# commands/bt.py (the wire formats are described there); this is the radio's state.
#
# - The link counts as CONNECTED (+BTEVENT:CONNECTION,ON) once it is paired or re-encrypted
#   with a bond, authenticated (MITM, the static passkey of AT+BTPASSKEY), as an RFCOMM channel
#   opens after pairing. A phone that fails to pair is disconnected. RX writes need an
#   authenticated link (the stack answers "insufficient authentication", so phones pair).
# - IRQ handlers only copy and flag: received bytes go into a ring (one producer, the IRQ;
#   one consumer, the _deliver task), so no lock is needed even where IRQs are scheduled
#   between bytecodes (ESP32). _deliver writes them to the UART when no response is open.
# - Phone -> module flow control: NimBLE answers a write after the IRQ handler returns; the
#   ring drains at UART speed. A write that does not fit the ring is dropped and counted
#   (`dropped`): at 115200 baud a phone writing with response does not outrun it.
# - Module -> phone: notifications of at most MTU-3 bytes; gatts_notify raises ENOMEM while the
#   stack's buffers are full, and the sender waits and retries: nothing is lost.
# - Bonds: MicroPython's NimBLE keeps no keys of its own; it asks the application through
#   _IRQ_GET_SECRET / _IRQ_SET_SECRET. They are kept here in RAM (answered from the IRQ at
#   once) and written to data/bt_secrets.json by a task, not from the IRQ (see _keep).
import asyncio
import binascii
import json

import bluetooth
from micropython import const

from firmware import aio, at, ctx, events, log, settings
from firmware.at import E_FAIL, E_STATE, E_TIMEOUT, AtError
from firmware.btid import mac, name


NAME_MAX = const(26)  # 31-byte advertising packet: flags (3) + name header (2) + name

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_GET_SECRET = const(29)
_IRQ_SET_SECRET = const(30)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_ACTION_DISPLAY = const(3)
_IO_CAPABILITY_DISPLAY_ONLY = const(0)

_FLAG_WRITE_NO_RESPONSE = const(0x0004)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)
_FLAG_WRITE_AUTHENTICATED = const(0x2000)

_MTU = const(247)  # asked for: 244-byte notifications, one LE data packet with DLE
_RING = const(1024)  # received bytes waiting for the UART
_RX_BUF = const(512)  # the RX characteristic's append buffer (long writes included)
_ADV_US = const(100000)
_ENOMEM = const(12)
_SEND_STALL_MS = const(5000)  # a notification that cannot leave this long fails BTSEND
_BONDS = const(8)  # phones remembered; a ninth bond drops the least recently written one
_SAVE_MS = const(100)  # a pairing sets several secrets in a row: one write for them all
# The bonds: [[sec_type, key, value]...] newest first, keys and values in base64. Under data/,
# so AT+FACTORY forgets every phone. FLASHLOCK does not hold them back: they are not settings
# the host chose but the module's half of a pairing the phone has kept its half of; a module
# that forgot it at the next restart would be refused by the phone (keys missing) until its
# user deletes the pairing by hand.
_SECRETS = "data/bt_secrets.json"

_NUS = "6E400001-B5A3-F393-E0A9-E50E24DCCA9E"
_NUS_RX = "6E400002-B5A3-F393-E0A9-E50E24DCCA9E"  # phone -> module (write)
_NUS_TX = "6E400003-B5A3-F393-E0A9-E50E24DCCA9E"  # module -> phone (notify)
# Scan response: the complete list of 128-bit service UUIDs, NUS (little-endian).
_NUS_AD = b"\x11\x07\x9e\xca\xdc\x24\x0e\xe5\xa9\xe0\x93\xf3\xa3\xb5\x01\x00\x40\x6e"

# States, as AT+BTSTATE names them.
CONNECTED = "CONNECTED"
DISCONNECTED = "DISCONNECTED"
DISCOVERABLE = "DISCOVERABLE"


class Radio:
    def __init__(self):
        self.conn = None  # handle of the phone's link, None without one
        self.secure = False  # the link is authenticated: CONNECTED
        self.advertising = False
        self.mtu = 23
        self.dropped = 0  # received bytes that did not fit the ring
        self._ring = bytearray(_RING)
        self._ringmv = memoryview(self._ring)
        self._head = 0  # next byte the IRQ writes
        self._tail = 0  # next byte _deliver takes
        self._changes = []  # connection ON/OFF to announce, in order
        self._announced = False  # CONNECTION,ON told, OFF not yet: received data may go out
        self._readvertise = False
        self._flag = asyncio.ThreadSafeFlag()
        self._secrets = _load()  # (sec_type, key, value) tuples, newest first
        self._dirty = False  # _secrets changed since the file was written
        self._store = asyncio.ThreadSafeFlag()
        ble = self.ble = bluetooth.BLE()
        ble.irq(self._irq)  # before the stack starts: it may look for bonds at once
        ble.active(True)
        ble.config(
            gap_name=name(),
            mtu=_MTU,
            bond=True,
            mitm=True,
            le_secure=True,
            io=_IO_CAPABILITY_DISPLAY_ONLY,
        )
        service = (
            bluetooth.UUID(_NUS),
            (
                (bluetooth.UUID(_NUS_TX), _FLAG_NOTIFY),
                (
                    bluetooth.UUID(_NUS_RX),
                    _FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE | _FLAG_WRITE_AUTHENTICATED,
                ),
            ),
        )
        ((self.tx, self.rx),) = ble.gatts_register_services((service,))
        ble.gatts_set_buffer(self.rx, _RX_BUF, True)
        self._task = aio.task(self._deliver())
        self._saver = aio.task(self._keep())

    def state(self):
        if self.secure:
            return CONNECTED
        return DISCOVERABLE if self.advertising else DISCONNECTED

    # Connectable advertising with the name (and the NUS UUID in the scan response), or none.
    def advertise(self, on):
        self.advertising = on
        if not on:
            self.ble.gap_advertise(None)
            if self.conn is None:
                _stop()
            return
        if self.conn is not None:
            return  # one phone at a time: advertising resumes when it leaves
        n = name().encode()
        adv = bytes((2, 0x01, 0x06, len(n) + 1, 0x09)) + n
        self.ble.gap_advertise(_ADV_US, adv, resp_data=_NUS_AD)

    def rename(self):
        self.ble.config(gap_name=name())
        if self.advertising:
            self.advertise(True)

    # ----- IRQ side: copy, flag, return

    def _irq(self, event, data):
        if event == _IRQ_GET_SECRET:
            return self._get_secret(data[0], data[1], data[2])
        if event == _IRQ_SET_SECRET:
            return self._set_secret(data[0], data[1], data[2])
        if event == _IRQ_GATTS_WRITE:
            if data[1] == self.rx:
                got = self.ble.gatts_read(self.rx)
                if data[0] == self.conn:
                    self._put(got)
        elif event == _IRQ_CENTRAL_CONNECT:
            self.conn = data[0]
            self.secure = False
            self.mtu = 23
        elif event == _IRQ_CENTRAL_DISCONNECT:
            if data[0] == self.conn:
                self.conn = None
                if self.secure:
                    self.secure = False
                    self._changes.append(False)
                self._readvertise = self.advertising
        elif event == _IRQ_ENCRYPTION_UPDATE:
            conn, _encrypted, authenticated = data[0], data[1], data[2]
            if conn == self.conn:
                if authenticated and not self.secure:
                    self.secure = True
                    self._changes.append(True)
                elif not authenticated:
                    self.ble.gap_disconnect(conn)  # pairing failed: no serial link
        elif event == _IRQ_MTU_EXCHANGED:
            self.mtu = data[1]
        elif event == _IRQ_PASSKEY_ACTION:
            conn, action = data[0], data[1]
            if action == _PASSKEY_ACTION_DISPLAY:
                self.ble.gap_passkey(conn, action, int(ctx.settings["bt_passkey"]))
        self._flag.set()

    # The value stored for (sec_type, key), or with key None the index'th of that sec_type
    # (NimBLE counts and walks its bonds so). The keys and values are memoryviews, valid only
    # during the IRQ: copied.
    def _get_secret(self, sec_type, index, key):
        if key is not None:
            key = bytes(key)
        for t, k, v in self._secrets:
            if t == sec_type:
                if key is None:
                    if index == 0:
                        return v
                    index -= 1
                elif k == key:
                    return v
        return None

    # Store (value None: delete) the value of (sec_type, key). The list is rebuilt and swapped
    # in with one assignment, so _keep, which may be between bytecodes when an IRQ comes
    # (ESP32), sees the old list or the new one, never one half changed.
    def _set_secret(self, sec_type, key, value):
        key = bytes(key)
        s = [e for e in self._secrets if e[0] != sec_type or e[1] != key]
        if value is not None:
            s.insert(0, (sec_type, key, bytes(value)))
            peers = []  # the keys (a phone's address) from the newest to the oldest
            for e in s:
                if e[1] not in peers:
                    peers.append(e[1])
            if len(peers) > _BONDS:
                old = peers[-1]
                s = [e for e in s if e[1] != old]
        self._secrets = s
        self._dirty = True
        self._store.set()
        return True

    def _put(self, data):
        n = len(data)
        head = self._head
        if (self._tail - head - 1) % _RING < n:
            self.dropped += n
            return
        k = min(n, _RING - head)
        self._ring[head : head + k] = data[:k]
        if k < n:
            self._ring[: n - k] = data[k:]
        self._head = (head + n) % _RING

    # ----- task side

    # The stack lets only an authenticated link write RX, but the write of a phone that
    # writes as soon as its side of the pairing ends may come before the ENCRYPTION_UPDATE
    # that makes the link CONNECTED: it waits in the ring for +BTEVENT:CONNECTION,ON.
    async def _deliver(self):
        while True:
            await self._flag.wait()
            while self._changes:
                on = self._changes.pop(0)
                if not on:
                    await self._flush()  # what came before the link went down first
                events.emit("BTEVENT", "CONNECTION," + ("ON" if on else "OFF"))
                self._announced = on
            if self._announced:
                await self._flush()
            elif self.conn is None:
                self._tail = self._head  # written on a link that never became CONNECTED
            if self._readvertise:
                self._readvertise = False
                if self.advertising and self.conn is None:
                    self.advertise(True)
            if self.conn is None and not self.advertising:
                _stop()  # the phone left a radio that is not discoverable
                return

    # Write the bonds to flash when they changed (outside the IRQ: NimBLE waits for its
    # handler, and a flash write takes milliseconds).
    async def _keep(self):
        while True:
            await self._store.wait()
            await asyncio.sleep_ms(_SAVE_MS)
            self._save()

    def _save(self):
        if self._dirty:
            self._dirty = False
            rows = [[t, _b64(k), _b64(v)] for t, k, v in self._secrets]
            try:
                settings.write_file(_SECRETS, rows)
            except OSError as e:
                log.warn("bt: bonds not saved: {!r}".format(e))

    # The bonds not yet written go to flash first; the tasks end (_deliver may be the caller).
    def power_off(self):
        self._saver.cancel()
        self._save()
        self.ble.active(False)
        self.ble.irq(None)  # the BLE object outlives the radio: it would keep this one
        if self._task is not asyncio.current_task():
            self._task.cancel()

    # Write what is in the ring: +BTEVENT:DATA,<len>,<data> events in command mode with
    # BTEVENT=EN, the bytes alone otherwise. Never inside a response.
    async def _flush(self):
        while self._head != self._tail:
            await ctx.serial.send(self._take, self)

    # The ring's oldest contiguous bytes, as the engine writes them (it calls this with the
    # line free, or at once in transparent mode).
    def _take(self):
        head, tail = self._head, self._tail
        end = head if head > tail else _RING
        self._tail = end % _RING
        mv = self._ringmv[tail:end]
        if not ctx.settings["btevent"]:
            return None, mv
        return "+BTEVENT:DATA,{},".format(end - tail), mv

    # Send data to the phone as notifications of at most MTU-3 bytes, waiting while the
    # stack's buffers are full (AT+BTSEND, transparent mode).
    async def send(self, data):
        off = 0
        n = len(data)
        stalled = 0
        while off < n:
            if not self.secure:
                raise AtError(E_STATE, "no phone connected")
            k = min(self.mtu - 3, n - off)
            try:
                self.ble.gatts_notify(self.conn, self.tx, data[off : off + k])
            except OSError as e:
                if e.args[0] != _ENOMEM:
                    raise AtError(E_FAIL, "notify: {}".format(e.args[0]))
                if stalled >= _SEND_STALL_MS:
                    raise AtError(E_TIMEOUT, "sent {} of {}".format(off, n))
                await asyncio.sleep_ms(2)
                stalled += 2
                continue
            off += k
            stalled = 0

    # Transparent mode (AT+BTSENDRAW): the radio is the engine's sink, as a link is; UART
    # input goes to write() and +++ calls close().
    async def write(self, mv):
        if self.secure:
            try:
                await self.send(mv)
            except AtError:
                pass  # the phone left mid-frame: the rest has nowhere to go

    def close(self):
        if not ctx.settings["bt_on"]:
            self.advertise(False)


def _b64(b):
    return binascii.b2a_base64(b)[:-1].decode()


# The bonds the last run wrote; none without the file, or with a damaged one.
def _load():
    try:
        with open(_SECRETS) as f:
            rows = json.load(f)
        return [(t, binascii.a2b_base64(k), binascii.a2b_base64(v)) for t, k, v in rows]
    except OSError:
        return []  # no bonds yet, or AT+FACTORY
    except Exception as e:  # ValueError, a row of another shape
        log.warn("bt: bonds file ignored: {!r}".format(e))
        return []


radio = None


# Power the radio and start serving NUS; advertise if AT+BTDISCOVERY=ON was left on.
def start():
    global radio
    if radio is None:
        radio = Radio()
        log.info("bt: {} up".format(mac()))
        if ctx.settings["bt_on"]:
            radio.advertise(True)
    return radio


# Down when nothing needs it: not discoverable, no phone. NimBLE's memory, the ring and this
# module (registry.py releases it once idle) come back.
def _stop():
    global radio
    radio.power_off()
    radio = None
    log.info("bt: down")


# AT+BTDISCOVERY=ON|OFF (its row is in commands/bt.py; here so that OFF runs without that
# module, registry.get): off, the radio goes down unless a phone is connected.
def at_btdiscovery(p):
    at.count(p, 1)
    on = at.on_off(p, 0)
    if on:
        start()
    ctx.settings.set("bt_on", on)
    if radio is not None:
        radio.advertise(on)


def state():
    return DISCONNECTED if radio is None else radio.state()


def idle():
    return radio is None
