"""The pure HTTP/1.1 message code of the OTA client (firmware/httpmsg.py) under CPython.

Expected values follow RFC 9112 (message syntax, chunked coding, framing) and RFC 9110
(Connection, Host)."""

import pytest

from firmware import httpmsg as h

URLS = [
    ("http://example.com", (False, "example.com", 80, "/")),
    ("http://example.com/", (False, "example.com", 80, "/")),
    ("https://example.com/ota", (True, "example.com", 443, "/ota/")),
    ("https://example.com/ota/", (True, "example.com", 443, "/ota/")),
    ("http://10.0.0.2:8080/a/b", (False, "10.0.0.2", 8080, "/a/b/")),
    ("https://h:1/", (True, "h", 1, "/")),
    ("http://h:65535", (False, "h", 65535, "/")),
    ("http://h:/", (False, "h", 80, "/")),  # an empty port is the default (RFC 3986 3.2.3)
]  # fmt: skip

BAD_URLS = [
    "ftp://h/", "example.com/ota", "http:/h", "HTTP://h/", "http://", "http:///path",
    "http://h:0/", "http://h:65536/", "http://h:8o/", "http://a b/", "", "http://h/?x=1",
    "http://h/ota#frag",
]  # fmt: skip


@pytest.mark.parametrize("url,want", URLS)
def test_split_url(url, want):
    assert h.split_url(url) == want


@pytest.mark.parametrize("url", BAD_URLS)
def test_split_url_refuses(url):
    with pytest.raises(ValueError):
        h.split_url(url)


REQUESTS = [
    (("/v1/manifest.json", "h", 80, False),
     b"GET /v1/manifest.json HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"),
    (("/m", "h", 443, True), b"GET /m HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"),
    # a port that is not the scheme's default goes in Host (RFC 9110 7.2)
    (("/m", "h", 8080, False),
     b"GET /m HTTP/1.1\r\nHost: h:8080\r\nConnection: keep-alive\r\n\r\n"),
    (("/m", "h", 80, True), b"GET /m HTTP/1.1\r\nHost: h:80\r\nConnection: keep-alive\r\n\r\n"),
]  # fmt: skip


@pytest.mark.parametrize("args,want", REQUESTS)
def test_request(args, want):
    assert h.request(*args) == want


def framing(frame):
    if isinstance(frame, h.Length):
        return ("length", frame.left)
    return ("chunked",)


HEADS = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12", (200, True, ("length", 12))),
    (b"HTTP/1.1 200 OK\r\ncontent-length:0\r\nServer: x", (200, True, ("length", 0))),
    # HTTP/1.0 closes unless asked to keep; "close" wins in HTTP/1.1 (RFC 9112 9.3)
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5", (200, False, ("length", 5))),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 5",
     (200, True, ("length", 5))),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5", (200, False, ("length", 5))),
    (b"HTTP/1.1 200 OK\r\nConnection: TE, close\r\nContent-Length: 5",
     (200, False, ("length", 5))),
    # chunked wins over Content-Length (RFC 9112 6.3)
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", (200, True, ("chunked",))),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: Chunked",
     (200, True, ("chunked",))),
    # the same Content-Length twice is one (RFC 9110 8.6)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7", (200, True, ("length", 7))),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0", (404, True, ("length", 0))),
    (b"HTTP/1.1 200\r\nContent-Length: 1", (200, True, ("length", 1))),  # empty reason phrase
]  # fmt: skip

BAD_HEADS = [
    b"", b"HTTP/2 200 OK\r\nContent-Length: 1", b"ICY 200 OK\r\nContent-Length: 1",
    b"HTTP/1.1 20 OK\r\nContent-Length: 1", b"HTTP/1.1 abc OK\r\nContent-Length: 1",
    b"HTTP/1.1 200 OK",  # no framing: a body up to the close is not accepted
    b"HTTP/1.1 200 OK\r\nContent-Length: -1", b"HTTP/1.1 200 OK\r\nContent-Length: 1x",
    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length 5", b"HTTP/1.1 200 OK\r\n\xff\xfe: 1",
]  # fmt: skip


@pytest.mark.parametrize("head,want", HEADS)
def test_parse_head(head, want):
    code, keep, frame = h.parse_head(head)
    assert (code, keep, framing(frame)) == want


@pytest.mark.parametrize("head", BAD_HEADS)
def test_parse_head_refuses(head):
    with pytest.raises(ValueError):
        h.parse_head(head)


def decode(frame, wire, piece):
    """Feed wire to frame as a client would, at most piece bytes per read, through a buffer
    of 16 bytes; return the body, or None if the frame wants bytes the wire does not have."""
    buf = bytearray(16)
    at = end = pos = 0
    body = b""
    while not frame.done():
        a, b, k = frame.step(buf, at, end)
        if b > a:
            body += bytes(buf[a:b])
        elif k == at:
            buf[: end - at] = buf[at:end]
            at, end = 0, end - at
            n = min(piece, len(wire) - pos, len(buf) - end)
            if n == 0:
                return None
            buf[end : end + n] = wire[pos : pos + n]
            pos += n
            end += n
            continue
        at = k
    return body


BODIES = [
    (lambda: h.Length(0), b"", b""),
    (lambda: h.Length(5), b"hello", b"hello"),
    (lambda: h.Length(3), b"hello", b"hel"),  # what follows is not this body's
    (lambda: h.Chunked(), b"0\r\n\r\n", b""),
    (lambda: h.Chunked(), b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (lambda: h.Chunked(), b"3\r\nabc\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n", b"abc" + b"x" * 26),
    (lambda: h.Chunked(), b"4;name=v\r\nabcd\r\n0\r\n\r\n", b"abcd"),  # chunk extension
    (lambda: h.Chunked(), b"2\r\nab\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n", b"ab"),  # trailers
    (lambda: h.Chunked(), b"00000002\r\nab\r\n0\r\n\r\n", b"ab"),  # leading zeros
]  # fmt: skip


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("make,wire,want", BODIES)
def test_body_framing(make, wire, want, piece):
    assert decode(make(), wire, piece) == want


BAD_CHUNKED = [
    b"x\r\n", b"\r\n", b"-1\r\n", b"0x5\r\nhello\r\n", b"5\r\nhelloXY0\r\n\r\n",
    b"123456789\r\n", b"0123456789\r\n",  # more than a flash holds
]  # fmt: skip


@pytest.mark.parametrize("wire", BAD_CHUNKED)
def test_chunked_refuses(wire):
    with pytest.raises(ValueError):
        decode(h.Chunked(), wire, 16)


def test_chunked_waits_for_more():
    """A cut-short chunked body asks for more bytes instead of ending."""
    assert decode(h.Chunked(), b"5\r\nhel", 16) is None
    assert decode(h.Chunked(), b"5\r\nhello\r\n", 16) is None
    assert decode(h.Length(9), b"hello", 16) is None
