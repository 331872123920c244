"""Real network peers on 127.0.0.1 for the socket tests (issue 4), each in its own threads.

    with TcpEcho() as echo:            # echo.port; echo.peers (client addresses seen)
        ...
    TcpSink(delay=0.01)                # reads slowly; .data() is everything received
    TcpSource(payload)                 # sends payload to each client, then closes
    UdpEcho()                          # echoes datagrams back to their sender
    UdpReceiver()                      # collects datagrams: .datagrams [(data, (ip, port))]
    udp_send(port, data)               # one datagram to 127.0.0.1:port, from a fresh socket
    TlsEcho(pki)                       # TCP echo inside TLS, certificate from pki
    pki = Pki(tmp_path)                # test CA + server cert (openssl CLI) and a wrong CA

Every server binds port 0 (the OS picks), exposes `.port` and stops cleanly (`stop()` or the
`with` block): the listening socket and every accepted connection are closed and the threads
joined. `reset_all()` closes the accepted connections with RST (SO_LINGER 0).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from host_tests.module import SERVER_IP
from host_tests.mosquitto import make_ca, openssl

HOST = SERVER_IP


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free now on 127.0.0.1 (for the module's listening / bound links)."""
    return free_ports(1, kind)[0]


def free_ports(n: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """n different ports free now: held together while chosen (one after the other, the
    kernel may hand out a port it just released twice: a broker's two listeners did)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, kind)) for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _rst_close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.close()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.01)


# ----- TCP


class TcpServer:
    """Accepts clients on 127.0.0.1:<port>; each gets a thread running self.handle(conn)."""

    def __init__(self, port: int = 0, rcvbuf: int | None = None) -> None:
        self._lsock = socket.socket()
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:  # inherited by accepted sockets: a small window pushes back
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._lsock.bind((HOST, port))
        self._lsock.listen(8)
        self._lsock.settimeout(0.1)
        self.port: int = self._lsock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []  # every client address accepted, in order
        self.closed: list[tuple[str, int]] = []  # clients that closed their side (EOF)
        self.conns: list[socket.socket] = []  # live accepted connections
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.1)
            with self._lock:
                self.peers.append(addr)
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, addr), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self.conns:
                    self.conns.remove(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def recv(self, conn: socket.socket, n: int = 65536) -> bytes | None:
        """Bytes from conn; b"" at EOF; None when stopping (polls every 0.1 s)."""
        while not self._stop.is_set():
            try:
                return conn.recv(n)
            except TimeoutError:
                continue
        return None

    def sendall(self, conn: socket.socket, data: bytes | memoryview) -> bool:
        """Send everything (blocking, in steps, so stop() can interrupt); False if stopped."""
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                return False
            try:
                view = view[conn.send(view[:65536]) :]
            except TimeoutError:
                continue
        return True

    def reset_all(self) -> None:
        """Abort every accepted connection with a TCP RST."""
        with self._lock:
            conns, self.conns = self.conns, []
        for c in conns:
            _rst_close(c)

    def close_all(self) -> None:
        """Close every accepted connection normally (FIN)."""
        with self._lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._lsock.close()
        self._acceptor.join(2)
        self.close_all()
        for t in self._threads:
            t.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpEcho(TcpServer):
    """Sends back every byte it receives; `received` counts them."""

    def __init__(self, port: int = 0) -> None:
        self.received = 0
        super().__init__(port)

    def handle(self, conn: socket.socket) -> None:
        addr = conn.getpeername()
        while (data := self.recv(conn)) is not None:
            if not data:
                self.closed.append(addr)
                return
            self.received += len(data)
            if not self.sendall(conn, data):
                return


class TcpSink(TcpServer):
    """Reads `chunk` bytes every `delay` seconds (a slow reader, small receive window) and keeps
    everything per connection, in accept order."""

    def __init__(self, delay: float = 0.0, chunk: int = 4096, rcvbuf: int | None = 8192) -> None:
        self.delay = delay
        self.chunk = chunk
        self.chunks: list[bytearray] = []
        self.log: list[tuple[float, int]] = []  # (time.monotonic(), bytes) of every recv
        super().__init__(rcvbuf=rcvbuf)

    def handle(self, conn: socket.socket) -> None:
        addr = conn.getpeername()
        buf = bytearray()
        self.chunks.append(buf)
        while (data := self.recv(conn, self.chunk)) is not None:
            if not data:
                self.closed.append(addr)
                return
            buf += data
            self.log.append((time.monotonic(), len(data)))
            if self.delay:
                time.sleep(self.delay)

    def data(self, i: int = 0) -> bytes:
        return bytes(self.chunks[i]) if i < len(self.chunks) else b""

    def total(self) -> int:
        return sum(len(c) for c in self.chunks)


class TcpSource(TcpServer):
    """Sends `payload` to every client that connects, then closes (FIN) unless `linger`;
    `sent` counts the bytes the kernel accepted (it stalls when the receiver pushes back)."""

    def __init__(self, payload: bytes, linger: bool = False, sndbuf: int | None = None) -> None:
        self.payload = payload
        self.linger = linger
        self.sndbuf = sndbuf
        self.sent = 0
        self.done = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        if self.sndbuf is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        view = memoryview(self.payload)
        while view:
            if self._stop.is_set():
                return
            try:
                n = conn.send(view[:16384])
            except TimeoutError:
                continue
            self.sent += n
            view = view[n:]
        self.done.set()
        if self.linger:
            while (data := self.recv(conn)) is not None and data:
                pass


# ----- UDP


class _Udp:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams.append((data, addr))
            self.handle(data, addr)

    def handle(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def send_to(self, port: int, data: bytes) -> None:
        """A datagram from this socket to 127.0.0.1:port (the module's bound link)."""
        self.sock.sendto(data, (HOST, port))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class UdpEcho(_Udp):
    """Sends every datagram back to where it came from."""

    def handle(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)


class UdpReceiver(_Udp):
    """Keeps every datagram it receives (.datagrams); sends with .send_to(port, data)."""


def udp_send(port: int, data: bytes) -> int:
    """One datagram from a fresh socket to 127.0.0.1:port; returns the source port used."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.sendto(data, (HOST, port))
        return s.getsockname()[1]


# ----- TLS


class Pki:
    """A test CA (EC P-256) with a server certificate for IP:127.0.0.1 and DNS:localhost, and a
    second, unrelated "wrong" CA. Files in `d`; PEM bytes in ca_pem / wrong_ca_pem."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca_path, self.ca_key = self._ca("test-ca")
        self.wrong_ca_path, _ = self._ca("wrong-ca")
        self.cert_path, self.key_path = self._server()
        self.ca_pem = self.ca_path.read_bytes()
        self.wrong_ca_pem = self.wrong_ca_path.read_bytes()

    def _ca(self, name: str) -> tuple[Path, Path]:
        return make_ca(self.dir, name)

    def _server(self) -> tuple[Path, Path]:
        d = self.dir
        key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.pem", d / "server.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=d)
        openssl("req", "-new", "-key", str(key), "-subj", "/CN=localhost", "-out", str(csr), cwd=d)
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_path), "-CAkey", str(self.ca_key),
            "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(crt),
            cwd=d,
        )  # fmt: skip
        return crt, key


class TlsEcho(TcpServer):
    """TCP echo inside TLS (server certificate from pki). `handshakes` counts the successful
    ones, `failures` keeps the errors of the failed ones (e.g. the client rejected the chain)."""

    def __init__(self, pki: Pki) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.cert_path, pki.key_path)
        self.handshakes = 0
        self.failures: list[str] = []
        self.received = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.failures.append(repr(e))
            return
        self.handshakes += 1
        tls.settimeout(0.1)
        with tls:
            while (data := self.recv(tls)) is not None:
                if not data:
                    return
                self.received += len(data)
                if not self.sendall(tls, data):
                    return
