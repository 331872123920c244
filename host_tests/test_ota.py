"""OTA of the AT firmware (section 10) against real HTTP and HTTPS servers on 127.0.0.1.

Releases are built with tools/release.py --pc (bytecode .mpy for the virtual module) from the
repository's firmware, or from a copy whose app crashes at start. The module runs the factory
firmware (the repository's) until an update installs a tree on its flash image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tests import flashfs
from host_tests.httpserver import FileServer
from host_tests.module import ERROR, OK, REPO, Module
from host_tests.ntpserver import NtpServer

FACTORY = re.search(r'VERSION = "(.*)"', (REPO / "firmware" / "version.py").read_text())[1]
V1 = "esp32_AT_v9.0.1"
V2 = "esp32_AT_v9.0.2"
CRASH = "esp32_AT_v9.9.9"
UP = b"\r\n+WEVENT:STATION_UP\r\n"
START = b"\r\n+OTAEVENT:START\r\n"
SUCCESS = b"\r\n+OTAEVENT:SUCCESS\r\n"
IMAGE = b"\xe9" + bytes(range(256)) * 300  # 76.8 KB "MicroPython image": ESP image magic first


def release(out: Path, version: str, src: Path = REPO, image: Path | None = None) -> None:
    cmd = [sys.executable, str(REPO / "tools" / "release.py"), version, "--out", str(out)]
    cmd += ["--src", str(src), "--pc"]
    if image is not None:
        cmd += ["--image", str(image)]
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server root with V1, V2 (the repo's firmware) and CRASH (its app raises at start);
    manifest.json names V2 as the latest."""
    root = tmp_path_factory.mktemp("releases")
    bad = tmp_path_factory.mktemp("crashing")
    for sub in ("firmware", "lib"):
        if (REPO / sub).is_dir():  # lib/ holds nothing today
            shutil.copytree(REPO / sub, bad / sub, ignore=shutil.ignore_patterns("__pycache__"))
    app = bad / "firmware" / "app.py"
    app.write_text(
        app.read_text().replace("def run():\n", "def run():\n    raise RuntimeError('boom')\n")
    )
    release(root, CRASH, bad)
    release(root, V1)
    release(root, V2)
    return root


@pytest.fixture
def server(releases: Path) -> Iterator[FileServer]:
    with FileServer(releases) as srv:
        yield srv


def online(m: Module, url: str) -> None:
    assert m.cmd("AT+UARTE=OFF").endswith(OK)
    assert m.cmd(f"AT+OTAURL={url}") == OK
    assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK
    assert m.read_until(UP, timeout=10) == UP


def fwver(m: Module) -> str:
    got = m.cmd("AT+FWVER")  # events (STATION_UP after a restart) may come first
    found = re.search(rb"\r\n\+FWVER:([^\r]*)\r\n" + re.escape(OK) + rb"$", got)
    assert found, got
    return found.group(1).decode()


def wait_online(m: Module, timeout: float = 15) -> None:
    """Until the station is up again (it rejoins by itself after a restart)."""
    end = time.monotonic() + timeout
    while b"STATION_UP" not in m.cmd("AT+WJAPS").split(b"\r\n\r\nOK")[0].split(b"+WJAPS:")[-1]:
        assert time.monotonic() < end, "station not up"
        time.sleep(0.2)


def rejoin(m: Module, boots: int) -> None:
    m.wait_booted(boots, timeout=20)
    m.sync()
    m.cmd("AT+UARTE=OFF")


def update(m: Module, version: str, boots: int) -> None:
    """AT+OTASTART: OK, START, SUCCESS, then the restart into boot number `boots`."""
    assert m.cmd(f"AT+OTASTART={version}") == OK
    assert m.read_until(START, timeout=5) == START
    assert m.read_until(SUCCESS, timeout=30) == SUCCESS
    rejoin(m, boots)


def fail(m: Module, reason: str, timeout: float = 20) -> bytes:
    """Wait for +OTAEVENT:FAIL,<reason>; return AT+ERRNO's line."""
    want = f"\r\n+OTAEVENT:FAIL,{reason}\r\n".encode()
    got = m.read_until_any([want, SUCCESS], timeout=timeout)
    assert got.endswith(want), got
    errno = m.cmd("AT+ERRNO")
    assert errno.startswith(f"\r\n+ERRNO:7,OTA {reason}".encode()), errno
    return errno


def flash_edit(state_dir: Path, files: dict[str, bytes | None]) -> None:
    """Write (or remove, for None) files on a stopped module's flash image."""
    lines = ["import os", "def mk(p):", "    i = p.find('/', 1)", "    while i > 0:",
             "        try: os.mkdir(p[:i])", "        except OSError: pass",
             "        i = p.find('/', i + 1)"]  # fmt: skip
    for path, data in files.items():
        full = "/flash/" + path
        if data is None:
            lines.append(f"try: os.remove({full!r})\nexcept OSError: pass")
        else:
            lines.append(f"mk({full!r}); f = open({full!r}, 'wb'); f.write({data!r}); f.close()")
    flashfs._run(state_dir, "\n".join(lines))


@pytest.fixture
def relaunch() -> Iterator:
    """relaunch(m, files) stops module m, edits its flash, and starts a new launcher on the
    same state folder (its boot count starts again at 1); synced, echo off."""
    started: list[Module] = []

    def go(m: Module, files: dict[str, bytes | None] | None = None) -> Module:
        m.stop()
        if files:
            flash_edit(m.state_dir, files)
        n = Module(m.state_dir)
        started.append(n)
        n.sync()
        n.cmd("AT+UARTE=OFF")
        return n

    yield go
    for n in started:
        n.stop()


def otadata(m: Module) -> dict:
    try:
        return json.loads((m.state_dir / "otadata.json").read_text())
    except FileNotFoundError:
        return {}


# ----- commands and errors


def test_url_check_and_errors(module, server):
    m = module
    m.cmd("AT+UARTE=OFF")
    assert m.cmd("AT+OTAURL?") == b"\r\n+OTAURL:\r\n" + OK
    assert m.cmd(f"AT+OTASTART={V1}") == ERROR  # no server yet
    assert m.cmd("AT+OTAURL=ftp://x/") == ERROR
    assert m.cmd("AT+OTAURL=http://:80/") == ERROR
    assert m.cmd("AT+OTAURL") == b"\r\n+OTAURL:\r\n" + OK
    assert m.cmd(f"AT+OTAURL={server.url}") == OK
    assert m.cmd("AT+OTACHECK") == ERROR  # not joined to an AP
    assert b"no network" in m.cmd("AT+ERRNO")
    assert m.cmd("AT+WJAP=EMW-TEST,12345678") == OK
    assert m.read_until(UP, timeout=10) == UP
    want = f"\r\n+OTACHECK:{V2}\r\n".encode() + OK
    assert m.cmd("AT+OTACHECK", timeout=10) == want
    assert m.cmd("AT+OTACHECK?", timeout=10) == want
    assert m.cmd("AT+OTASTART=a,b") == ERROR
    assert m.cmd("AT+OTASTART=../x") == ERROR
    m.kill()  # persisted
    rejoin(m, 2)
    assert m.cmd("AT+OTAURL?") == f"\r\n+OTAURL:{server.url}\r\n".encode() + OK


# +OTACHECK shows only a version (docs/OTA.md): a server's text with a line end in it made a
# second OK that a driver takes for its next command's (found by exploratory testing), and one
# that AT+OTASTART refuses cannot be offered.
def test_check_refuses_what_is_no_version(module, tmp_path):
    m = module
    with FileServer(tmp_path) as srv:
        online(m, srv.url)
        for bad in ("a,b\r\nOK\r\n", "v" * 33, "", "../x"):
            (tmp_path / "manifest.json").write_text(json.dumps({"version": bad}))
            assert m.cmd("AT+OTACHECK", timeout=10) == ERROR, bad
            assert b"OTA MANIFEST: not a version" in m.cmd("AT+ERRNO"), bad


def test_unknown_version_and_dead_server(module, server):
    m = module
    online(m, server.url)
    assert m.cmd("AT+OTASTART=esp32_AT_v0.0.0") == OK
    assert m.read_until(START) == START
    fail(m, "HTTP")
    assert m.cmd("AT+OTAURL=http://127.0.0.1:9/") == OK  # nothing listens on port 9
    assert m.cmd(f"AT+OTASTART={V1}") == OK
    assert fail(m, "CONNECT") == b"\r\n+ERRNO:7,OTA CONNECT: ECONNREFUSED\r\n" + OK  # no repr
    assert m.cmd("AT+OTACHECK", timeout=10) == ERROR
    assert fwver(m) == FACTORY


# ----- updates


def test_update_restarts_into_new_version(module, server):
    m = module
    online(m, server.url)
    assert fwver(m) == FACTORY
    update(m, V1, 2)
    assert fwver(m) == V1
    assert m.cmd("AT+OTAURL?") == f"\r\n+OTAURL:{server.url}\r\n".encode() + OK
    assert "update in ota/a confirmed" in m.console()
    # Confirmed: it stays over power cuts (an unconfirmed one would roll back).
    m.kill()
    rejoin(m, 3)
    m.kill()
    rejoin(m, 4)
    assert fwver(m) == V1
    # And on to the next, then back down to V1 (downgrades are allowed).
    wait_online(m)  # the station joins again by itself at start
    update(m, V2, 5)
    assert fwver(m) == V2
    wait_online(m)
    update(m, V1, 6)
    assert fwver(m) == V1
    assert otadata(m) == {}  # no image in these releases: the app partitions were not touched


def test_progress_events_are_opt_in_and_persisted(module, server):
    m = module
    online(m, server.url)
    assert m.cmd("AT+OTAPROGRESS?") == b"\r\n+OTAPROGRESS:OFF\r\n" + OK
    assert m.cmd(f"AT+OTASTART={V1}") == OK
    got = m.read_until(SUCCESS, timeout=30)
    assert got.endswith(SUCCESS) and b"PROGRESS" not in got  # default drivers see nothing new
    rejoin(m, 2)
    assert m.cmd("AT+OTAPROGRESS=ON") == OK
    wait_online(m)
    assert m.cmd(f"AT+OTASTART={V2}") == OK
    got = m.read_until(SUCCESS, timeout=30)
    assert got.startswith(START), got
    steps = re.findall(rb"\r\n\+OTAEVENT:PROGRESS,(\d+)\r\n", got)
    assert [int(p) for p in steps] == list(range(10, 101, 10)), got
    rejoin(m, 3)
    assert fwver(m) == V2
    assert m.cmd("AT+OTAPROGRESS?") == b"\r\n+OTAPROGRESS:ON\r\n" + OK
    assert m.cmd("AT+OTAPROGRESS=MAYBE") == ERROR


def test_rollback_when_new_version_crashes(module, server):
    m = module
    online(m, server.url)
    update_boots = 2
    assert m.cmd(f"AT+OTASTART={CRASH}") == OK
    assert m.read_until(SUCCESS, timeout=30).endswith(SUCCESS)
    # Boot 2 runs CRASH, whose app raises before answering; boot 3 is the factory again.
    rejoin(m, update_boots + 1)
    assert fwver(m) == FACTORY
    log = m.console()
    assert "boom" in log and "did not confirm itself" in log
    m.kill()
    rejoin(m, 4)
    assert fwver(m) == FACTORY


def test_wrong_hash_refused(module, server, releases, tmp_path):
    # A copy of V1 whose manifest lists a wrong hash for one file.
    root = tmp_path / "srv"
    shutil.copytree(releases / V1, root / V1)
    man = json.loads((root / V1 / "manifest.json").read_text())
    man["files"][3]["sha256"] = "0" * 64
    (root / V1 / "manifest.json").write_text(json.dumps(man))
    with FileServer(root) as srv:
        m = module
        online(m, srv.url)
        assert m.cmd(f"AT+OTASTART={V1}") == OK
        assert m.read_until(START) == START
        assert man["files"][3]["path"].encode() in fail(m, "HASH")
    m.expect_silence(1)  # no restart
    assert fwver(m) == FACTORY
    assert m.status()["boots"] == 1


def test_full_flash_refused(module, server, releases, tmp_path):
    root = tmp_path / "srv"
    shutil.copytree(releases / V1, root / V1)
    man = json.loads((root / V1 / "manifest.json").read_text())
    man["files"][0]["size"] = 8 * 1024 * 1024  # more than the 2 MB flash
    (root / V1 / "manifest.json").write_text(json.dumps(man))
    with FileServer(root) as srv:
        m = module
        online(m, srv.url)
        assert m.cmd(f"AT+OTASTART={V1}") == OK
        fail(m, "NOSPACE")
    assert fwver(m) == FACTORY


def test_download_cut_or_stalled(module, server):
    m = module
    online(m, server.url)
    server.cut[f"{V1}/firmware/serial.mpy"] = 700
    assert m.cmd(f"AT+OTASTART={V1}") == OK
    assert b"closed after 700" in fail(m, "NETWORK")
    server.cut.clear()
    server.stall[f"{V1}/firmware/at.mpy"] = 500
    assert m.cmd(f"AT+OTASTART={V1}") == OK
    t0 = time.monotonic()
    fail(m, "TIMEOUT")
    assert 4 < time.monotonic() - t0 < 12
    assert m.status()["boots"] == 1
    assert fwver(m) == FACTORY
    server.stall.clear()
    update(m, V1, 2)  # what the failures left behind does not get in the way
    assert fwver(m) == V1


# AT+WJAPQ in the middle of a download: the station's address goes, and with it the download's
# connection (lwIP aborts it: host/board/socket.py), long before a stalled server's timeout.
def test_leaving_the_ap_ends_a_download(module, server):
    m = module
    online(m, server.url)
    server.stall[f"{V1}/firmware/at.mpy"] = 500
    assert m.cmd(f"AT+OTASTART={V1}") == OK
    assert m.read_until(START, timeout=5) == START
    t0 = time.monotonic()
    m.write(b"AT+WJAPQ\r")
    assert b"ECONNABORTED" in fail(m, "NETWORK")
    assert time.monotonic() - t0 < 3
    assert fwver(m) == FACTORY


def test_commands_answered_during_download(module, server):
    """The download runs beside the command engine: AT answers while it goes on."""
    m = module
    online(m, server.url)
    server.delay = 0.01
    assert m.cmd(f"AT+OTASTART={V1}") == OK
    assert m.read_until(START, timeout=5) == START
    for _ in range(5):
        assert m.cmd("AT") == OK
        assert m.cmd(f"AT+OTASTART={V1}") == ERROR  # one at a time
        assert b"an update is running" in m.cmd("AT+ERRNO")
    server.delay = 0
    assert m.read_until(SUCCESS, timeout=30).endswith(SUCCESS)
    rejoin(m, 2)
    assert fwver(m) == V1


def test_chunked_responses(module, server):
    """A server that sends its bodies in chunked transfer coding (RFC 9112 7.1)."""
    m = module
    online(m, server.url)
    server.chunked = True
    want = f"\r\n+OTACHECK:{V2}\r\n".encode() + OK
    assert m.cmd("AT+OTACHECK", timeout=10) == want
    server.cut[f"{V1}/firmware/serial.mpy"] = 700
    assert m.cmd(f"AT+OTASTART={V1}") == OK
    assert b"closed after 700" in fail(m, "NETWORK")
    server.cut.clear()
    update(m, V1, 2)
    assert fwver(m) == V1


# ----- HTTPS


def set_ca(m: Module, pem: bytes, relaunch) -> Module:
    """The root CA: AT+SSLCERTSET=0 if it exists, else written into the flash image."""
    m.write(b"AT+SSLCERTSET=0\r")
    got = m.read_until_any([b">", ERROR], timeout=3)
    if got.endswith(b">"):
        m.write(pem + b"\x1a")
        assert m.read_until_any([OK, ERROR]).endswith(OK)
        return m
    return relaunch(m, {"data/certs/0.pem": pem})


def test_https_verifies_server(tmp_path, releases, relaunch):
    ntp = NtpServer()  # verification needs the date: the module sets its clock once joined
    with FileServer(releases, tls=tmp_path) as srv:
        m = relaunch(Module(tmp_path / "state"))
        assert m.cmd(f"AT+SNTPCFG=+0,{ntp.address}").endswith(OK)
        online(m, srv.url)
        assert m.cmd("AT+OTACHECK", timeout=10) == ERROR  # no CA stored at all
        assert b"TLS" in m.cmd("AT+ERRNO")
        m = set_ca(m, srv.wrong_ca_pem, relaunch)
        online(m, srv.url)
        assert m.cmd("AT+OTACHECK", timeout=10) == ERROR
        assert m.cmd(f"AT+OTASTART={V1}") == OK
        fail(m, "TLS")
        m = set_ca(m, srv.ca_pem, relaunch)
        online(m, srv.url)
        assert m.cmd("AT+OTACHECK", timeout=15) == f"\r\n+OTACHECK:{V2}\r\n".encode() + OK
        boots = m.status()["boots"]
        update(m, V1, boots + 1)
        assert fwver(m) == V1
    ntp.close()


# ----- the MicroPython image (esp32.Partition stand-in)


@pytest.fixture(scope="module")
def image_releases(tmp_path_factory: pytest.TempPathFactory, releases: Path) -> Path:
    root = tmp_path_factory.mktemp("img")
    good = root / "micropython.bin"
    good.write_bytes(IMAGE)
    release(root, V1, image=good)
    crash_src = tmp_path_factory.mktemp("imgcrash")
    shutil.copytree(releases / CRASH, crash_src / CRASH)
    # CRASH with the image: same tree, the manifest gains the image entry.
    shutil.copyfile(good, crash_src / CRASH / "micropython.bin")
    man = json.loads((crash_src / CRASH / "manifest.json").read_text())
    man["image"] = json.loads((root / V1 / "manifest.json").read_text())["image"]
    (crash_src / CRASH / "manifest.json").write_text(json.dumps(man))
    shutil.copytree(crash_src / CRASH, root / CRASH)
    bad = root / "bad" / "micropython.bin"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00" + IMAGE[1:])
    release(root, V2, image=bad)
    return root


def flashed(state: Path, image: str) -> Module:
    """A new module whose flash holds the MicroPython image `image` (the launcher's --image,
    kept in the state folder as the partition table is kept on the flash)."""
    state.mkdir(parents=True)
    (state / "image").write_text(image + "\n")
    m = Module(state)
    m.sync()
    return m


def test_image_refused_on_generic_then_tree_update(module, server, image_releases):
    """ESP32_GENERIC has one factory app: an image update fails with the reason, the module
    answers, and the next AT+OTASTART (a tree-only release) works."""
    m = module
    with FileServer(image_releases) as srv:
        online(m, srv.url)
        assert m.cmd(f"AT+OTASTART={V1}") == OK
        assert b"no OTA partition: flash ESP32_GENERIC-OTA" in fail(m, "IMAGE")
        assert m.cmd("AT") == OK
        assert m.cmd(f"AT+OTASTART={V1}") == OK  # not "an update is running"
        fail(m, "IMAGE")
    assert not (m.state_dir / "otadata.json").exists()
    assert fwver(m) == FACTORY
    assert m.cmd(f"AT+OTAURL={server.url}") == OK
    update(m, V1, 2)
    assert fwver(m) == V1


def test_image_update_and_bootloader_rollback(tmp_path, image_releases):
    with FileServer(image_releases) as srv, flashed(tmp_path / "state", "generic-ota") as m:
        online(m, srv.url)
        # An image the bootloader would not start (no ESP image magic): set_boot refuses it.
        assert m.cmd(f"AT+OTASTART={V2}") == OK
        fail(m, "IMAGE")
        assert otadata(m).get("boot", "ota_0") == "ota_0"
        assert fwver(m) == FACTORY
        # A good one: written to ota_1, booted, confirmed once it answers AT.
        update(m, V1, 2)
        assert fwver(m) == V1
        assert (m.state_dir / "part-ota_1.bin").read_bytes()[: len(IMAGE)] == IMAGE
        time.sleep(0.2)
        assert otadata(m) == {"boot": "ota_1", "state": {"ota_0": "UNDEFINED", "ota_1": "VALID"}}
        # An image + tree that never confirms: the bootloader and boot.py go back together.
        wait_online(m)
        assert m.cmd(f"AT+OTASTART={CRASH}") == OK
        assert m.read_until(SUCCESS, timeout=30).endswith(SUCCESS)
        rejoin(m, 4)  # 3 crashed on ota_0 + CRASH; 4 is ota_1 + V1 again
        assert fwver(m) == V1
        d = otadata(m)
        assert d["boot"] == "ota_1" and d["state"]["ota_0"] == "ABORTED", d


# ----- power cuts


def test_power_cut_during_update(module, server):
    """SIGKILL at many points of staging and switching: the module always comes back on one
    complete version (FWVER answers, the lazily loaded OTA group loads), and a later update
    still works."""
    m = module
    online(m, server.url)
    server.delay = 0.004  # ~1.5 s per release
    boots = 1
    current = FACTORY
    for i, delay in enumerate((0.05, 0.3, 0.6, 0.9, 1.2, 1.5, 1.7, 1.9, 2.1, 2.4)):
        target = V1 if current != V1 else V2
        assert m.cmd(f"AT+OTASTART={target}") == OK
        assert m.read_until(START) == START
        time.sleep(delay)
        m.kill()
        boots += 1
        rejoin(m, boots)
        # A kill during the restart after SUCCESS may need one more boot to settle.
        time.sleep(0.3)
        boots = m.status()["boots"]
        now = fwver(m)
        assert now in (current, target), (i, delay, now)
        assert m.cmd("AT+OTAURL?").endswith(OK)
        current = now
        wait_online(m)
    server.delay = 0
    target = V1 if current != V1 else V2
    update(m, target, boots + 1)
    assert fwver(m) == target


def test_power_cut_states_at_boot(module, server, relaunch):
    """Each state a power cut can leave on flash, written directly: boot.py picks a complete
    version every time."""
    m = module
    online(m, server.url)
    update(m, V1, 2)  # ota/current = a (V1); factory below it
    wait_online(m)
    update(m, V2, 3)  # ota/current = b (V2), ota/a keeps V1
    # Switched to a, never booted: a runs, and confirms itself once it answers AT.
    m = relaunch(m, {"ota/pending": b"a 0 - -"})
    assert fwver(m) == V1
    m = relaunch(m)
    assert flashfs.read(m.state_dir, "ota/current") == b"a"
    assert flashfs.read(m.state_dir, "ota/pending") is None
    assert fwver(m) == V1
    # Tried once, not confirmed: back to the confirmed one.
    m = relaunch(m, {"ota/current": b"b", "ota/pending": b"a 1 - -"})
    assert fwver(m) == V2
    # Confirmed, but the pending file was not removed yet: stays.
    m = relaunch(m, {"ota/current": b"a", "ota/pending": b"a 1 - -"})
    assert fwver(m) == V1
    # A half-written pointer (its temporary file) and a half-staged tree are ignored.
    m = relaunch(m, {"ota/pending.tmp": b"b 0", "ota/new/firmware/app.mpy": b"M"})
    assert fwver(m) == V1
    # A pointer to a tree that is not complete: the factory version, never a broken one.
    m = relaunch(m, {"ota/current": b"b", "ota/b/firmware/app.mpy": None})
    assert fwver(m) == FACTORY
