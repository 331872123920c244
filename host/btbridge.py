"""The virtual Bluetooth radio: Google's bumble, in the launcher, behind host/board/bluetooth.py.

Two kinds of client reach it on 127.0.0.1:

- The firmware (MicroPython, host/board/bluetooth.py) connects to the *firmware port*. Each
  connection is one power-on of the board's radio: a bumble Controller on the shared LocalLink
  and a bumble Device (host stack: GAP, GATT server, SMP) that the firmware drives through a
  small binary protocol (below). When the connection closes (reset, power cut), the radio's
  links drop as a board's would.
- "Phones" connect to the *HCI port* with bumble's `tcp-client:127.0.0.1:<port>` transport
  (bumble's apps, scripts, the tests). Each connection gets a fresh Controller on the same
  LocalLink (the second radio), speaking HCI H4 over the socket; its links drop when it closes.

Frames, both ways: u16 big-endian length of what follows, u8 op, payload.
Firmware -> bridge:
  ACTIVE     addr[6] on[1]               -> reply R_ACTIVE
  CONFIG     JSON {gap_name, mtu, bond, mitm, io, le_secure}   (gap_name: the GAP Device Name)
  ADV        JSON {interval_us (null: stop), adv, resp (hex), connectable}
  REGISTER   JSON [[svc_uuid, [[uuid, flags, [[desc_uuid, flags]...]]...]]...] -> R_REGISTER
  NOTIFY     conn u16, handle u16, indicate u8, data
  WRITE      handle u16, send_update u8, data      (gatts_write: the local value)
  DISCONNECT conn u16
  PASSKEY    conn u16, action u8, passkey u32
  WRITE_ACK  (the firmware's IRQ handler for the last GATTS_WRITE has returned)
  SECRET     seq u16, ok u8, value      (the IRQ handler's answer to a GET/SET_SECRET IRQ)
Bridge -> firmware:
  R_ACTIVE, R_REGISTER (JSON: value handles per service, as gatts_register_services returns)
  SENT       conn u16, handle u16, indicate u8, status u8   (a NOTIFY left the stack)
  IRQ        irq u8, payload as the IRQ's data tuple (see host/board/bluetooth.py); the
             GET_SECRET and SET_SECRET IRQs start with a seq u16 their SECRET answer repeats

Bonds: as on the ESP32, where MicroPython's NimBLE keeps no keys and asks the application,
the module's bumble Device gets a FirmwareKeyStore: each get/update/delete is an
_IRQ_GET_SECRET / _IRQ_SET_SECRET the firmware's handler answers, so the keys live where the
firmware stores them (and go with AT+FACTORY) and nothing is kept here across power-ons.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from pathlib import Path
from typing import Any

from bumble import att, core, hci, ll
from bumble.controller import Controller
from bumble.device import AdvertisingType, Connection, Device
from bumble.gatt import GATT_DEVICE_NAME_CHARACTERISTIC, Characteristic, Descriptor, Service
from bumble.host import Host
from bumble.keys import KeyStore, PairingKeys
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport.common import AsyncPipeSink, StreamPacketSource

log = logging.getLogger("btbridge")

# Ops (firmware -> bridge)
ACTIVE, CONFIG, ADV, REGISTER, NOTIFY, WRITE, DISCONNECT, PASSKEY, WRITE_ACK, SECRET = range(1, 11)
# Ops (bridge -> firmware)
R_ACTIVE, R_REGISTER, SENT, IRQ = 0x81, 0x84, 0x85, 0x90

# MicroPython's bluetooth IRQ codes
IRQ_CENTRAL_CONNECT = 1
IRQ_CENTRAL_DISCONNECT = 2
IRQ_GATTS_WRITE = 3
IRQ_MTU_EXCHANGED = 21
IRQ_ENCRYPTION_UPDATE = 28
IRQ_GET_SECRET = 29
IRQ_SET_SECRET = 30
IRQ_PASSKEY_ACTION = 31
PASSKEY_ACTION_DISPLAY = 3
SEC_PEER = 2  # NimBLE's BLE_STORE_OBJ_TYPE_PEER_SEC: a peer's keys, keyed by its address
SECRET_TIMEOUT = 5.0
MAX_BONDS_LISTED = 32

# MicroPython's characteristic flags
F_READ, F_WRITE_NR, F_WRITE = 0x0002, 0x0004, 0x0008
F_READ_ENC, F_READ_AUTH = 0x0200, 0x0400
F_WRITE_ENC, F_WRITE_AUTH = 0x1000, 0x2000

TERMINATED = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR
TIMEOUT = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR


def frame(op: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HB", len(payload) + 1, op) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    body = await reader.readexactly(struct.unpack(">H", head)[0])
    return body[0], body[1:]


# Drop every LE link of a controller (its radio went away), telling the peers, then take it
# off the link.
def unplug(link: LocalLink, controller: Controller, reason: int = TIMEOUT) -> None:
    for connection in list(controller.le_connections.values()):
        with contextlib.suppress(Exception):
            connection.send_ll_control_pdu(ll.TerminateInd(reason))
        controller.le_connections.pop(connection.peer_address, None)
    controller.le_legacy_advertiser.stop()
    with contextlib.suppress(KeyError):
        link.remove_controller(controller)


class Link(LocalLink):
    """bumble's LocalLink, but LE data carries the sender's address on that connection.

    (LocalLink always uses the sender's random address, so a peripheral advertising with its
    public address, as the ESP32 does, could not be answered.)
    """

    def send_acl_data(self, sender_controller, destination_address, transport, data):
        if transport != core.PhysicalTransport.LE:
            return super().send_acl_data(sender_controller, destination_address, transport, data)
        connection = sender_controller.le_connections.get(destination_address)
        source = connection.self_address if connection else sender_controller.random_address
        destination = self.find_le_controller(destination_address)
        if destination is not None:
            asyncio.get_running_loop().call_soon(
                destination.on_link_acl_data, source, transport, data
            )
        return None


class WriterSink:
    """A controller's HCI output, H4-framed, to a phone's socket."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def on_packet(self, packet: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(packet)


class Delegate(PairingDelegate):
    """The module's side of pairing: the firmware supplies the passkey it displays."""

    def __init__(self, session: FirmwareSession, connection: Connection, io: int) -> None:
        super().__init__(io_capability=PairingDelegate.IoCapability(io))
        self.session = session
        self.connection = connection

    async def generate_passkey(self) -> int:
        return await self.session.ask_passkey(self.connection, PASSKEY_ACTION_DISPLAY)

    async def display_number(self, number: int, digits: int) -> None:
        pass


# A bond's key and value as the firmware sees them (opaque bytes). The key is NimBLE's
# ble_addr_t: address type u8, then the address, least significant byte first; the value
# starts with the same 7 bytes, as NimBLE's ble_store_value_sec does (so a bond listed by index
# tells whose it is), then the keys: address type u8 (0xFF: none), per key of KEY_FIELDS
# flags u8 (1 present, 2 authenticated, 4 ediv, 8 rand) and, if present, length u8 + value,
# [ediv u16], [length u8 + rand]; last link_key_type u8 (0xFF: none).
KEY_FIELDS = ("ltk", "ltk_central", "ltk_peripheral", "irk", "csrk", "link_key")


def bond_key(name: str) -> bytes:
    address = hci.Address(name)  # "/P" marks a public address, as str(Address) writes it
    return bytes([address.address_type]) + bytes(address)


def bond_name(key: bytes) -> str:
    return str(hci.Address(key[1:7], key[0]))


def pack_keys(key: bytes, keys: PairingKeys) -> bytes:
    out = bytearray(key)
    out.append(0xFF if keys.address_type is None else int(keys.address_type))
    for field in KEY_FIELDS:
        k: PairingKeys.Key | None = getattr(keys, field)
        if k is None:
            out.append(0)
            continue
        flags = 1 | (2 if k.authenticated else 0)
        flags |= (4 if k.ediv is not None else 0) | (8 if k.rand is not None else 0)
        out += bytes((flags, len(k.value))) + k.value
        if k.ediv is not None:
            out += struct.pack("<H", k.ediv)
        if k.rand is not None:
            out += bytes((len(k.rand),)) + k.rand
    out.append(0xFF if keys.link_key_type is None else keys.link_key_type)
    return bytes(out)


def unpack_keys(value: bytes) -> tuple[str, PairingKeys]:
    name = bond_name(value[:7])
    keys = PairingKeys()
    if value[7] != 0xFF:
        keys.address_type = hci.AddressType(value[7])
    i = 8
    for field in KEY_FIELDS:
        flags = value[i]
        i += 1
        if not flags & 1:
            continue
        n = value[i]
        k = PairingKeys.Key(value[i + 1 : i + 1 + n], bool(flags & 2))
        i += 1 + n
        if flags & 4:
            (k.ediv,) = struct.unpack_from("<H", value, i)
            i += 2
        if flags & 8:
            n = value[i]
            k.rand = value[i + 1 : i + 1 + n]
            i += 1 + n
        setattr(keys, field, k)
    if value[i] != 0xFF:
        keys.link_key_type = value[i]
    return name, keys


class FirmwareKeyStore(KeyStore):
    """bumble's bond store, kept by the firmware: every call is a secret IRQ it answers."""

    def __init__(self, session: FirmwareSession) -> None:
        self.session = session

    async def get(self, name: str) -> PairingKeys | None:
        key = bond_key(name)
        ok, value = await self.session.secret(
            IRQ_GET_SECRET, struct.pack(">BHB", SEC_PEER, 0, 1) + key
        )
        if not ok:
            return None
        try:
            return unpack_keys(value)[1]
        except (IndexError, ValueError, struct.error):
            log.warning("bt bridge: the firmware's bond for %s is damaged", name)
            return None

    async def update(self, name: str, keys: PairingKeys) -> None:
        key = bond_key(name)
        value = pack_keys(key, keys)
        ok, _ = await self.session.secret(
            IRQ_SET_SECRET, struct.pack(">BB", SEC_PEER, len(key)) + key + b"\x01" + value
        )
        if not ok:  # bumble logs it; the link stays up without a bond, as NimBLE's
            raise RuntimeError(f"the firmware did not store the bond of {name}")

    async def delete(self, name: str) -> None:
        key = bond_key(name)
        await self.session.secret(
            IRQ_SET_SECRET, struct.pack(">BB", SEC_PEER, len(key)) + key + b"\x00"
        )

    async def get_all(self) -> list[tuple[str, PairingKeys]]:
        out = []
        for i in range(MAX_BONDS_LISTED):  # by index, as NimBLE walks its bonds
            ok, value = await self.session.secret(
                IRQ_GET_SECRET, struct.pack(">BHB", SEC_PEER, i, 0)
            )
            if not ok:
                break
            with contextlib.suppress(IndexError, ValueError, struct.error):
                out.append(unpack_keys(value))
        return out


class FirmwareSession:
    """One power-on of the module's radio: a controller and a bumble Device it drives."""

    def __init__(self, bridge: BtBridge, reader, writer) -> None:
        self.bridge = bridge
        self.reader = reader
        self.writer = writer
        self.controller: Controller | None = None
        self.device: Device | None = None
        self.cfg: dict[str, Any] = {"mtu": 23, "bond": True, "mitm": False, "io": 3}
        self.cfg["le_secure"] = True
        self.values: dict[int, bytes] = {}  # local values of the firmware's characteristics
        self.write_acks: asyncio.Queue[None] = asyncio.Queue()
        self.passkeys: dict[int, asyncio.Future[int]] = {}
        self.secrets: dict[int, asyncio.Future[tuple[bool, bytes]]] = {}
        self.secret_seq = 0
        self.tx_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.outbox: asyncio.Queue[tuple[int, int, int, bytes]] = asyncio.Queue()
        self.spawn(self.sender())

    def send(self, op: int, payload: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(op, payload))

    def irq(self, code: int, payload: bytes = b"") -> None:
        self.send(IRQ, bytes([code]) + payload)

    # Requests are handled in order by worker(); SECRET answers are taken at once, as the
    # request waiting for one may be what holds the queue (ACTIVE: bumble's power_on lists
    # the bonds).
    async def run(self) -> None:
        inbox: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.spawn(self.worker(inbox))
        try:
            while True:
                op, payload = await read_frame(self.reader)
                if op == SECRET:
                    self.answer(payload)
                else:
                    inbox.put_nowait((op, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.close()

    async def worker(self, inbox: asyncio.Queue[tuple[int, bytes]]) -> None:
        while True:
            op, payload = await inbox.get()
            try:
                await self.handle(op, payload)
            except Exception:  # a bad request must not take the radio down
                log.exception("bt bridge: op %d failed", op)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for f in self.passkeys.values():
            if not f.done():
                f.cancel()
        for f in self.secrets.values():
            if not f.done():
                f.set_result((False, b""))  # the radio is off: nothing stored, nothing found
        if self.controller is not None:
            unplug(self.bridge.link, self.controller)
            self.controller = None
        self.writer.close()

    def spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def handle(self, op: int, p: bytes) -> None:
        if op == ACTIVE:
            await self.activate(p[:6], bool(p[6]))
            self.send(R_ACTIVE)
        elif op == CONFIG:
            self.cfg.update(json.loads(p))
            if self.device is not None:
                self.device.gatt_server.max_mtu = max(23, int(self.cfg["mtu"]))
                self.name_device(self.device)
        elif op == ADV:
            await self.advertise(json.loads(p))
        elif op == REGISTER:
            self.send(R_REGISTER, json.dumps(self.register(json.loads(p))).encode())
        elif op == NOTIFY:
            conn, handle, indicate = struct.unpack_from(">HHB", p)
            self.outbox.put_nowait((conn, handle, indicate, p[5:]))
        elif op == WRITE:
            handle, _update = struct.unpack_from(">HB", p)
            self.values[handle] = p[3:]
        elif op == DISCONNECT:
            (conn,) = struct.unpack_from(">H", p)
            c = self.device.connections.get(conn) if self.device else None
            if c is not None:
                self.spawn(c.disconnect(TERMINATED))
        elif op == PASSKEY:
            conn, _action, key = struct.unpack_from(">HBI", p)
            f = self.passkeys.pop(conn, None)
            if f is not None and not f.done():
                f.set_result(key)
        elif op == WRITE_ACK:
            self.write_acks.put_nowait(None)

    def answer(self, p: bytes) -> None:
        seq, ok = struct.unpack_from(">HB", p)
        f = self.secrets.pop(seq, None)
        if f is not None and not f.done():
            f.set_result((bool(ok), p[3:]))

    # Ask the firmware's IRQ handler for a secret (GET_SECRET) or to store one (SET_SECRET):
    # (True, value) or (True, b"") on success, (False, b"") when it said no (None, False) or
    # did not answer (radio off, firmware gone).
    async def secret(self, code: int, payload: bytes) -> tuple[bool, bytes]:
        if self.writer.is_closing():
            return False, b""
        self.secret_seq = seq = (self.secret_seq + 1) & 0xFFFF
        f = asyncio.get_running_loop().create_future()
        self.secrets[seq] = f
        self.irq(code, struct.pack(">H", seq) + payload)
        try:
            return await asyncio.wait_for(f, SECRET_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("bt bridge: the firmware did not answer secret IRQ %d", code)
            return False, b""
        finally:
            self.secrets.pop(seq, None)

    async def activate(self, addr: bytes, on: bool) -> None:
        if self.controller is not None:
            unplug(self.bridge.link, self.controller)
            self.controller = self.device = None
        if not on:
            return
        text = ":".join(f"{b:02X}" for b in addr)
        address = hci.Address(text, hci.Address.PUBLIC_DEVICE_ADDRESS)
        self.controller = Controller("module", link=self.bridge.link, public_address=address)
        host = Host(self.controller, AsyncPipeSink(self.controller))
        dev = Device(address=address, host=host)
        self.name_device(dev)
        dev.keystore = FirmwareKeyStore(self)
        dev.gatt_server.max_mtu = max(23, int(self.cfg["mtu"]))
        dev.pairing_config_factory = lambda c: PairingConfig(
            sc=bool(self.cfg.get("le_secure")),
            mitm=bool(self.cfg.get("mitm")),
            bonding=bool(self.cfg.get("bond")),
            delegate=Delegate(self, c, int(self.cfg.get("io", 3))),
        )
        dev.on(dev.EVENT_CONNECTION, self.on_connection)
        self.device = dev
        await dev.power_on()

    # config(gap_name=...): NimBLE's GAP service Device Name (ble_svc_gap_device_name_set),
    # what a phone reads from 0x2A00; the ESP32 build's default is "MPY ESP32".
    def name_device(self, dev: Device) -> None:
        dev.name = self.cfg.get("gap_name") or "MPY ESP32"
        for a in dev.gatt_server.attributes:
            if isinstance(a, Characteristic) and a.uuid == GATT_DEVICE_NAME_CHARACTERISTIC:
                a.value = dev.name.encode()

    async def advertise(self, a: dict[str, Any]) -> None:
        dev = self.device
        if dev is None:
            return
        if dev.is_advertising:
            await dev.stop_advertising()
        if a.get("interval_us") is None:
            return
        kind = (
            AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE
            if a.get("connectable", True)
            else AdvertisingType.UNDIRECTED_SCANNABLE
        )
        ms = max(20.0, a["interval_us"] / 1000)
        await dev.start_advertising(
            advertising_type=kind,
            own_address_type=hci.OwnAddressType.PUBLIC,
            advertising_data=bytes.fromhex(a.get("adv") or ""),
            scan_response_data=bytes.fromhex(a.get("resp") or ""),
            advertising_interval_min=ms,
            advertising_interval_max=ms,
        )

    # Build the GATT database as NimBLE would, and return the value handles in the order
    # gatts_register_services does: per service, per characteristic its value then its
    # descriptors.
    def register(self, services: list) -> list[list[int]]:
        dev = self.device
        built = []
        for svc_uuid, chars in services:
            cs = []
            for uuid, flags, descs in chars:
                c = Characteristic(
                    uuid, flags & 0xFF, self.permissions(flags), self.value_of(flags)
                )
                c.descriptors = [
                    Descriptor(d_uuid, self.permissions(d_flags), self.value_of(d_flags))
                    for d_uuid, d_flags in descs
                ]
                cs.append(c)
            built.append((Service(svc_uuid, cs), cs))
        handles = []
        for svc, cs in built:
            dev.add_service(svc)
            row = []
            for c in cs:
                row.append(c.handle)
                row.extend(d.handle for d in c.descriptors)
            handles.append(row)
        return handles

    @staticmethod
    def permissions(flags: int) -> int:
        p = 0
        if flags & (F_READ | F_READ_ENC | F_READ_AUTH):
            p |= att.Attribute.READABLE
        if flags & (F_WRITE | F_WRITE_NR | F_WRITE_ENC | F_WRITE_AUTH):
            p |= att.Attribute.WRITEABLE
        if flags & F_READ_ENC:
            p |= att.Attribute.READ_REQUIRES_ENCRYPTION
        if flags & F_READ_AUTH:
            p |= att.Attribute.READ_REQUIRES_AUTHENTICATION
        if flags & F_WRITE_ENC:
            p |= att.Attribute.WRITE_REQUIRES_ENCRYPTION
        if flags & F_WRITE_AUTH:
            p |= att.Attribute.WRITE_REQUIRES_AUTHENTICATION
        return p

    def value_of(self, _flags: int) -> att.AttributeValue:
        holder: dict[str, int] = {}

        def read(_conn: Connection) -> bytes:
            return self.values.get(holder.get("h", 0), b"")

        # NimBLE copies the value, calls the firmware's IRQ handler (ESP32: synchronously,
        # the stack's task waits for it), then answers the write: so does the bridge.
        async def write(conn: Connection, value: bytes) -> None:
            async with self.tx_lock:
                handle = holder["h"]
                self.values[handle] = bytes(value)
                while not self.write_acks.empty():
                    self.write_acks.get_nowait()
                self.irq(IRQ_GATTS_WRITE, struct.pack(">HH", conn.handle, handle) + value)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.write_acks.get(), 5)

        v = att.AttributeValue(read, write)
        v.holder = holder  # type: ignore[attr-defined]
        return v

    def on_connection(self, c: Connection) -> None:
        # Fill in each attribute's own handle for its value callbacks.
        for a in self.device.gatt_server.attributes:
            holder = getattr(a.value, "holder", None)
            if holder is not None:
                holder["h"] = a.handle
        addr = bytes(reversed(bytes(c.peer_address)))
        self.irq(
            IRQ_CENTRAL_CONNECT, struct.pack(">HB", c.handle, c.peer_address.address_type) + addr
        )

        def on_disconnection(_reason: int) -> None:
            f = self.passkeys.pop(c.handle, None)
            if f is not None and not f.done():
                f.cancel()
            self.irq(
                IRQ_CENTRAL_DISCONNECT,
                struct.pack(">HB", c.handle, c.peer_address.address_type) + addr,
            )

        def on_mtu(*_: Any) -> None:
            self.irq(IRQ_MTU_EXCHANGED, struct.pack(">HH", c.handle, c.att_mtu))

        def on_security(*_: Any) -> None:
            bonded = bool(c.authenticated and self.cfg.get("bond"))
            self.irq(
                IRQ_ENCRYPTION_UPDATE,
                struct.pack(
                    ">HBBBB",
                    c.handle,
                    int(bool(c.is_encrypted)),
                    int(bool(c.authenticated)),
                    int(bonded),
                    16 if c.is_encrypted else 0,
                ),
            )

        # NimBLE reports a pairing's ENCRYPTION_UPDATE once the keys are distributed and stored
        # (SET_SECRET first); bumble's encryption change comes before the key distribution:
        # during a pairing it waits for the pairing's end.
        pairing = [False]

        def on_pairing_start() -> None:
            pairing[0] = True

        def on_pairing_end(*_: Any) -> None:
            pairing[0] = False
            on_security()

        def on_encryption(*_: Any) -> None:
            if not pairing[0]:
                on_security()

        c.on(c.EVENT_DISCONNECTION, on_disconnection)
        c.on(c.EVENT_CONNECTION_ATT_MTU_UPDATE, on_mtu)
        c.on(c.EVENT_CONNECTION_ENCRYPTION_CHANGE, on_encryption)
        c.on(c.EVENT_PAIRING_START, on_pairing_start)
        c.on(c.EVENT_PAIRING, on_pairing_end)
        c.on(c.EVENT_PAIRING_FAILURE, on_pairing_end)

    async def ask_passkey(self, c: Connection, action: int) -> int:
        f = asyncio.get_running_loop().create_future()
        self.passkeys[c.handle] = f
        self.irq(IRQ_PASSKEY_ACTION, struct.pack(">HBI", c.handle, action, 0))
        return await asyncio.wait_for(f, 30)

    # Notifications leave in the order the firmware sent them.
    async def sender(self) -> None:
        while True:
            await self.notify(*(await self.outbox.get()))

    async def notify(self, conn: int, handle: int, indicate: int, data: bytes) -> None:
        status = 0
        try:
            c = self.device.connections.get(conn) if self.device else None
            attr = self.device.gatt_server.get_attribute(handle) if self.device else None
            if c is None or attr is None:
                status = 1
            elif indicate:
                await self.device.gatt_server.indicate_subscriber(c, attr, data, force=True)
            else:
                await self.device.gatt_server.notify_subscriber(c, attr, data, force=True)
        except Exception as e:  # the link went down meanwhile
            log.debug("notify failed: %r", e)
            status = 1
        self.send(SENT, struct.pack(">HHBB", conn, handle, indicate, status))


class BtBridge:
    """Both servers and the LocalLink they share."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.link = Link()
        self.fw_port = self.hci_port = 0
        self.servers: list[asyncio.base_events.Server] = []
        self.sessions: set[FirmwareSession] = set()
        self.phones = 0

    async def start(self) -> None:
        fw = await asyncio.start_server(self.on_firmware, "127.0.0.1", 0)
        phone = await asyncio.start_server(self.on_phone, "127.0.0.1", 0)
        self.servers = [fw, phone]
        self.fw_port = fw.sockets[0].getsockname()[1]
        self.hci_port = phone.sockets[0].getsockname()[1]

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for s in list(self.sessions):
            s.close()

    async def on_firmware(self, reader, writer) -> None:
        session = FirmwareSession(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def on_phone(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.phones += 1
        source = StreamPacketSource()
        # A phone of its own address (bumble's Device uses its random address for LE anyway).
        address = hci.Address(
            f"F0:00:00:00:{self.phones >> 8 & 0xFF:02X}:{self.phones & 0xFF:02X}"
        )
        controller = Controller(
            f"phone{self.phones}",
            host_source=source,
            host_sink=WriterSink(writer),
            link=self.link,
            public_address=address,
        )
        try:
            while data := await reader.read(65536):
                source.data_received(data)
        except ConnectionError:
            pass
        finally:
            unplug(self.link, controller, TERMINATED)
            writer.close()
