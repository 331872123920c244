# umqtt.simple for the PC build: the same API, packets and blocking behaviour as
# micropython-lib's micropython/umqtt.simple 1.8.0. The ESP32 images freeze older ones: 1.4.0
# in v1.24 (connect(clean_session) without timeout), 1.6.0 in v1.25/v1.26.
# Written anew from that module's behaviour; see its README for the API.
# MQTT 3.1.1; topics and messages are bytes (or str); QoS 0 and 1 only.

import socket
import struct


class MQTTException(Exception):
    pass


# Write the Remaining Length of `sz` into pkt[1:]; return the index of its last byte
def _encode_len(pkt, sz):
    i = 1
    while sz > 0x7F:
        pkt[i] = (sz & 0x7F) | 0x80
        sz >>= 7
        i += 1
    pkt[i] = sz
    return i


class MQTTClient:
    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=None,  # None/False, True (legacy ssl.wrap_socket + ssl_params) or an SSLContext
        ssl_params={},
    ):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.sock = None  # socket (TLS-wrapped if ssl) once connected
        self.server = server
        self.port = port
        self.ssl = ssl
        self.ssl_params = ssl_params
        self.pid = 0  # last packet id used
        self.cb = None  # cb(topic, msg) for received PUBLISH
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False

    # Write a UTF-8 string field: 2-byte big-endian length, then the bytes
    def _send_str(self, s):
        self.sock.write(struct.pack("!H", len(s)))
        self.sock.write(s)

    # Read a Remaining Length (variable byte integer) from the socket
    def _recv_len(self):
        n = 0
        sh = 0
        while True:
            b = self.sock.read(1)[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                return n
            sh += 7

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2
        assert topic
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    # Open the socket (blocking, `timeout` s for connect and CONNACK), send CONNECT.
    # Returns the session-present flag; raises MQTTException(code) on refusal.
    def connect(self, clean_session=True, timeout=None):
        if self.sock:
            self.sock.close()
        self.sock = socket.socket()
        self.sock.settimeout(timeout)
        self.sock.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        if self.ssl is True:
            import ssl  # legacy API

            self.sock = ssl.wrap_socket(self.sock, **self.ssl_params)
        elif self.ssl:
            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)
        hdr = bytearray(b"\x10\0\0\0\0")
        var = bytearray(b"\0\x04MQTT\x04\x02\0\0")  # protocol name, level 4, flags, keepalive
        sz = 10 + 2 + len(self.client_id)
        var[7] = clean_session << 1
        if self.user:
            sz += 2 + len(self.user) + 2 + len(self.pswd)
            var[7] |= 0xC0
        if self.keepalive:
            assert self.keepalive < 65536
            var[8] |= self.keepalive >> 8
            var[9] |= self.keepalive & 0xFF
        if self.lw_topic:
            sz += 2 + len(self.lw_topic) + 2 + len(self.lw_msg)
            var[7] |= 0x4 | (self.lw_qos & 3) << 3 | self.lw_retain << 5
        i = _encode_len(hdr, sz)
        self.sock.write(hdr, i + 1)
        self.sock.write(var)
        self._send_str(self.client_id)
        if self.lw_topic:
            self._send_str(self.lw_topic)
            self._send_str(self.lw_msg)
        if self.user:
            self._send_str(self.user)
            self._send_str(self.pswd)
        resp = self.sock.read(4)  # CONNACK: 20 02 <session present> <return code>
        assert resp[0] == 0x20 and resp[1] == 0x02
        if resp[3] != 0:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self):
        self.sock.write(b"\xe0\0")
        self.sock.close()

    # Send PINGREQ; the PINGRESP is consumed by wait_msg()
    def ping(self):
        self.sock.write(b"\xc0\0")

    # Publish; QoS 1 blocks until the matching PUBACK, QoS 2 is not supported
    def publish(self, topic, msg, retain=False, qos=0):
        pkt = bytearray(b"\x30\0\0\0")
        pkt[0] |= qos << 1 | retain
        sz = 2 + len(topic) + len(msg)
        if qos > 0:
            sz += 2
        assert sz < 2097152
        i = _encode_len(pkt, sz)
        self.sock.write(pkt, i + 1)
        self._send_str(topic)
        if qos > 0:
            self.pid += 1
            pid = self.pid
            struct.pack_into("!H", pkt, 0, pid)
            self.sock.write(pkt, 2)
        self.sock.write(msg)
        if qos == 1:
            while True:
                if self.wait_msg() == 0x40:  # PUBACK: 40 02 <pid>
                    assert self.sock.read(1) == b"\x02"
                    rcv = self.sock.read(2)
                    if rcv[0] << 8 | rcv[1] == pid:
                        return
        elif qos == 2:
            assert 0

    # SUBSCRIBE (typ 0x82) / UNSUBSCRIBE (0xA2); block until the ack of ack_n bytes
    def _send_subunsub(self, topic, typ, ack_op, ack_n, qos=0):
        pkt = bytearray(4)
        pkt[0] = typ
        self.pid += 1
        pid = self.pid
        i = _encode_len(pkt, 4 + len(topic) + (ack_n > 3))
        self.sock.write(pkt, i + 1)
        struct.pack_into("!H", pkt, 0, pid)
        self.sock.write(pkt, 2)
        self._send_str(topic)
        if ack_n > 3:
            self.sock.write(bytes((qos,)))
        while True:
            if self.wait_msg() == ack_op:
                resp = self.sock.read(ack_n)  # length byte, pid, [granted QoS]
                assert resp[1] << 8 | resp[2] == pid
                if ack_n > 3 and resp[3] == 0x80:
                    raise MQTTException(resp[3])
                return

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "Subscribe callback is not set"
        self._send_subunsub(topic, 0x82, 0x90, 4, qos)

    def unsubscribe(self, topic):
        self._send_subunsub(topic, 0xA2, 0xB0, 3)

    # Wait for one incoming packet and process it. A PUBLISH goes to the callback
    # (QoS 1 acked with PUBACK) and its first byte is returned; PINGRESP is consumed
    # and gives None; for any other packet only its first byte is read and returned,
    # the caller reads the rest.
    def wait_msg(self):
        res = self.sock.read(1)
        self.sock.setblocking(True)  # the rest of the packet is read blocking
        if res is None:
            return None
        if res == b"":
            raise OSError(-1)
        if res == b"\xd0":  # PINGRESP
            assert self.sock.read(1)[0] == 0
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        sz = self._recv_len()
        tl = self.sock.read(2)
        tl = tl[0] << 8 | tl[1]
        topic = self.sock.read(tl)
        sz -= tl + 2
        if op & 6:
            pid = self.sock.read(2)
            pid = pid[0] << 8 | pid[1]
            sz -= 2
        msg = self.sock.read(sz)
        self.cb(topic, msg)
        if op & 6 == 2:
            pkt = bytearray(b"\x40\x02\0\0")
            struct.pack_into("!H", pkt, 2, pid)
            self.sock.write(pkt)
        elif op & 6 == 4:
            assert 0
        return op

    # Non-blocking until a first byte arrives, then as wait_msg(); None if nothing
    def check_msg(self):
        self.sock.setblocking(False)
        return self.wait_msg()
