"""A static HTTP/1.1 (keep-alive) and HTTPS server on 127.0.0.1 for tests, with faults.

    with FileServer(root) as srv:                 # srv.url = "http://127.0.0.1:<port>/"
    with FileServer(root, tls=tmp_path) as srv:   # HTTPS; srv.ca_pem / srv.wrong_ca_pem
    srv.cut["v1/firmware/app.mpy"] = 300          # send 300 body bytes, then close
    srv.stall["v1/firmware/app.mpy"] = 300        # send 300 body bytes, then go silent
    srv.delay = 0.01                              # pause per 512-byte chunk (throttle)
    srv.chunked = True                            # bodies in chunked transfer coding
    srv.requests                                  # paths asked, in order

The HTTPS certificate is issued for 127.0.0.1 by a CA made with the openssl CLI
(host_tests/mosquitto.py's helpers); a second, unrelated CA is made for failure tests.
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from pathlib import Path

from host_tests.mosquitto import HOST, make_ca, make_server_cert

CHUNK = 512


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        rel = self.path.lstrip("/").split("?")[0]
        owner.requests.append(rel)
        path = (owner.root / rel).resolve()
        if owner.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if owner.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        cut = owner.cut.get(rel)
        stall = owner.stall.get(rel)
        limit = min(x for x in (cut, stall, len(data)) if x is not None)
        sent = 0
        while sent < limit:
            n = min(CHUNK, limit - sent)
            piece = data[sent : sent + n]
            if owner.chunked:
                piece = b"%x\r\n%s\r\n" % (n, piece)
            self.wfile.write(piece)
            self.wfile.flush()
            sent += n
            if owner.delay:
                time.sleep(owner.delay)
        if stall is not None and stall < len(data):
            owner.stopping.wait()
            self.close_connection = True
        elif cut is not None and cut < len(data):
            self.close_connection = True
        elif owner.chunked:
            self.wfile.write(b"0\r\n\r\n")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: FileServer


class FileServer:
    def __init__(self, root: Path, tls: Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.cut: dict[str, int] = {}
        self.stall: dict[str, int] = {}
        self.delay = 0.0
        self.chunked = False
        self.requests: list[str] = []
        self.stopping = threading.Event()
        self.ca_pem = self.wrong_ca_pem = b""
        self.httpd = _Server((HOST, 0), _Handler)
        self.httpd.owner = self
        scheme = "http"
        if tls is not None:
            d = Path(tls) / "httpd-ca"
            d.mkdir(parents=True, exist_ok=True)
            ca, ca_key = make_ca(d, "ota-ca")
            wrong, _ = make_ca(d, "wrong-ca")
            crt, key = make_server_cert(d, ca, ca_key)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(crt, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.ca_pem, self.wrong_ca_pem = ca.read_bytes(), wrong.read_bytes()
            scheme = "https"
        self.port = self.httpd.server_address[1]
        self.url = f"{scheme}://{HOST}:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
