# Wi-Fi: the station (join, keep joined with back-off, events) and the soft AP, on
# network.WLAN. Commands are in commands/wifi.py; this is the state they act on.
import asyncio

import network
from micropython import const

from firmware import ctx, events
from firmware.wifi_reasons import ERR_NO_SSID, ERR_PASSWORD, ERR_UNKNOWN, join_error

# Station states, as AT+WJAPS names them.
DOWN = "STATION_DOWN"
CONNECTING = "CONNECTING"
UP = "STATION_UP"

_JOIN_TIMEOUT_MS = const(20000)  # drivers wait up to 20 s for STATION_UP (wire notes)
_POLL_MS = const(100)  # status polling while joining
_STALE_MS = const(3000)  # an unchanged failure status is trusted only after this long
_WATCH_MS = const(500)  # link check while up
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(30000)
_NO_ADDR = ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")


# network.AUTH_* are esp_wifi's wifi_auth_mode_t: OPEN 0, WEP 1, WPA_PSK 2, WPA2_PSK 3,
# WPA_WPA2_PSK 4 (a tuple indexed by mode, not a dict built at import).
_AUTH_NAMES = ("OPEN", "WEP", "WPA_PSK", "WPA2_PSK", "WPA_WPA2_PSK")


def auth_name(mode):
    return _AUTH_NAMES[mode] if 0 <= mode < len(_AUTH_NAMES) else "OTHER"


def mac_text(raw, sep=":"):
    return sep.join("{:02x}".format(b) for b in raw)


class Station:
    def __init__(self):
        self.wlan = network.WLAN(network.STA_IF)
        self.state = DOWN
        self.error = None  # failure code of the last attempt, None if none failed
        self.bssid = {}  # SSID -> (bssid, channel) seen by the last scan
        self._task = None

    # Start joining (AT+WJAP=, and at start-up); outcomes arrive as +WEVENT.
    def join(self):
        self.quit(announce=False)
        self._task = asyncio.create_task(self._keep())

    # Leave the AP and stop retrying (AT+WJAPQ); the last failure is history then.
    def quit(self, announce=True):
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.error = None
        was_up = self.state == UP
        if self.wlan.active():
            self.wlan.disconnect()
        self.state = DOWN
        if was_up and announce:
            events.emit("WEVENT", DOWN)

    # Join, stay joined, and rejoin with back-off when the link is lost or a join fails.
    # STATION_DOWN is announced once per loss (not once per retry).
    # A full heap ends a pass, never the keeper: it tries again after the back-off.
    async def _keep(self):
        backoff = _BACKOFF_MIN_MS
        announced = False
        while True:
            try:
                if await self._attempt():
                    self.state = UP
                    self.error = None
                    events.emit("WEVENT", UP)
                    backoff = _BACKOFF_MIN_MS
                    announced = False
                    while self.wlan.isconnected():
                        await asyncio.sleep_ms(_WATCH_MS)
                    self.error = ERR_UNKNOWN
                self.state = DOWN
                if not announced:
                    events.emit("WEVENT", DOWN)
                    announced = True
            except MemoryError:
                ctx.serial.out_of_memory("keeping the Wi-Fi link")
            await asyncio.sleep_ms(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_MS)

    async def _attempt(self):
        ssid, key = ctx.settings["sta"]
        w = self.wlan
        w.active(True)
        w.config(reconnects=0)  # no retries by the driver: _keep paces them
        w.disconnect()
        if ctx.settings["dhcp"]:
            w.ipconfig(dhcp4=True)
        else:
            ip, mask, gw, dns = ctx.settings["sta_ip"]
            w.ipconfig(addr4=(ip, mask), gw4=gw)
            if dns != _NO_ADDR[0]:  # esp-netif refuses 0.0.0.0 as a DNS server
                network.ipconfig(dns=dns)
        self.state = CONNECTING
        try:
            w.connect(ssid, key or None)
        except OSError:
            self.error = ERR_UNKNOWN
            return False
        # The ESP32 port does not clear the last failure reason on connect(): status() can
        # show the previous attempt's failure until this attempt ends. A failure is taken as
        # this attempt's when it differs from what status() said at the start, or late.
        stale = w.status()
        waited = 0
        while waited < _JOIN_TIMEOUT_MS:
            if w.isconnected():
                return True
            status = w.status()
            error = join_error(status)
            if error is not None and (status != stale or waited >= _STALE_MS):
                break
            await asyncio.sleep_ms(_POLL_MS)
            waited += _POLL_MS
        else:
            error = ERR_UNKNOWN
        self.error = error
        w.disconnect()
        return False

    def addresses(self):
        if self.state != UP:
            return _NO_ADDR
        return self.wlan.ifconfig()

    # Scan (blocking on the board for ~2 s, as network.WLAN.scan is); remember BSSIDs so
    # AT+WJAP? can name the AP it is joined to.
    def scan(self):
        w = self.wlan
        w.active(True)
        found = w.scan()
        found.sort(key=lambda ap: ap[3], reverse=True)  # strongest first
        self.bssid = {}
        for ap in found:
            ssid = ap[0].decode()
            if ssid not in self.bssid:
                self.bssid[ssid] = (ap[1], ap[2])
        return found


class SoftAP:
    def __init__(self):
        self.wlan = network.WLAN(network.AP_IF)

    # Start (or restart) the soft AP: a key shorter than 8 means an open AP (the spec).
    def start(self):
        ssid, key = ctx.settings["ap"]
        w = self.wlan
        w.active(True)
        if len(key) < 8:
            w.config(ssid=ssid, authmode=network.AUTH_OPEN)
        else:
            w.config(ssid=ssid, key=key, authmode=network.AUTH_WPA2_PSK)
        self.apply_ip()
        events.emit("WEVENT", "AP_UP")

    # The soft AP's address. Its DNS is the one its DHCP server offers to phones, not the
    # resolver the station uses (esp-netif keeps them apart).
    def apply_ip(self):
        if self.wlan.active():
            ip, mask, gw = ctx.settings["ap_ip"]
            self.wlan.ifconfig((ip, mask, gw, ip))

    def stop(self):
        if self.wlan.active():
            self.wlan.active(False)
            events.emit("WEVENT", "AP_DOWN")

    def up(self):
        return self.wlan.active()


station = None
softap = None


# Bring up the radio as stored: rejoin the AP, restart the soft AP.
def start():
    global station, softap
    station = Station()
    softap = SoftAP()
    if ctx.settings["ap_on"] and ctx.settings["ap"][0]:
        softap.start()
    if ctx.settings["sta_on"] and ctx.settings["sta"][0]:
        station.join()


# True when some interface can carry traffic (sockets need it, as on a board).
def online():
    return station.state == UP or softap.up()
