# MQTT 3.1.1 packets (OASIS standard, 29 October 2014): encoders that fill a caller's buffer
# (one packet, one write), a streaming decoder, topic names and filters. Pure: no I/O, no
# allocation beyond small objects; CPython imports it for the table tests.
try:
    from micropython import const
except ImportError:  # CPython, for the unit tests

    def const(x):
        return x


# Control packet types (2.2.1), the high nibble of the first byte
CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
PUBREC = const(5)
PUBREL = const(6)
PUBCOMP = const(7)
_SUBSCRIBE = const(8)
SUBACK = const(9)
_UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
_PINGREQ = const(12)
_PINGRESP = const(13)
_DISCONNECT = const(14)

_HEAD_MAX = const(5)  # a fixed header: the first byte and up to 4 bytes of remaining length
SUB_FAILURE = const(0x80)  # a SUBACK return code (3.9.3)
UNAVAILABLE = const(3)  # CONNACK: server unavailable, the one refusal worth retrying

# CONNACK return codes 1-5 (3.2.2.3), in words
_REFUSALS = (
    "unacceptable protocol version",
    "client identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)


def refusal(code):
    if 0 < code <= len(_REFUSALS):
        return _REFUSALS[code - 1]
    return "CONNACK return code {}".format(code)


# The fixed header of a packet with n bytes after it (2.2.3); returns where the rest goes.
def _head(buf, first, n):
    buf[0] = first
    i = 1
    while True:
        digit = n & 0x7F
        n >>= 7
        buf[i] = digit | 0x80 if n else digit
        i += 1
        if not n:
            return i


def _u16(buf, i, v):
    buf[i] = v >> 8
    buf[i + 1] = v & 0xFF
    return i + 2


# A length-prefixed field (1.5.3 strings, 3.1.3.5 password): 2-byte length, then the bytes
def _field(buf, i, b):
    i = _u16(buf, i, len(b))
    buf[i : i + len(b)] = b
    return i + len(b)


# CONNECT with a clean session (3.1); no user name means no password either (3.1.2.9).
def connect(buf, cid, user, password, keepalive):
    flags = 0x02
    n = 10 + 2 + len(cid)
    if user:
        flags |= 0x80
        n += 2 + len(user)
        if password:
            flags |= 0x40
            n += 2 + len(password)
    i = _field(buf, _head(buf, 0x10, n), b"MQTT")
    buf[i] = 4  # protocol level 4: 3.1.1
    buf[i + 1] = flags
    i = _field(buf, _u16(buf, i + 2, keepalive), cid)
    if flags & 0x80:
        i = _field(buf, i, user)
    if flags & 0x40:
        i = _field(buf, i, password)
    return i


# PUBLISH (3.3) up to its payload of size bytes, which follows it on the wire (never resent:
# no DUP flag); pid is ignored at QoS 0. At most _HEAD_MAX + 4 + len(topic) bytes.
def publish_head(buf, pid, topic, size, qos):
    n = 2 + len(topic) + size + (2 if qos else 0)
    i = _field(buf, _head(buf, 0x30 | qos << 1, n), topic)
    return _u16(buf, i, pid) if qos else i


# PUBACK, PUBREC, PUBREL, PUBCOMP: the packet id alone (PUBREL has flags 0010, 3.6.1)
def ack(buf, kind, pid):
    buf[0] = kind << 4 | (2 if kind == PUBREL else 0)
    buf[1] = 2
    return _u16(buf, 2, pid)


# SUBSCRIBE (3.8) of filters: a sequence of (topic filter, requested QoS)
def subscribe(buf, pid, filters):
    n = 2
    for f, _ in filters:
        n += 3 + len(f)
    i = _u16(buf, _head(buf, 0x82, n), pid)
    for f, qos in filters:
        i = _field(buf, i, f)
        buf[i] = qos
        i += 1
    return i


# UNSUBSCRIBE (3.10) of one topic filter
def unsubscribe(buf, pid, topic):
    return _field(buf, _u16(buf, _head(buf, 0xA2, 4 + len(topic)), pid), topic)


def pingreq(buf):
    buf[0] = _PINGREQ << 4
    buf[1] = 0
    return 2


def disconnect(buf):
    buf[0] = _DISCONNECT << 4
    buf[1] = 0
    return 2


# The packet id at the start of a body (acks, SUBACK, UNSUBACK)
def pid(body):
    return body[0] << 8 | body[1]


# (topic, packet id or 0, payload) of a PUBLISH body, as memoryviews of it (3.3.2)
def publish_parts(first, body):
    i = 2 + (body[0] << 8 | body[1])
    topic = body[2:i]
    packet_id = 0
    if first & 0x06:
        packet_id = body[i] << 8 | body[i + 1]
        i += 2
    if i > len(body):
        raise ValueError("short PUBLISH")
    return topic, packet_id, body[i:]


# Packets from a byte stream: receive into space(), report the count with filled(n), then
# take packets with next() until it says None. A packet is (first byte, body) with the body a
# memoryview valid until the next space(); a packet larger than the buffer is skipped and
# returned once as (first byte, None). hold() keeps the packet next() just returned in the
# buffer (reading goes on after it) until take() gives it back, oldest first.
# Held packets cost no Python object each (a flood of small messages must not fill the heap):
# next() zeroes the first byte of every packet it returns and hold() writes it back, so the
# held ones are the packets from the oldest held one on whose first byte is not 0 (type 0 is
# reserved, 2.2.1).
class Reader:
    def __init__(self, buf):
        self._mv = memoryview(buf)
        self.clear()

    def clear(self):
        self._start = 0  # first byte not taken yet
        self._end = 0  # end of the bytes received
        self._skip = 0  # bytes of a skipped packet still to come
        self._last = 0  # where the packet next() returned last begins
        self._held = 0  # packets held
        self._oldest = 0  # where the oldest held packet begins (while _held)

    # Where to receive: the free end of the buffer, after moving what is still needed (held
    # packets, unread bytes) to the front. Empty while held packets fill the buffer.
    def space(self):
        s = self._oldest if self._held else self._start
        if s:
            n = self._end - s
            self._mv[:n] = self._mv[s : self._end]
            self._start -= s
            self._end = n
            self._last -= s
            self._oldest -= s
        return self._mv[self._end :]

    def hold(self, first):
        if not self._held:
            self._oldest = self._last
        self._held += 1
        self._mv[self._last] = first

    # The oldest held packet as (first byte, body), no longer held; None if none is.
    def take(self):
        if not self._held:
            return None
        mv = self._mv
        s = self._oldest
        while True:
            first = mv[s]
            n, i = _length(mv, s + 1, self._start)
            s = i + n
            if first:
                self._held -= 1
                self._oldest = s
                return first, mv[i:s]

    def filled(self, n):
        drop = min(n, self._skip)
        self._skip -= drop
        self._end += n
        if drop:
            self._start = self._end - n + drop

    def next(self):
        mv = self._mv
        s = self._start
        e = self._end
        p = _length(mv, s + 1, e)
        if p is None:
            return None
        n, i = p
        first = mv[s]
        if i - s + n > len(mv):
            self._skip = n - (e - i)
            self._start = self._end = s
            return first, None
        if e - i < n:
            return None
        mv[s] = 0
        self._last = s
        self._start = i + n
        return first, mv[i : i + n]


# The remaining length that starts at mv[i] (2.2.3) and where the body begins, or None when
# its bytes have not all come before `end`.
def _length(mv, i, end):
    n = 0
    shift = 0
    while True:
        if i >= end:
            return None
        b = mv[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")


# A topic name to publish to: no wildcards, no NUL (4.7.3)
def valid_topic(t):
    return bool(t) and "+" not in t and "#" not in t and "\0" not in t


# A topic filter (4.7.1): "+" is one whole level, "#" the whole last level.
def valid_filter(t):
    if not t or "\0" in t:
        return False
    levels = t.split("/")
    last = len(levels) - 1
    for i, x in enumerate(levels):
        if ("#" in x and (x != "#" or i != last)) or ("+" in x and x != "+"):
            return False
    return True


def match(filt, topic):
    if topic[:1] == "$" and filt[:1] in ("+", "#"):
        return False  # "$SYS/..." is not matched by a leading wildcard (4.7.2)
    f = filt.split("/")
    t = topic.split("/")
    for i, x in enumerate(f):
        if x == "#":
            return True
        if i >= len(t) or (x != "+" and x != t[i]):
            return False
    return len(f) == len(t)
