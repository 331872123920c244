"""Run host_tests/vm/test_umqtt.py on the MicroPython VM against a real Mosquitto broker.

mosquitto_sub checks what the VM publishes on t/out/#; mosquitto_pub feeds the VM when it
prints "READY <step>" (it then waits for a line on stdin).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mosquitto import Broker, have_mosquitto

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
SCRIPT = ROOT / "host_tests" / "vm" / "test_umqtt.py"
BIN = bytes(range(256))

pytestmark = pytest.mark.skipif(
    not have_mosquitto() or not shutil.which("mosquitto_sub"), reason="mosquitto not installed"
)


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path, user="user", password="secret", tls=True) as b:
        yield b


def vm_env(broker: Broker) -> dict[str, str]:
    env = dict(os.environ, **broker.env())
    env["MICROPYPATH"] = ":".join([str(ROOT / "host" / "board"), str(ROOT / "lib"), ".frozen"])
    return env


def pub(broker: Broker, topic: str, qos: int, *, msg: str | None = None, f: Path | None = None):
    src = ["-m", msg] if msg is not None else ["-f", str(f)]
    subprocess.run(
        ["mosquitto_pub", *broker.client_args(), "-t", topic, "-q", str(qos), *src],
        check=True,
        timeout=10,
    )


def start_sub(broker: Broker, topic: str, count: int) -> subprocess.Popen:
    """mosquitto_sub at QoS 2 printing '<topic> <qos> <hex>' lines; returns once subscribed."""
    p = subprocess.Popen(
        ["mosquitto_sub", *broker.client_args(), "-i", "checker", "-t", topic, "-q", "2",
         "-C", str(count), "-W", "60", "-F", "%t %q %x"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while "SUBACK to checker" not in broker.log():
        assert time.monotonic() < deadline, broker.log()
        time.sleep(0.05)
    return p


def test_umqtt_vm(broker, tmp_path):
    binfile = tmp_path / "bin"
    binfile.write_bytes(BIN)
    bigfile = tmp_path / "big"
    bigfile.write_bytes(b"0123456789" * 300)
    sub = start_sub(broker, "t/out/#", 6)
    vm = subprocess.Popen(
        [str(MICROPYTHON), "-X", "heapsize=110k", str(SCRIPT)],
        cwd=ROOT,
        env=vm_env(broker),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = []
    try:
        for line in vm.stdout:
            out.append(line)
            if line.startswith("READY in"):
                pub(broker, "t/in/0", 0, msg="m0")
                pub(broker, "t/in/1", 1, msg="m1")
                pub(broker, "t/in/2", 2, msg="m2")
                pub(broker, "t/in/bin", 2, f=binfile)
                pub(broker, "t/in/big", 1, f=bigfile)
            elif line.startswith("READY unsub"):
                pub(broker, "t/in/after", 1, msg="late")
                pub(broker, "t/mark", 1, msg="x")
            else:
                continue
            vm.stdin.write("go\n")
            vm.stdin.flush()
        rc = vm.wait(60)
    finally:
        if vm.poll() is None:
            vm.kill()
    text = "".join(out)
    assert rc == 0 and text.rstrip().endswith("OK"), text
    assert "auth refused" in text and "tls wrong CA" in text, text
    print(text)

    got, _ = sub.communicate(timeout=30)
    lines = sorted(got.splitlines())
    assert lines == sorted(
        [
            f"t/out/s0 0 {b'hello0'.hex()}",
            f"t/out/s1 1 {b'hello1'.hex()}",
            f"t/out/q2 2 {b'two'.hex()}",
            f"t/out/bin 1 {BIN.hex()}",
            f"t/out/will 1 {b'gone'.hex()}",
            f"t/out/tls 1 {b'secure'.hex()}",
        ]
    ), got


def test_broker_restart_keeps_port(tmp_path):
    b = Broker(tmp_path).start()
    try:
        port = b.port
        b.restart()
        assert b.port == port
        subprocess.run(["mosquitto_pub", *b.client_args(), "-t", "a", "-m", "x"], check=True)
    finally:
        b.stop()
