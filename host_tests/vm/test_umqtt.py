# umqtt.simple (host/board) and mqtt_qos2 (lib) against a real broker, on the MicroPython VM.
# Run by host_tests/test_umqtt.py:
#   MICROPYPATH=host/board:lib:.frozen micropython -X heapsize=110k host_tests/vm/test_umqtt.py
# Broker from the environment: MQTT_HOST, MQTT_PORT, MQTT_USER, MQTT_PASS, MQTT_TLS_PORT,
# MQTT_CA_DER, MQTT_WRONG_CA_DER. Without MQTT_HOST only the offline checks run.
# Sync with the wrapper: the script prints "READY <step>" and waits for a line on stdin;
# the wrapper publishes with mosquitto_pub meanwhile. Messages this script publishes on
# t/out/# are checked by the wrapper's mosquitto_sub. Prints "OK" at the end.

import io
import os
import sys
import time

import mqtt_qos2
from umqtt.simple import MQTTClient as Simple
from umqtt.simple import MQTTException

HOST = os.getenv("MQTT_HOST")
PORT = int(os.getenv("MQTT_PORT") or 1883)
USER = os.getenv("MQTT_USER")
PASS = os.getenv("MQTT_PASS")
BIN = bytes(range(256))

got = []  # (topic, msg) delivered to callbacks


def cb(topic, msg):
    got.append((topic, msg))


acks = []  # (op, pid, code) from the ack callback


def ack_cb(op, pid, code):
    acks.append((op, pid, code))


def step(name):
    print("READY", name)
    sys.stdin.readline()


# Wait (blocking helpers) until n messages were delivered or t ms passed
def wait_got(c, n, t=5000):
    t0 = time.ticks_ms()
    while len(got) < n and time.ticks_diff(time.ticks_ms(), t0) < t:
        c.poll()
        time.sleep_ms(2)
    return len(got) >= n


# ---- Offline: the non-blocking reader over a scripted socket ----


class FakeSock:
    # Hands out `data` at most `chunk` bytes per readinto, with None (EAGAIN) in between
    def __init__(self, data, chunk):
        self.data = memoryview(data)
        self.chunk = chunk
        self.out = bytearray()
        self.tick = 0

    def readinto(self, buf):
        self.tick ^= 1
        if self.tick or not self.data:
            return None
        n = min(len(buf), self.chunk, len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def write(self, b):
        self.out += b
        return len(b)

    def setblocking(self, f):
        pass


def pub2(pid, dup=0):
    body = b"\0\x03a/b" + bytes((pid >> 8, pid & 0xFF)) + BIN
    return bytes((0x34 | dup << 3, len(body) & 0x7F | 0x80, len(body) >> 7)) + body


def offline():
    for chunk in (1, 3, 1000):
        c = mqtt_qos2.MQTTClient("x", "h", bufsize=300)
        c.set_callback(cb)
        c.set_ack_callback(ack_cb)
        got.clear()
        acks.clear()
        stream = (
            pub2(7)
            + pub2(7, 1)  # duplicate before PUBREL: not delivered again
            + b"\x62\x02\0\x07"  # PUBREL 7
            + pub2(7)  # a new message reusing id 7
            + b"\x50\x02\x01\x02"  # PUBREC 0x102 -> PUBREL
            + b"\x70\x02\x01\x02"  # PUBCOMP
            + b"\x90\x03\0\x05\x80"  # SUBACK failure
            + b"\x32\x82\x03\0\x01z\0\x09"
            + bytes(381)  # oversized QoS 1 PUBLISH: dropped
            + b"\xd0\0"  # PINGRESP
        )
        c.sock = s = FakeSock(stream, chunk)
        ops = []
        for _ in range(2000):
            op = c.poll()
            if op is not None:
                ops.append(op)
        assert ops == [0x30, 0x30, 0x60, 0x30, 0x50, 0x70, 0x90, 0xD0], ops
        assert got == [(b"a/b", BIN), (b"a/b", BIN)], got
        assert acks == [(0x70, 0x102, 0), (0x90, 5, 0x80), (0xD0, 0, 0)], acks
        assert c.dropped == 1
        exp = b"\x50\x02\0\x07" * 2 + b"\x70\x02\0\x07" + b"\x50\x02\0\x07" + b"\x62\x02\x01\x02"
        assert bytes(s.out) == exp, s.out
    # Packets written by the non-blocking senders
    c.sock = s = FakeSock(b"", 1)
    c.pid = 65535
    assert c.send_publish(b"t", b"ab", retain=True, qos=2) == 1
    assert c.send_subscribe(b"t/#", 2) == 2
    assert c.send_unsubscribe(b"t/#") == 3
    assert c.send_publish(b"t", b"") == 0
    exp = b"\x35\x07\0\x01t\0\x01ab" + b"\x82\x08\0\x02\0\x03t/#\x02"
    exp += b"\xa2\x07\0\x03\0\x03t/#" + b"\x30\x03\0\x01t"
    assert bytes(s.out) == exp, s.out
    # umqtt.simple's own PUBLISH/SUBSCRIBE layout (blocking client over BytesIO)
    s = Simple("x", "h")
    s.sock = io.BytesIO()
    s.publish(b"t", b"ab", retain=True)
    assert s.sock.getvalue() == b"\x31\x05\0\x01tab", s.sock.getvalue()
    print("offline ok")


# ---- Online ----


def auth():
    if USER is None:
        return
    try:
        Simple("bad", HOST, PORT, user=USER, password=PASS + "x").connect(timeout=5)
        raise AssertionError("wrong password accepted")
    except MQTTException as e:
        assert e.args[0] in (4, 5), e.args
        print("auth refused", e.args[0])


def simple_client():
    s = Simple("simple", HOST, PORT, user=USER, password=PASS, keepalive=30)
    assert s.connect(timeout=5) == 0
    s.set_callback(cb)
    s.publish(b"t/out/s0", b"hello0")
    s.publish(b"t/out/s1", b"hello1", qos=1)
    s.ping()
    assert s.wait_msg() is None  # PINGRESP consumed
    got.clear()
    s.subscribe(b"t/echo", qos=1)
    s.publish(b"t/echo", b"e", qos=1)
    while not got:
        s.check_msg()
    assert got == [(b"t/echo", b"e")], got
    s.unsubscribe(b"t/echo")
    s.disconnect()
    print("simple ok")


def qos2_client():
    c = mqtt_qos2.MQTTClient("qos2", HOST, PORT, user=USER, password=PASS, keepalive=30)
    c.timeout_ms = 5000
    c.set_callback(cb)
    c.set_ack_callback(ack_cb)
    assert c.connect(timeout=5) == 0
    # Receive QoS 0/1/2 from mosquitto_pub (binary and 3000-byte payloads)
    assert c.subscribe(b"t/in/#", 2) == 2
    got.clear()
    step("in")
    assert wait_got(c, 5)
    got.sort()
    exp = [
        (b"t/in/0", b"m0"),
        (b"t/in/1", b"m1"),
        (b"t/in/2", b"m2"),
        (b"t/in/big", b"0123456789" * 300),
        (b"t/in/bin", BIN),
    ]
    assert got == exp, got
    # Non-blocking publish: ids returned at once, completion seen by poll()
    acks.clear()
    p2 = c.send_publish(b"t/out/q2", b"two", qos=2)
    p1 = c.send_publish(b"t/out/bin", BIN, qos=1)
    t0 = time.ticks_ms()
    while len(acks) < 2 and time.ticks_diff(time.ticks_ms(), t0) < 5000:
        c.poll()
    assert sorted(acks) == [(0x40, p1, 0), (0x70, p2, 0)], (acks, p1, p2)
    # QoS 2 loopback: delivered exactly once
    got.clear()
    assert c.subscribe(b"t/loop", 2) == 2
    c.publish(b"t/loop", BIN, qos=2)
    assert wait_got(c, 1)
    wait_got(c, 2, 300)
    assert got == [(b"t/loop", BIN)], got
    assert not c._rel  # PUBREL received for it
    # Unsubscribe: t/in/after must not arrive, t/mark must
    c.unsubscribe(b"t/in/#")
    c.subscribe(b"t/mark", 1)
    got.clear()
    step("unsub")
    assert wait_got(c, 1)
    wait_got(c, 2, 300)
    assert got == [(b"t/mark", b"x")], got
    # Ping
    acks.clear()
    c.ping()
    assert c.wait_msg() == 0xD0 and acks == [(0xD0, 0, 0)], acks
    c.disconnect()
    print("qos2 ok")


def keepalive():
    c = mqtt_qos2.MQTTClient("ka", HOST, PORT, user=USER, password=PASS, keepalive=1)
    c.connect(timeout=5)
    for _ in range(6):  # pinging keeps the session for 3 s
        c.ping()
        time.sleep_ms(500)
        while c.poll() is not None:
            pass
    try:  # silence: the broker drops us after 1.5 keepalive periods
        time.sleep_ms(2500)
        for _ in range(20):
            c.poll()
            time.sleep_ms(100)
        raise AssertionError("not disconnected")
    except OSError:
        pass
    c.sock.close()
    # Last will, sent by the broker when the connection breaks without DISCONNECT
    c = mqtt_qos2.MQTTClient("will", HOST, PORT, user=USER, password=PASS, keepalive=30)
    c.set_last_will(b"t/out/will", b"gone", qos=1)
    c.connect(timeout=5)
    c.sock.close()
    print("keepalive ok")


def tls():
    port = os.getenv("MQTT_TLS_PORT")
    if not port:
        return
    import ssl

    def ctx(path):
        x = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        x.verify_mode = ssl.CERT_REQUIRED
        with open(path, "rb") as f:
            x.load_verify_locations(cadata=f.read())
        return x

    try:
        c = Simple(
            "badca",
            HOST,
            int(port),
            user=USER,
            password=PASS,
            ssl=ctx(os.getenv("MQTT_WRONG_CA_DER")),
        )
        c.connect(timeout=5)
        raise AssertionError("wrong CA accepted")
    except (OSError, ValueError) as e:
        print("tls wrong CA:", repr(e))
    c = mqtt_qos2.MQTTClient(
        "tls", HOST, int(port), user=USER, password=PASS, ssl=ctx(os.getenv("MQTT_CA_DER"))
    )
    c.set_callback(cb)
    c.connect(timeout=5)
    got.clear()
    c.subscribe(b"t/tls", 2)
    c.publish(b"t/tls", b"x" * 2000, qos=2)
    assert wait_got(c, 1) and got == [(b"t/tls", b"x" * 2000)]
    c.publish(b"t/out/tls", b"secure", qos=1)
    c.disconnect()
    s = Simple(
        "tls2", HOST, int(port), user=USER, password=PASS, ssl=ctx(os.getenv("MQTT_CA_DER"))
    )
    s.connect(timeout=5)
    s.disconnect()
    print("tls ok")


offline()
if HOST:
    auth()
    simple_client()
    qos2_client()
    keepalive()
    tls()
print("OK")
