"""Bluetooth serial (NUS over BLE): the module against a bumble "phone" on the virtual radio.

The phone is a bumble Device on the launcher's second controller (HCI over TCP, bumble's
tcp-client transport), run on its own event loop in a thread so the tests stay synchronous.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bumble.core import UUID, AdvertisingData
from bumble.device import Device, Peer
from bumble.hci import Address
from bumble.keys import MemoryKeyStore
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport

from host_tests.module import ERROR, OK, Module
from host_tests.netservers import TcpEcho

NUS = UUID("6E400001-B5A3-F393-E0A9-E50E24DCCA9E")
NUS_RX = UUID("6E400002-B5A3-F393-E0A9-E50E24DCCA9E")
NUS_TX = UUID("6E400003-B5A3-F393-E0A9-E50E24DCCA9E")
GAP_DEVICE_NAME = UUID.from_16_bits(0x2A00)
ON = b"\r\n+BTEVENT:CONNECTION,ON\r\n"
OFF = b"\r\n+BTEVENT:CONNECTION,OFF\r\n"


class KeyDelegate(PairingDelegate):
    """A phone whose user types the passkey shown for the module."""

    def __init__(self, passkey: int) -> None:
        super().__init__(io_capability=PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY)
        self.passkey = passkey

    async def get_number(self) -> int | None:
        return self.passkey


class Phone:
    """A bumble central on the virtual radio, driven synchronously from the test."""

    def __init__(
        self,
        hci_port: int,
        keystore: MemoryKeyStore | None = None,
        address: str = "F0:F1:F2:F3:F4:F5",
    ) -> None:
        self.address = address  # its static random address: what the module bonds with
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.keystore = keystore or MemoryKeyStore()
        self.received = bytearray()
        self.connection: Any = None
        self.peer: Any = None
        self.call(self._open(hci_port))

    def call(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, port: int) -> None:
        self.transport = await open_transport(f"tcp-client:127.0.0.1:{port}")
        self.device = Device.with_hci(
            "phone", Address(self.address), self.transport.source, self.transport.sink
        )
        self.device.keystore = self.keystore
        await self.device.power_on()

    def close(self) -> None:
        async def shut() -> None:
            await self.transport.close()

        try:
            self.call(shut(), 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def find(self, name: str, timeout: float = 10.0) -> Address:
        async def scan() -> Address:
            found: asyncio.Future[Address] = self.loop.create_future()

            def on_adv(adv: Any) -> None:
                got = adv.data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
                if got == name and not found.done():
                    found.set_result(adv.address)

            self.device.on("advertisement", on_adv)
            await self.device.start_scanning(filter_duplicates=False)
            try:
                return await asyncio.wait_for(found, timeout)
            finally:
                self.device.remove_listener("advertisement", on_adv)
                await self.device.stop_scanning()

        return self.call(scan(), timeout + 5)

    def connect(self, address: Address, mtu: int = 247) -> None:
        async def go() -> None:
            self.connection = await self.device.connect(address)
            self.peer = Peer(self.connection)
            if mtu > 23:
                await self.peer.request_mtu(mtu)
            await self.peer.discover_services([NUS])
            await self.peer.discover_characteristics()
            self.rx = self.peer.get_characteristics_by_uuid(NUS_RX)[0]
            self.tx = self.peer.get_characteristics_by_uuid(NUS_TX)[0]

        self.call(go())

    def pair(self, passkey: int) -> None:
        self.pair_config(passkey)
        self.call(self.connection.pair())

    def pair_config(self, passkey: int) -> None:
        self.device.pairing_config_factory = lambda _c: PairingConfig(
            sc=True,
            mitm=True,
            bonding=True,
            delegate=KeyDelegate(passkey),
            # The identity is the address it connects with (its static random address): the
            # virtual controllers do not resolve private addresses.
            identity_address_type=PairingConfig.AddressType.RANDOM,
        )

    def encrypt(self) -> None:
        self.call(self.connection.encrypt())

    def subscribe(self) -> None:
        self.call(self.peer.subscribe(self.tx, self.received.extend))

    def write(self, data: bytes) -> None:
        async def go() -> None:
            step = self.connection.att_mtu - 3
            for i in range(0, len(data), step):
                await self.peer.write_value(self.rx, data[i : i + step], with_response=True)

        self.call(go(), 120)

    def wait_received(self, n: int, timeout: float = 20.0) -> bytes:
        end = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < end:
            time.sleep(0.01)
        return bytes(self.received)

    def disconnect(self) -> None:
        self.call(self.connection.disconnect())

    def pair_and_write(self, passkey: int, data: bytes) -> None:
        """Pair, then write the moment the phone's side of the pairing completes."""
        self.pair_config(passkey)

        async def go() -> None:
            await self.connection.pair()
            await self.peer.write_value(self.rx, data, with_response=True)

        self.call(go())

    def read_gatt(self, uuid: UUID) -> bytes:
        async def go() -> bytes:
            await self.peer.discover_services()
            await self.peer.discover_characteristics()
            return await self.peer.read_value(self.peer.get_characteristics_by_uuid(uuid)[0])

        return self.call(go())


def hci_port(m: Module) -> int:
    return int((m.state_dir / "bt_hci.port").read_text())


@pytest.fixture
def phone(module: Module) -> Iterator[Phone]:
    p = Phone(hci_port(module))
    try:
        yield p
    finally:
        p.close()


def discoverable(m: Module) -> str:
    m.cmd("AT+UARTE=OFF")
    assert m.cmd("AT+BTDISCOVERY=ON").endswith(OK)
    reply = m.cmd("AT+BTNAME?")
    return re.search(rb"\+BTNAME:(.*)\r\n", reply).group(1).decode()


def paired(m: Module, p: Phone, passkey: int = 123456) -> None:
    p.connect(p.find(discoverable(m)))
    p.pair(passkey)
    assert m.read_until(ON, 10).endswith(ON)
    p.subscribe()


def read_data_events(m: Module, total: int, timeout: float = 30.0) -> bytes:
    """Parse +BTEVENT:DATA,<len>,<data> events until total bytes came; nothing else allowed."""
    out = bytearray()
    end = time.monotonic() + timeout
    while len(out) < total:
        head = m.read_until(b",", max(0.1, end - time.monotonic()))
        assert head.endswith(b"\r\n+BTEVENT:DATA,"[-len(head) :]) or head == b"\r\n+BTEVENT:DATA,"
        size = m.read_until(b",", max(0.1, end - time.monotonic()))
        n = int(size[:-1])
        body = b""
        while len(body) < n + 2:
            chunk = m.read(n + 2 - len(body), max(0.1, end - time.monotonic()))
            if not chunk and time.monotonic() > end:
                raise TimeoutError(f"data event cut short after {len(out)} bytes")
            body += chunk
        assert body[-2:] == b"\r\n"
        out += body[:n]
    return bytes(out)


# ----- commands


def test_defaults_and_queries(module: Module) -> None:
    m = module
    m.cmd("AT+UARTE=OFF")
    mac = re.search(rb"\+BTMAC:([0-9a-f:]{17})\r\n", m.cmd("AT+BTMAC?")).group(1).decode()
    for form in ("AT+BTMAC", "AT+BTMAC=?"):
        assert m.cmd(form) == f"\r\n+BTMAC:{mac}\r\n".encode() + OK
    name = "EMW3239_" + mac[9:].replace(":", "").upper()
    for form in ("AT+BTNAME?", "AT+BTNAME", "AT+BTNAME=?"):
        assert m.cmd(form) == f"\r\n+BTNAME:{name}\r\n".encode() + OK
    assert m.cmd("AT+BTPASSKEY?") == b"\r\n+BTPASSKEY:123456\r\n" + OK
    assert m.cmd("AT+BTEVENT?") == b"\r\n+BTEVENT=EN\r\n" + OK
    assert m.cmd("AT+BTSTATE?") == b"\r\n+BTSTATE:DISCONNECTED\r\n" + OK
    assert m.cmd("AT+BTDISCOVERY?") == b"\r\n+BTDISCOVERY:OFF\r\n" + OK
    # Nobody connected: the data is taken all the same (never run as commands), then ERROR.
    assert m.cmd(b"AT+BTSEND=5\rAT\r\r\r") == b">" + ERROR
    assert m.cmd(b"AT+BTSEND=4097\r" + bytes(4097)) == b">" + ERROR
    # The radio stays off until discovery is asked for (lazy: no RAM spent).
    assert "bt:" not in m.console()


def test_bad_parameters_change_nothing(module: Module) -> None:
    m = module
    m.cmd("AT+UARTE=OFF")
    before = [m.cmd(q) for q in ("AT+BTNAME?", "AT+BTPASSKEY?", "AT+BTEVENT?", "AT+BTDISCOVERY?")]
    bad = [
        "AT+BTNAME=",
        "AT+BTNAME=" + "x" * 27,
        "AT+BTNAME=a,b",
        "AT+BTPASSKEY=12345",
        "AT+BTPASSKEY=1234567",
        "AT+BTPASSKEY=12345a",
        "AT+BTPASSKEY=",
        "AT+BTPASSKEY=123456,1",
        "AT+BTMAC=11:22:33:44:55:66",
        "AT+BTDISCOVERY=MAYBE",
        "AT+BTDISCOVERY=",
        "AT+BTDISCOVERY=ON,ON",
        "AT+BTEVENT=ON",
        "AT+BTEVENT=en",
        "AT+BTEVENT=",
        "AT+BTSTATE=CONNECTED",
        "AT+BTSEND",
        "AT+BTSEND=0",
        "AT+BTSEND=x",
        "AT+BTSENDRAW=1",
    ]
    for line in bad:
        assert m.cmd(line) == ERROR, line
    after = [m.cmd(q) for q in ("AT+BTNAME?", "AT+BTPASSKEY?", "AT+BTEVENT?", "AT+BTDISCOVERY?")]
    assert after == before
    assert m.cmd("AT+BTNAME=" + "n" * 26).endswith(OK)
    assert m.cmd("AT+BTNAME=My\\,Dev").endswith(OK)
    assert m.cmd("AT+BTNAME?") == b"\r\n+BTNAME:My\\,Dev\r\n" + OK
    assert m.cmd("AT+BTPASSKEY=000042").endswith(OK)
    assert m.cmd("AT+BTEVENT=DN").endswith(OK)
    # Persisted
    m.cmd("AT+REBOOT")
    m.sync()
    m.cmd("AT+UARTE=OFF")
    assert m.cmd("AT+BTNAME?") == b"\r\n+BTNAME:My\\,Dev\r\n" + OK
    assert m.cmd("AT+BTPASSKEY?") == b"\r\n+BTPASSKEY:000042\r\n" + OK
    assert m.cmd("AT+BTEVENT?") == b"\r\n+BTEVENT=DN\r\n" + OK


# ----- the phone


def test_find_pair_and_exchange(module: Module, phone: Phone) -> None:
    m = module
    assert m.cmd("AT+BTNAME=EMW-Phone-Test").endswith(OK)
    name = discoverable(m)
    assert name == "EMW-Phone-Test"
    assert m.cmd("AT+BTSTATE").endswith(b"+BTSTATE:DISCOVERABLE\r\n" + OK)
    phone.connect(phone.find(name))
    phone.pair(123456)
    assert m.read_until(ON, 10).endswith(ON)
    assert m.cmd("AT+BTSTATE").endswith(b"+BTSTATE:CONNECTED\r\n" + OK)
    phone.subscribe()
    # phone -> module: every byte value
    data = bytes(range(256)) * 2
    phone.write(data)
    assert read_data_events(m, len(data)) == data
    # module -> phone: every byte value
    m.write(b"AT+BTSEND=512\r")
    m.read_until(b">")
    m.write(data)
    assert m.read_until_any([OK, ERROR], 10).endswith(OK)
    assert phone.wait_received(512) == data
    # bye
    phone.disconnect()
    assert m.read_until(OFF, 10).endswith(OFF)
    assert m.cmd("AT+BTSTATE").endswith(b"+BTSTATE:DISCOVERABLE\r\n" + OK)
    assert m.cmd(b"AT+BTSEND=1\rx") == b">" + ERROR


def test_write_right_after_pairing_is_never_lost(module: Module, phone: Phone) -> None:
    m = module
    name = discoverable(m)
    address = phone.find(name)
    for i in range(20):
        data = f"round {i:02d} from the phone".encode()
        phone.connect(address)
        phone.pair_and_write(123456, data)
        got = m.read_until(data + b"\r\n", 10)
        assert got.endswith(ON + f"\r\n+BTEVENT:DATA,{len(data)},".encode() + data + b"\r\n"), i
        phone.disconnect()
        assert m.read_until(OFF, 10).endswith(OFF)


def test_gatt_device_name_is_the_btname(module: Module, phone: Phone) -> None:
    m = module
    assert m.cmd("AT+BTNAME=Kitchen-Sensor").endswith(OK)
    phone.connect(phone.find(discoverable(m)))
    assert phone.read_gatt(GAP_DEVICE_NAME) == b"Kitchen-Sensor"
    phone.disconnect()
    # Renamed while on: the next phone reads the new name.
    assert m.cmd("AT+BTNAME=Hall-Sensor").endswith(OK)
    phone.connect(phone.find("Hall-Sensor"))
    assert phone.read_gatt(GAP_DEVICE_NAME) == b"Hall-Sensor"


def test_wrong_passkey_is_refused(module: Module, phone: Phone) -> None:
    m = module
    phone.connect(phone.find(discoverable(m)))
    with pytest.raises(Exception):  # noqa: B017 - bumble raises its own pairing error
        phone.pair(111111)
    # Writes are refused without pairing; the module drops the link; no event.
    m.expect_silence(1.0)
    assert m.cmd("AT+BTSTATE").endswith(b"+BTSTATE:DISCOVERABLE\r\n" + OK)


def test_reconnect_with_bond(module: Module, phone: Phone) -> None:
    m = module
    paired(m, phone)
    phone.disconnect()
    m.read_until(OFF, 10)
    bonded_reconnect(m, phone, discoverable(m))  # same phone: encrypting the link is enough


def test_events_never_inside_a_response(module: Module, phone: Phone) -> None:
    m = module
    paired(m, phone)
    # Data arriving during a data phase waits for its OK.
    m.write(b"AT+BTSEND=4\r")
    m.read_until(b">")
    phone.write(b"in")
    time.sleep(0.3)
    m.write(b"out!")
    got = m.read_until(b"in\r\n", 10)
    assert got == OK + b"\r\n+BTEVENT:DATA,2,in\r\n"
    assert phone.wait_received(4) == b"out!"


def test_raw_when_events_disabled(module: Module, phone: Phone) -> None:
    m = module
    paired(m, phone)
    assert m.cmd("AT+BTEVENT=DN").endswith(OK)
    phone.write(b"\r\nraw\x00bytes")
    assert m.read_until(b"bytes", 10) == b"\r\nraw\x00bytes"
    phone.disconnect()
    m.expect_silence(1.0)  # no CONNECTION,OFF either


def test_restart_keeps_discovery(module: Module) -> None:
    m = module
    name = discoverable(m)
    m.cmd("AT+REBOOT")
    m.sync()
    m.cmd("AT+UARTE=OFF")
    assert m.cmd("AT+BTSTATE?").endswith(b"+BTSTATE:DISCOVERABLE\r\n" + OK)
    p = Phone(hci_port(m))
    try:
        assert p.find(name)
    finally:
        p.close()
    assert m.cmd("AT+BTDISCOVERY=OFF").endswith(OK)
    assert m.cmd("AT+BTSTATE?").endswith(b"+BTSTATE:DISCONNECTED\r\n" + OK)


def test_64k_each_way(module: Module, phone: Phone) -> None:
    m = module
    paired(m, phone)
    blob = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(65536))
    t = threading.Thread(target=phone.write, args=(blob,))
    t.start()
    assert read_data_events(m, len(blob), 60) == blob
    t.join()
    for i in range(0, len(blob), 4096):
        m.write(b"AT+BTSEND=4096\r")
        m.read_until(b">")
        m.write(blob[i : i + 4096])
        assert m.read_until_any([OK, ERROR], 20).endswith(OK)
    assert phone.wait_received(len(blob), 30) == blob


def test_transparent_mode_both_ways(module: Module, phone: Phone) -> None:
    m = module
    paired(m, phone)
    m.cmd("AT+UARTFOMAT=64,50")
    assert m.cmd("AT+BTSENDRAW").endswith(OK)
    m.write(b"to the phone +++ inside")
    assert phone.wait_received(23) == b"to the phone +++ inside"
    phone.write(b"\r\nfrom the phone")
    assert m.read_until(b"phone", 10) == b"\r\nfrom the phone"
    time.sleep(0.2)
    m.write(b"+++")  # alone, with silence around it: leaves transparent mode
    assert m.read_until(OK, 3) == OK
    assert m.cmd("AT").endswith(OK)


# A phone connected (the firmware waits on a ThreadSafeFlag, an object without a descriptor, in
# asyncio's poller), then five links: the poller's pollfd array grows past its first 4 slots.
# The unix port's modselect.c used to leave that flag with a wild pointer there and the VM died
# (exit -11, the launcher rebooting the module); host/start.py sizes the array first.
def test_five_links_while_a_phone_is_connected(module: Module, phone: Phone) -> None:
    m = module
    paired(m, phone)
    assert m.cmd("AT+WJAP=EMW-TEST,12345678").endswith(OK)
    got = m.read_until(b"+WEVENT:STATION_UP", 20)
    with TcpEcho() as echo:
        for lid in range(5):
            got += m.cmd(f"AT+CIPSTART={lid},tcp_client,127.0.0.1,{echo.port}")
            assert got.endswith(OK), got
        want = [f"+CIPEVENT:{lid},SERVER,CONNECTED\r\n".encode() for lid in range(5)]
        while not all(w in got for w in want):
            got += m.read_until(b",SERVER,CONNECTED\r\n", 20)
        time.sleep(0.5)  # the loop polls with the flag and the five sockets registered
        assert m.status()["boots"] == 1, m.console()
        phone.write(b"still here")
        assert read_data_events(m, 10) == b"still here"
        for lid in range(5):
            m.write(f"AT+CIPSEND={lid},4\r".encode())
            m.read_until(b">")
            m.write(b"ping")
            assert m.read_until_any([OK, ERROR], 10).endswith(OK)
            assert m.read_until(b"ping\r\n", 10).endswith(f"SOCKET,{lid},4,ping\r\n".encode())
    assert m.cmd("AT").endswith(OK)
    assert m.status()["boots"] == 1
    assert "exit" not in m.console()


# ----- bonds: kept by the firmware (_IRQ_GET_SECRET / _IRQ_SET_SECRET, data/bt_secrets.json)


def bonded_reconnect(m: Module, p: Phone, name: str) -> None:
    """The phone comes back and encrypts with its bond: no pairing, no passkey."""
    p.connect(p.find(name))
    p.encrypt()
    assert m.read_until(ON, 10).endswith(ON)
    p.subscribe()
    p.write(b"bonded")
    assert read_data_events(m, 6) == b"bonded"


def test_bond_survives_restarts_until_factory(module: Module, phone: Phone) -> None:
    m = module
    paired(m, phone)
    name = discoverable(m)
    # A fresh pairing would now fail: the reconnections below can only use the bond.
    assert m.cmd("AT+BTPASSKEY=000000").endswith(OK)
    # Power cut with the phone connected. The bond reaches flash within ~0.1 s of the pairing
    # (a task writes it, not the IRQ): a cut sooner than that would lose it, on a board too.
    time.sleep(0.5)
    m.kill()
    m.wait_booted(2)
    m.sync()
    m.cmd("AT+UARTE=OFF")
    bonded_reconnect(m, phone, name)
    phone.disconnect()
    assert m.read_until(OFF, 10).endswith(OFF)
    # AT+REBOOT
    assert m.cmd("AT+REBOOT").endswith(OK)
    m.wait_booted(3)
    m.sync()
    m.cmd("AT+UARTE=OFF")
    bonded_reconnect(m, phone, name)
    phone.disconnect()
    assert m.read_until(OFF, 10).endswith(OFF)
    # AT+FACTORY forgets every phone (data/ goes): the old keys do not encrypt any more, and
    # the phone must pair again, with the factory passkey.
    assert m.cmd("AT+FACTORY").endswith(OK)
    m.wait_booted(4)
    m.sync()
    assert discoverable(m) == name
    phone.connect(phone.find(name))
    with pytest.raises(Exception):  # noqa: B017 - bumble's HCI error: the module has no key
        phone.encrypt()
    m.expect_silence(0.5)
    assert m.cmd("AT+BTSTATE?").endswith(b"+BTSTATE:DISCOVERABLE\r\n" + OK)
    phone.pair(123456)
    assert m.read_until(ON, 10).endswith(ON)
    assert "bonds" not in m.console()  # no "bonds not saved", no "bonds file ignored"


def test_bonds_are_bounded(module: Module) -> None:
    m = module
    name = discoverable(m)
    phones = [Phone(hci_port(m), address=f"F0:F1:F2:F3:F4:{i:02X}") for i in range(9)]
    try:
        for p in phones:  # nine bonds: the oldest (the first phone's) is dropped
            p.connect(p.find(name))
            p.pair(123456)
            assert m.read_until(ON, 10).endswith(ON)
            p.disconnect()
            assert m.read_until(OFF, 10).endswith(OFF)
        time.sleep(0.5)  # on flash
        m.kill()
        m.wait_booted(2)
        m.sync()
        m.cmd("AT+UARTE=OFF")
        first, second = phones[0], phones[1]
        first.connect(first.find(name))
        with pytest.raises(Exception):  # noqa: B017 - forgotten: no key on the module
            first.encrypt()
        first.disconnect()
        m.expect_silence(0.5)
        bonded_reconnect(m, second, name)
    finally:
        for p in phones:
            p.close()


# Not discoverable and no phone: the radio goes down and its memory comes back (the bt group
# is released, firmware/registry.py); a phone connected keeps it up until it leaves. It comes
# back up with the bonds it had.
def test_radio_goes_down_when_unused(module: Module, phone: Phone) -> None:
    m = module
    m.cmd("AT+UARTE=OFF")
    before = memfree(m)
    paired(m, phone)
    assert m.cmd("AT+BTDISCOVERY=OFF").endswith(OK)  # a phone is connected: the radio stays
    assert m.cmd("AT+BTSTATE?").endswith(b"+BTSTATE:CONNECTED\r\n" + OK)
    phone.write(b"still here")
    assert read_data_events(m, 10) == b"still here"
    phone.disconnect()
    assert m.read_until(OFF, 10).endswith(OFF)
    m.expect_silence(0.5)
    assert "bt: down" in m.console()
    assert m.cmd("AT+BTSTATE?").endswith(b"+BTSTATE:DISCONNECTED\r\n" + OK)
    after = memfree(m)
    bonded_reconnect(m, phone, discoverable(m))
    assert m.cmd("AT+BTDISCOVERY=OFF").endswith(OK)
    phone.disconnect()
    assert m.read_until(OFF, 10).endswith(OFF)
    m.expect_silence(0.5)
    again = memfree(m)
    # The first start keeps the group's interned names (never freed, 0.9 KB of text) and what
    # lives as long as the BLE object, and tables keep their largest size (sys.modules): 1.4 KB
    # measured at HEAP=110k. (The BLE object, its link to the radio and its reader task are
    # the stand-ins' share, made before the firmware's heap: on the board they are two words
    # and NimBLE's.) After that, nothing accumulates.
    assert before - after < 6000 and abs(after - again) < 512, (before, after, again)


def memfree(m: Module) -> int:
    return int(re.search(rb"\+MEMFREE:(\d+)", m.cmd("AT+MEMFREE")).group(1))
