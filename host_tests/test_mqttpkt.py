"""The pure MQTT 3.1.1 codec (firmware/mqttpkt.py) under CPython, table-driven.

Expected bytes are written out from the OASIS MQTT 3.1.1 specification's packet layouts."""

import pytest

from firmware import mqttpkt as p


def enc(fn, *args) -> bytes:
    buf = bytearray(300)
    n = fn(buf, *args)
    return bytes(buf[:n])


# A whole PUBLISH, as a broker sends it (the firmware writes a payload after publish_head).
def publish(buf, pid, topic, payload, qos, dup=False):
    i = p.publish_head(buf, pid, topic, len(payload), qos)
    buf[0] |= dup << 3
    buf[i : i + len(payload)] = payload
    return i + len(payload)


ENCODE = [
    # CONNECT: "MQTT", level 4, clean session, keepalive, client id (3.1)
    ((p.connect, b"abc", b"", b"", 60),
     b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc"),
    ((p.connect, b"c", b"u", b"pw", 0x1234),
     b"\x10\x14\x00\x04MQTT\x04\xc2\x12\x34\x00\x01c\x00\x01u\x00\x02pw"),
    # a password without a user name is not sent (3.1.2.9)
    ((p.connect, b"c", b"", b"pw", 0), b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c"),
    ((p.connect, b"", b"", b"", 0), b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00"),
    # PUBLISH at QoS 0 has no packet id; QoS 1/2 do; DUP is bit 3 (3.3)
    ((publish, 7, b"a/b", b"hi", 0), b"\x30\x07\x00\x03a/bhi"),
    ((publish, 7, b"a/b", b"hi", 1), b"\x32\x09\x00\x03a/b\x00\x07hi"),
    ((publish, 0x1234, b"t", b"\r\n\x00\xff", 2), b"\x34\x09\x00\x01t\x12\x34\r\n\x00\xff"),
    ((publish, 1, b"t", b"", 1, True), b"\x3a\x05\x00\x01t\x00\x01"),
    ((p.ack, p.PUBACK, 0x0102), b"\x40\x02\x01\x02"),
    ((p.ack, p.PUBREC, 5), b"\x50\x02\x00\x05"),
    ((p.ack, p.PUBREL, 5), b"\x62\x02\x00\x05"),  # PUBREL's reserved flags are 0010
    ((p.ack, p.PUBCOMP, 65535), b"\x70\x02\xff\xff"),
    ((p.subscribe, 10, [(b"a/+", 1)]), b"\x82\x08\x00\x0a\x00\x03a/+\x01"),
    ((p.subscribe, 2, [(b"x", 0), (b"#", 2)]), b"\x82\x0a\x00\x02\x00\x01x\x00\x00\x01#\x02"),
    ((p.unsubscribe, 3, b"a/#"), b"\xa2\x07\x00\x03\x00\x03a/#"),
    ((p.pingreq,), b"\xc0\x00"),
    ((p.disconnect,), b"\xe0\x00"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "want"), ENCODE)
def test_encode(call, want):
    assert enc(*call) == want


# Remaining length (2.2.3, table 2.4): the boundaries of 1 to 4 bytes
LENGTHS = [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
]  # fmt: skip


@pytest.mark.parametrize(("n", "want"), LENGTHS)
def test_remaining_length(n, want):
    buf = bytearray(8)
    i = p._head(buf, 0x30, n)
    assert bytes(buf[1:i]) == want


def packets(r: p.Reader) -> list:
    out = []
    while (x := r.next()) is not None:
        out.append((x[0], None if x[1] is None else bytes(x[1])))
    return out


def fill(r: p.Reader, data: bytes) -> None:
    sp = r.space()
    sp[: len(data)] = data
    r.filled(len(data))


def feed(r: p.Reader, data: bytes) -> list:
    fill(r, data)
    return packets(r)


def test_decoder_streams_across_reads():
    stream = (
        enc(publish, 1, b"a", b"x" * 200, 1)  # 2-byte remaining length
        + b"\x20\x02\x00\x00"  # CONNACK accepted
        + b"\xd0\x00"  # PINGRESP: an empty body
        + b"\x90\x03\x00\x01\x80"  # SUBACK failure
    )
    for step in (1, 2, 3, 7, 64, len(stream)):
        r = p.Reader(bytearray(256))
        got = []
        for i in range(0, len(stream), step):
            got += feed(r, stream[i : i + step])
        assert got == [
            (0x32, stream[3:208]),
            (0x20, b"\x00\x00"),
            (0xD0, b""),
            (0x90, b"\x00\x01\x80"),
        ], step


def test_decoder_skips_a_packet_larger_than_its_buffer():
    big = enc(publish, 0, b"t", b"y" * 100, 0)
    after = b"\xd0\x00"
    r = p.Reader(bytearray(64))
    got = feed(r, big[:50]) + feed(r, big[50:90]) + feed(r, big[90:] + after)
    assert got == [(0x30, None), (0xD0, b"")]


def test_decoder_holds_packets_while_reading_on():
    """Held messages stay intact while later packets are read and the buffer is compacted;
    take() gives them back oldest first, and their room with them."""
    m1 = enc(publish, 1, b"t", b"a" * 20, 1)
    m2 = enc(publish, 2, b"t", b"b" * 20, 1)
    r = p.Reader(bytearray(64))
    fill(r, b"\xd0\x00" + m1 + b"\x40\x02\x00")
    first, body = r.next()
    assert (first, bytes(body)) == (0xD0, b"")
    first, body = r.next()
    assert (first, bytes(body)) == (0x32, m1[2:])
    r.hold(first)
    assert r.next() is None  # the PUBACK is not whole yet
    assert feed(r, b"\x07") == [(0x40, b"\x00\x07")]  # read past the held message
    fill(r, m2)
    first, body = r.next()
    r.hold(first)
    assert len(r.space()) == 64 - len(m1) - 4 - len(m2)  # held messages and the PUBACK remain
    first, body = r.take()
    assert (first, bytes(body)) == (0x32, m1[2:])
    assert len(r.space()) == 64 - 4 - len(m2)  # from the PUBACK after m1 on
    first, body = r.take()
    assert (first, bytes(body)) == (0x32, m2[2:])
    assert r.take() is None
    assert len(r.space()) == 64


def test_decoder_holds_many_messages_in_its_buffer_alone():
    """A buffer full of small held messages: each is given back intact, in order, with the
    packets read between them skipped."""
    r = p.Reader(bytearray(4096))
    sent = []
    k = 0
    while len(r.space()) > 40:
        m = enc(publish, k + 1, b"flood", b"message %d" % k, 1)
        fill(r, m + b"\x40\x02\x00\x01")  # a PUBACK after each
        first, body = r.next()
        r.hold(first)
        sent.append(m[2:])
        assert r.next()[0] == 0x40
        k += 1
    got = []
    while (x := r.take()) is not None:
        got.append(bytes(x[1]))
    assert got == sent
    assert len(sent) > 100


def test_decoder_refuses_a_malformed_length():
    r = p.Reader(bytearray(16))
    with pytest.raises(ValueError):
        feed(r, b"\x30\xff\xff\xff\xff\x01")


PUBLISH_PARTS = [
    (0x30, b"\x00\x03a/bhi", (b"a/b", 0, b"hi")),
    (0x32, b"\x00\x01t\x12\x34", (b"t", 0x1234, b"")),
    (0x34, b"\x00\x00\x00\x09\r\n", (b"", 9, b"\r\n")),
]  # fmt: skip


@pytest.mark.parametrize(("first", "body", "want"), PUBLISH_PARTS)
def test_publish_parts(first, body, want):
    t, pid, data = p.publish_parts(first, memoryview(body))
    assert (bytes(t), pid, bytes(data)) == want


@pytest.mark.parametrize("body", [b"\x00\x05ab", b"\x00\x01t\x00"])
def test_publish_parts_short(body):
    with pytest.raises((ValueError, IndexError)):
        p.publish_parts(0x32, memoryview(body))


REFUSALS = [
    (1, "unacceptable protocol version"), (2, "client identifier rejected"),
    (3, "server unavailable"), (4, "bad user name or password"), (5, "not authorized"),
    (6, "CONNACK return code 6"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "words"), REFUSALS)
def test_refusal(code, words):
    assert p.refusal(code) == words


FILTERS = [
    ("a/b", True), ("a/+/c", True), ("+", True), ("#", True), ("a/#", True), ("/", True),
    ("+/+", True), ("", False), ("a/#/b", False), ("a#", False), ("a+", False), ("a/b+/c", False),
    ("a\0b", False),
]  # fmt: skip


@pytest.mark.parametrize(("f", "ok"), FILTERS)
def test_valid_filter(f, ok):
    assert p.valid_filter(f) is ok


@pytest.mark.parametrize(("t", "ok"), [("a/b", True), ("a/+", False), ("#", False), ("", False)])
def test_valid_topic(t, ok):
    assert p.valid_topic(t) is ok


MATCH = [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "x/y", True), ("+/+", "/x", True),
    ("+", "/x", False), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True), ("a/b", "a/b/", False),
]  # fmt: skip


@pytest.mark.parametrize(("f", "t", "want"), MATCH)
def test_match(f, t, want):
    assert p.match(f, t) is want
