"""A Mosquitto broker on 127.0.0.1 for tests.

    broker = Broker(tmp_path, user="u", password="p", tls=True).start()
    broker.port, broker.tls_port, broker.ca_path, broker.ca_der_path
    broker.restart()  # same ports
    broker.stop()

As a pytest fixture::

    @pytest.fixture
    def broker(tmp_path):
        with Broker(tmp_path) as b:
            yield b

Needs the `mosquitto` binary (apt-get install mosquitto mosquitto-clients) and, for
`tls=True`, the `openssl` CLI. The TLS listener's certificate is issued by a CA generated
here for 127.0.0.1 and localhost; `wrong_ca_path`/`wrong_ca_der_path` hold a second,
unrelated CA for failure tests.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from host_tests.module import SERVER_IP

log = logging.getLogger(__name__)

HOST = SERVER_IP


def have_mosquitto() -> bool:
    return shutil.which("mosquitto") is not None


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """Self-signed EC CA in d: returns (cert.pem, key.pem); also writes <name>.der."""
    key, crt = d / f"{name}.key", d / f"{name}.pem"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=d)
    openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", "30",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(crt), cwd=d,
    )  # fmt: skip
    openssl("x509", "-in", str(crt), "-outform", "DER", "-out", str(d / f"{name}.der"), cwd=d)
    return crt, key


def make_server_cert(d: Path, ca_crt: Path, ca_key: Path) -> tuple[Path, Path]:
    """Server certificate for 127.0.0.1/localhost signed by the CA: (cert.pem, key.pem)."""
    key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.pem", d / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=d)
    openssl("req", "-new", "-key", str(key), "-subj", "/CN=127.0.0.1", "-out", str(csr), cwd=d)
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(crt),
        cwd=d,
    )  # fmt: skip
    return crt, key


class Broker:
    def __init__(
        self,
        tmp_path: Path,
        user: str | None = None,
        password: str | None = None,
        tls: bool = False,
        allow_anonymous: bool | None = None,
    ) -> None:
        self.dir = Path(tmp_path) / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user, self.password, self.tls = user, password, tls
        # Anonymous clients are allowed unless a user is configured
        self.allow_anonymous = (user is None) if allow_anonymous is None else allow_anonymous
        self.host = HOST
        from host_tests.netservers import free_port, free_ports  # netservers imports this module

        self.port, self.tls_port = free_ports(2) if tls else (free_port(), None)
        self.ca_path = self.ca_der_path = None
        self.wrong_ca_path = self.wrong_ca_der_path = None
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            "persistence false",
            "user root",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "log_type all",
            f"listener {self.port} {HOST}",
        ]
        if self.user is not None:
            pw = self.dir / "passwd"
            pw.touch(mode=0o600)
            subprocess.run(
                ["mosquitto_passwd", "-b", str(pw), self.user, self.password or ""],
                check=True,
                capture_output=True,
            )
            lines.insert(0, f"password_file {pw}")
        if self.tls:
            ca_crt, ca_key = make_ca(self.dir, "ca")
            crt, key = make_server_cert(self.dir, ca_crt, ca_key)
            make_ca(self.dir, "wrongca")
            self.ca_path, self.ca_der_path = ca_crt, self.dir / "ca.der"
            self.wrong_ca_path = self.dir / "wrongca.pem"
            self.wrong_ca_der_path = self.dir / "wrongca.der"
            lines += [
                f"listener {self.tls_port} {HOST}",
                f"cafile {ca_crt}",
                f"certfile {crt}",
                f"keyfile {key}",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _listening(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self) -> Broker:
        if self.proc is not None:
            return self
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start:\n{self.log()}")
            time.sleep(0.05)
        log.info("mosquitto on %s:%s (tls %s)", HOST, self.port, self.tls_port)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._log.close()

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def env(self) -> dict[str, str]:
        """Connection details as MQTT_* environment variables for VM scripts."""
        e = {"MQTT_HOST": HOST, "MQTT_PORT": str(self.port)}
        if self.user is not None:
            e["MQTT_USER"], e["MQTT_PASS"] = self.user, self.password or ""
        if self.tls:
            e["MQTT_TLS_PORT"] = str(self.tls_port)
            e["MQTT_CA_DER"] = str(self.ca_der_path)
            e["MQTT_WRONG_CA_DER"] = str(self.wrong_ca_der_path)
        return e

    def client_args(self, tls: bool = False) -> list[str]:
        """Common mosquitto_pub/mosquitto_sub arguments for this broker."""
        a = ["-h", HOST, "-p", str(self.tls_port if tls else self.port)]
        if self.user is not None:
            a += ["-u", self.user, "-P", self.password or ""]
        if tls:
            a += ["--cafile", str(self.ca_path)]
        return a

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
