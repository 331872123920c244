# HTTP/1.1 messages as the OTA client needs them (RFC 9112): a server's URL, a GET request, a
# response's status line and headers, and the body's framing (Content-Length or chunked). Pure:
# no I/O; CPython imports it for the table tests. Malformed input raises ValueError.
_HEX = "0123456789abcdefABCDEF"
_SIZE_DIGITS = 7  # a chunk of up to 256 MiB: more than any flash holds

# Body framing states
_SIZE = 0  # a chunk-size line
_DATA = 1  # chunk data
_CRLF = 2  # the CRLF after chunk data
_TRAILER = 3  # trailer lines up to an empty one
_DONE = 4


# http[s]://host[:port][/path] -> (tls, host, port, base path ending in "/")
def split_url(url):
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError("scheme must be http or https")
    tls = scheme == "https"
    if "?" in rest or "#" in rest:  # the module adds paths to it: <url><version>/manifest.json
        raise ValueError("no query or fragment")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    if not host or " " in host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError("bad host or port")
    port = int(port) if port else (443 if tls else 80)
    base = "/" + path if not path or path.endswith("/") else "/" + path + "/"
    return tls, host, port, base


# A GET of target on a connection the client keeps for the next request
def request(target, host, port, tls):
    if port != (443 if tls else 80):
        host = "{}:{}".format(host, port)
    return "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n".format(
        target, host
    ).encode()


# A response head (status line and header lines, without the empty line that ends it) ->
# (status code, the connection stays open, body framing: Length or Chunked).
def parse_head(head):
    lines = bytes(head).decode().split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or len(status[1]) != 3:
        raise ValueError("bad status line")
    code = int(status[1])
    keep = status[0] == "HTTP/1.1"
    length = None
    chunked = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError("bad header line")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ValueError("bad Content-Length")
            length = int(value)
        elif name == "connection":
            tokens = [t.strip() for t in value.split(",")]
            keep = "close" not in tokens and (keep or "keep-alive" in tokens)
        elif name == "transfer-encoding":
            if value != "chunked":  # gzip, deflate, "identity" (obsolete)...
                raise ValueError("transfer coding {} not supported".format(value))
            chunked = True
    if chunked:
        return code, keep, Chunked()
    if length is None:
        raise ValueError("no Content-Length")
    return code, keep, Length(length)


# The framing of a body: step(buf, i, j) looks at the received bytes buf[i:j] and returns
# (a, b, k): buf[a:b] is body data, and buf[i:k] is used up. k == i: more bytes are needed.


class Length:
    def __init__(self, n):
        self.left = n

    def done(self):
        return self.left == 0

    def step(self, buf, i, j):
        k = min(j, i + self.left)
        self.left -= k - i
        return i, k, k


class Chunked:
    def __init__(self):
        self.state = _SIZE
        self.left = 0

    def done(self):
        return self.state == _DONE

    def step(self, buf, i, j):
        if self.state == _DATA:
            k = min(j, i + self.left)
            self.left -= k - i
            if not self.left:
                self.state = _CRLF
            return i, k, k
        if self.state == _CRLF:
            if j - i < 2:
                return i, i, i
            if buf[i : i + 2] != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")
            self.state = _SIZE
            return i, i, i + 2
        e = buf.find(b"\r\n", i, j)
        if e < 0:
            return i, i, i
        if self.state == _TRAILER:
            if e == i:
                self.state = _DONE
            return i, i, e + 2
        size = bytes(buf[i:e]).decode().partition(";")[0].strip()  # chunk extensions ignored
        if not size or len(size.lstrip("0")) > _SIZE_DIGITS or any(c not in _HEX for c in size):
            raise ValueError("bad chunk size")
        self.left = int(size, 16)
        self.state = _DATA if self.left else _TRAILER
        return i, i, e + 2
