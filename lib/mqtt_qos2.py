# mqtt_qos2: umqtt.simple's MQTTClient with QoS 2, UNSUBSCRIBE and a non-blocking reader.
# MIT license.
#
# What it adds (MQTT 3.1.1):
# - send_publish/send_subscribe/send_unsubscribe: write one packet, return its packet id
#   at once (0 for QoS 0); the matching ack is reported later by poll().
# - poll(): reads only the bytes the non-blocking socket has into one preallocated buffer
#   and handles at most one complete packet per call: PUBLISH QoS 0/1/2 (to the callback,
#   then PUBACK or PUBREC; a QoS 2 id stays in a set until its PUBREL so a resent DUP is
#   not delivered twice), PUBREC -> PUBREL, PUBREL -> PUBCOMP, and the acks PUBACK, PUBCOMP,
#   SUBACK, UNSUBACK, PINGRESP, reported as (op, pid, code) in ack_op/ack_pid/ack_code and
#   to set_ack_callback's f(op, pid, code). A packet split over TCP segments is simply
#   completed by a later call: poll() never waits.
# - blocking publish (QoS 0-2), subscribe (QoS 0-2), unsubscribe, wait_msg, check_msg for
#   scripts and tests, built on the above, with a deadline of `timeout_ms`.
#
# What it relies on in micropython-lib's umqtt.simple (checked against 1.7.1 and 1.8.0; the
# v1.24 ESP32 image freezes 1.4.0, whose connect() has no timeout argument):
# MQTTException; the constructor's arguments and attributes; connect(clean_session, timeout)
# (blocking: DNS, TCP, TLS handshake, CONNACK) leaving the connection in self.sock;
# set_callback() storing cb(topic, msg) in self.cb; set_last_will(); self.pid, the last
# packet id used; _send_str(s), which writes a 2-byte length then s (overridden here so
# it survives a non-blocking socket). _recv_len() is not used: it reads blocking.

import errno
import time

from umqtt.simple import MQTTClient as _Base
from umqtt.simple import MQTTException  # re-exported for the firmware

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_OUT = const(256)  # bytes of the kept send buffer

# Packet types (first byte, high nibble) as returned by poll() and given to ack callbacks
PUBLISH = const(0x30)
PUBACK = const(0x40)
PUBREC = const(0x50)
PUBREL = const(0x60)
PUBCOMP = const(0x70)
SUBACK = const(0x90)
UNSUBACK = const(0xB0)
PINGRESP = const(0xD0)

_BUFSIZE = const(4352)  # default rx buffer: 4 KB payload + topic + header
# Errors that mean "try again" on a non-blocking socket (mqtt_as: 118, 119 from TLS on ESP32)
_BUSY = (errno.EAGAIN, errno.EINPROGRESS, errno.ETIMEDOUT, 118, 119)


class MQTTClient(_Base):
    DEBUG = False
    timeout_ms = 10000  # deadline of the blocking helpers and of one _write()

    def __init__(self, *args, bufsize=_BUFSIZE, **kw):
        super().__init__(*args, **kw)
        self._rb = bytearray(bufsize)  # one incoming packet, header included
        self._rm = memoryview(self._rb)
        self._tx = bytearray(8)  # outgoing fixed header / packet id / small acks
        self._out = bytearray(_OUT)  # an outgoing PUBLISH/SUBSCRIBE; a bigger one gets its own
        self._rel = set()  # QoS 2 ids received, delivered, awaiting PUBREL
        self.ack_cb = None  # f(op, pid, code) for acks, see poll()
        self.ack_op = 0  # last ack reported by poll(): packet type,
        self.ack_pid = 0  # its packet id,
        self.ack_code = 0  # SUBACK granted QoS or 0x80 failure, else 0
        self.dropped = 0  # incoming packets larger than the buffer, discarded
        self.last_rx = 0  # ticks_ms() of the last complete incoming packet
        self._reset()

    # Forget any partly read packet
    def _reset(self):
        self._n = 0  # bytes of the current packet in _rb
        self._need = 0  # its total length once the fixed header is known, else 0
        self._skip = 0  # bytes still to discard of an oversized packet

    def set_ack_callback(self, f):
        self.ack_cb = f

    # Blocking connect (base class), then switch the socket to non-blocking.
    # TODO this is blocking: DNS, TCP connect, TLS handshake and CONNACK, up to `timeout` s.
    def connect(self, clean_session=True, timeout=None):
        self._reset()
        if clean_session:
            self._rel = set()
        r = super().connect(clean_session, timeout)
        self.sock.setblocking(False)
        self.last_rx = time.ticks_ms()
        return r

    def disconnect(self):
        try:
            self._write(b"\xe0\0")
        finally:
            self.sock.close()

    def ping(self):
        self._write(b"\xc0\0")

    # Next packet id, 1..65535 (the base class only increments)
    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    # Write buf[:n] fully to the non-blocking socket, waiting while its send buffer is full.
    # TODO this is blocking while the TCP send buffer is full, at most timeout_ms.
    def _write(self, buf, n=-1):
        mv = memoryview(buf)
        if n >= 0:
            mv = mv[:n]
        t = time.ticks_ms()
        while mv:
            try:
                r = self.sock.write(mv)
            except OSError as e:
                if e.args[0] not in _BUSY:
                    raise
                r = None
            if r:
                mv = mv[r:]
                t = time.ticks_ms()
            elif time.ticks_diff(time.ticks_ms(), t) > self.timeout_ms:
                raise OSError(errno.ETIMEDOUT)
            else:
                time.sleep_ms(1)

    def _send_str(self, s):
        tx = self._tx
        tx[0] = len(s) >> 8
        tx[1] = len(s) & 0xFF
        self._write(tx, 2)
        self._write(s)

    # Write a 4-byte packet: b0, 2, packet id (PUBACK, PUBREC, PUBREL, PUBCOMP)
    def _send_ack(self, b0, pid):
        tx = self._tx
        tx[0] = b0
        tx[1] = 2
        tx[2] = pid >> 8
        tx[3] = pid & 0xFF
        self._write(tx, 4)

    # Send PUBLISH; return its packet id (0 for QoS 0). Completion: PUBACK (QoS 1) or
    # PUBCOMP (QoS 2) with this id, reported by poll().
    def send_publish(self, topic, msg, retain=False, qos=0, dup=False):
        if not 0 <= qos <= 2:
            raise ValueError("qos")
        if isinstance(topic, str):
            topic = topic.encode()
        sz = 2 + len(topic) + len(msg)
        pid = 0
        if qos:
            sz += 2
            pid = self._next_pid()
        o, i = self._packet(PUBLISH | dup << 3 | qos << 1 | bool(retain), sz)
        i = _put(o, i, topic, True)
        if qos:
            i = _put_pid(o, i, pid)
        self._write(o, _put(o, i, msg, False))
        return pid

    # Send SUBSCRIBE for one topic; return its packet id. Completion: SUBACK, with
    # ack_code the granted QoS (0-2) or 0x80 for failure.
    def send_subscribe(self, topic, qos=0):
        return self._send_subunsub(0x82, topic, qos)

    # Send UNSUBSCRIBE for one topic; return its packet id. Completion: UNSUBACK.
    def send_unsubscribe(self, topic):
        return self._send_subunsub(0xA2, topic, -1)

    def _send_subunsub(self, b0, topic, qos):
        if isinstance(topic, str):
            topic = topic.encode()
        pid = self._next_pid()
        o, i = self._packet(b0, 4 + len(topic) + (qos >= 0))
        i = _put(o, _put_pid(o, i, pid), topic, True)
        if qos >= 0:
            o[i] = qos
            i += 1
        self._write(o, i)
        return pid

    # A packet is assembled in one buffer and written at once: written in pieces, it would
    # wait behind Nagle's algorithm for the broker's delayed ACK (40 ms a PUBLISH at QoS 1).
    # Returns the buffer and the length of the fixed header put at its start.
    def _packet(self, b0, sz):
        o = self._out if sz + 5 <= _OUT else bytearray(sz + 5)
        o[0] = b0
        i = 1
        while sz > 0x7F:
            o[i] = (sz & 0x7F) | 0x80
            sz >>= 7
            i += 1
        o[i] = sz
        return o, i + 1

    # Read what the socket has without waiting; handle at most one complete packet.
    # Returns None if no packet was completed, else its type (PUBLISH, PUBACK, ...).
    # Raises OSError(-1) when the broker closed the connection.
    def poll(self):
        rb = self._rb
        while self._skip:  # discarding an oversized packet
            r = self._read(0, min(self._skip, len(rb)))
            if not r:
                return None
            self._skip -= r
            if not self._skip:
                self.dropped += 1
                self._reset()
        while not self._need:  # fixed header: type, then 1-4 length bytes
            n = self._n
            if not self._read(n, n + 1):
                return None
            self._n = n + 1
            if n and not rb[n] & 0x80:
                sz = 0
                for i in range(n, 0, -1):
                    sz = sz << 7 | rb[i] & 0x7F
                self._need = n + 1 + sz
                if self._need > len(rb):
                    self._skip = sz
                    return self.poll()
            elif n == 4:
                raise MQTTException("length")
        while self._n < self._need:
            r = self._read(self._n, self._need)
            if not r:
                return None
            self._n += r
        return self._handle()

    # readinto rb[a:b]; return the byte count, 0 if nothing is available now
    def _read(self, a, b):
        try:
            r = self.sock.readinto(self._rm[a:b])
        except OSError as e:
            if e.args[0] in _BUSY:
                return 0
            raise
        if r is None:
            return 0
        if r == 0:
            raise OSError(-1)  # EOF, as umqtt.simple
        return r

    # Process the complete packet in _rb[:_need]
    def _handle(self):
        rb = self._rb
        end = self._need
        b0 = rb[0]
        op = b0 & 0xF0
        p = 1
        while rb[p] & 0x80:
            p += 1
        p += 1  # start of the variable header
        self._reset()
        self.last_rx = time.ticks_ms()
        if op == PUBLISH:
            tl = rb[p] << 8 | rb[p + 1]
            p += 2
            topic = bytes(self._rm[p : p + tl])
            p += tl
            qos = b0 >> 1 & 3
            pid = 0
            if qos:
                pid = rb[p] << 8 | rb[p + 1]
                p += 2
            msg = bytes(self._rm[p:end])  # copy: _rb is reused by the next poll()
            if qos == 2:
                if pid not in self._rel:
                    self._rel.add(pid)
                    self.cb(topic, msg)
                self._send_ack(0x50, pid)  # PUBREC
            else:
                self.cb(topic, msg)
                if qos == 1:
                    self._send_ack(0x40, pid)  # PUBACK
            return op
        pid = rb[p] << 8 | rb[p + 1] if end - p >= 2 else 0
        code = 0
        if op == PUBREC:
            self._send_ack(0x62, pid)  # PUBREL (flags 0010)
            return op
        if op == PUBREL:
            self._rel.discard(pid)
            self._send_ack(0x70, pid)  # PUBCOMP
            return op
        if op == SUBACK:
            code = rb[p + 2]
        elif op not in (PUBACK, PUBCOMP, UNSUBACK, PINGRESP):
            raise MQTTException(b0)  # CONNACK again or a type a client never gets
        self.ack_op = op
        self.ack_pid = pid
        self.ack_code = code
        if self.ack_cb:
            self.ack_cb(op, pid, code)
        return op

    # ---- Blocking helpers (scripts, tests): never call these from the asyncio loop ----

    # poll() until an ack `op` for `pid` arrives; return its code
    def _wait_ack(self, op, pid):
        t = time.ticks_ms()
        while True:
            if self.poll() == op and self.ack_pid == pid:
                return self.ack_code
            if time.ticks_diff(time.ticks_ms(), t) > self.timeout_ms:
                raise OSError(errno.ETIMEDOUT)
            time.sleep_ms(1)

    def publish(self, topic, msg, retain=False, qos=0):
        pid = self.send_publish(topic, msg, retain, qos)
        if qos:
            self._wait_ack(PUBACK if qos == 1 else PUBCOMP, pid)

    # Subscribe; returns the granted QoS, raises MQTTException(0x80) on refusal
    def subscribe(self, topic, qos=0):
        code = self._wait_ack(SUBACK, self.send_subscribe(topic, qos))
        if code == 0x80:
            raise MQTTException(code)
        return code

    def unsubscribe(self, topic):
        self._wait_ack(UNSUBACK, self.send_unsubscribe(topic))

    # Wait (up to timeout_ms) for one packet and handle it; its type, or None on timeout
    def wait_msg(self):
        t = time.ticks_ms()
        while True:
            op = self.poll()
            if op is not None or time.ticks_diff(time.ticks_ms(), t) > self.timeout_ms:
                return op
            time.sleep_ms(1)

    def check_msg(self):
        return self.poll()


# Bytes at o[i:], after a 2-byte length if `counted` (an MQTT string; str is encoded)
def _put(o, i, data, counted):
    if isinstance(data, str):
        data = data.encode()
    n = len(data)
    if counted:
        i = _put_pid(o, i, n)
    o[i : i + n] = data
    return i + n


def _put_pid(o, i, v):
    o[i] = v >> 8
    o[i + 1] = v & 0xFF
    return i + 2
