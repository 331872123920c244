# network.py: the ESP32 port's `network` module, simulated for the PC port.
# Access points, passwords and signal levels come from the world file named by $EMW_WORLD
# (format: host/WORLD.md). No threads or tasks: every state is computed from ticks_ms() when
# the API is called. Behaviour follows ports/esp32/network_wlan.c and network_common.c.
import json
import os
from time import sleep_ms, ticks_add, ticks_diff, ticks_ms

from micropython import const

STA_IF = const(0)
AP_IF = const(1)

STAT_IDLE = const(1000)
STAT_CONNECTING = const(1001)
STAT_GOT_IP = const(1010)
# Disconnect reasons from ESP-IDF v5.2 (wifi_err_reason_t), passed through by status();
# the STAT_ names are those of ports/esp32/modnetwork_globals.h at v1.24.0.
STAT_BEACON_TIMEOUT = const(200)
STAT_NO_AP_FOUND = const(201)
STAT_WRONG_PASSWORD = const(202)
STAT_ASSOC_FAIL = const(203)
STAT_HANDSHAKE_TIMEOUT = const(204)
STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY = const(210)
STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD = const(211)
STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD = const(212)
_AUTH_EXPIRE = const(2)
_ASSOC_LEAVE = const(8)  # reason after disconnect()/active(False): status() says IDLE
_4WAY_HANDSHAKE_TIMEOUT = const(15)
_CONN_FAIL = const(205)
# What a wrong key ends with (an AP's "wrong_key_reason"), and a missing AP ("noap_reason")
_WRONG_KEY_REASONS = (_4WAY_HANDSHAKE_TIMEOUT, _AUTH_EXPIRE, STAT_WRONG_PASSWORD, 204, 205)
_NOAP_REASONS = (STAT_NO_AP_FOUND, 210, 211, 212)

AUTH_OPEN = const(0)
AUTH_WEP = const(1)
AUTH_WPA_PSK = const(2)
AUTH_WPA2_PSK = const(3)
AUTH_WPA_WPA2_PSK = const(4)
AUTH_WPA2_ENTERPRISE = const(5)
AUTH_WPA3_PSK = const(6)
AUTH_WPA2_WPA3_PSK = const(7)
AUTH_WAPI_PSK = const(8)
AUTH_OWE = const(9)

MODE_11B = const(1)
MODE_11G = const(2)
MODE_11N = const(4)
MODE_LR = const(8)

# World "security" names, indexed by authmode
_SEC = ("OPEN", "WEP", "WPA", "WPA2", "WPA/WPA2", "WPA2-ENT", "WPA3", "WPA2/WPA3", "WAPI", "OWE")

_POLL_MS = const(100)  # re-check the world file at most this often
_RSSI_MIN = const(-95)  # weaker than this: out of range (not scanned, link drops)
_ASSOC_MS = const(300)  # defaults, overridable in the world (top level or per AP)
_DHCP_MS = const(100)
_NOAP_MS = const(300)
_SCAN_MS = const(30)

# STA link phases
_OFF = const(0)  # no link, no attempt under way
_ASSOC = const(1)  # attempt under way until _t
_DHCP = const(2)  # associated, waiting for an address until _t (None: never)
_UP = const(3)  # associated with an address (GOT_IP)

_ZERO = "0.0.0.0"
_MAC0 = b"\x24\x0a\xc4\x12\x34\x56"  # used when machine.unique_id() is missing

_world = {}  # last good parse of the world file
_wsig = None  # (path, inode, size, mtime) of that file
_wt = None  # ticks of the last check
_host = ["mpy-esp32", "XX"]  # hostname, country
_dns = _ZERO  # lwIP's DNS server (dns_getserver(0)), shared by every interface
_mac = None
_ifs = [None, None]
_mode = 1  # esp_wifi_get_mode(): bit 0 STA, bit 1 AP


# The world as last read; re-read when the file was replaced or changed. Before a new world
# takes over, the STA is brought up to date under the old one (changes apply from now on).
def _w():
    global _world, _wsig, _wt
    now = ticks_ms()
    if _wt is not None and ticks_diff(now, _wt) < _POLL_MS:
        return _world
    _wt = now
    p = os.getenv("EMW_WORLD")
    if not p:
        return _world
    try:
        st = os.stat(p)
        sig = (p, st[1], st[6], st[8])
        if sig != _wsig:
            with open(p) as f:
                w = json.load(f)
            if _ifs[STA_IF]:
                _ifs[STA_IF]._advance(now)
            _world, _wsig = w, sig
    except (OSError, ValueError):
        pass  # missing or half-written: keep the last good world
    except MemoryError:
        pass  # the chip's radio needs no Python heap: a full one leaves the world for later
    return _world


def _opt(ap, k, d):
    return ap.get(k, _world.get(k, d))


# A reason from the world, if it is one the chip gives for that failure
def _reason(where, k, allowed):
    r = where.get(k, allowed[0])
    return r if r in allowed else allowed[0]


def _bmac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def _auth(ap):
    s = ap.get("security", "OPEN")
    return _SEC.index(s) if s in _SEC else AUTH_WPA2_PSK


def _audible(ap):
    return ap.get("present", True) and ap.get("rssi", -50) >= _RSSI_MIN


# Would this AP accept this key? An open AP takes any key (ESP-IDF's default threshold is OPEN)
def _key_ok(ap, key):
    return _auth(ap) == AUTH_OPEN or key == ap.get("password", "")


# The strongest audible AP with this ssid (and bssid, if set)
def _find(ssid, bssid):
    best = None
    for ap in _world.get("aps", ()):
        if ap.get("ssid") != ssid or not _audible(ap):
            continue
        if bssid and _bmac(ap.get("bssid", "")) != bssid:
            continue
        if best is None or ap.get("rssi", -50) > best.get("rssi", -50):
            best = ap
    return best


def _mask(bits):
    m = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return "%d.%d.%d.%d" % (m >> 24, (m >> 16) & 255, (m >> 8) & 255, m & 255)


def hostname(name=None):
    if name is None:
        return _host[0]
    if len(name) > 32:
        raise ValueError
    _host[0] = name


def country(code=None):
    if code is None:
        return _host[1]
    if len(code) != 2:
        raise ValueError
    _host[1] = code


# Module-level ipconfig: only 'dns' on the ESP32 port
def ipconfig(*args, **kw):
    global _dns
    if not kw:
        if len(args) != 1:
            raise TypeError("must query one param")
        if args[0] != "dns":
            raise ValueError("unexpected key")
        return _dns
    if args:
        raise TypeError("can't specify pos and kw args")
    for k, v in kw.items():
        if k != "dns":
            raise ValueError("unexpected key")
        _dns = v


# An interface has an address: the STA got one, or the AP is active (host/board/socket.py lets
# DNS work only then, as lwIP has no resolver before).
def _up():
    sta, ap = _ifs
    return bool(ap and ap._act) or bool(sta and sta._act and sta.isconnected())


def phy_mode(mode=None):
    return None


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF
    SEC_OPEN = AUTH_OPEN
    SEC_WEP = AUTH_WEP
    SEC_WPA = AUTH_WPA_PSK
    SEC_WPA2 = AUTH_WPA2_PSK
    SEC_WPA_WPA2 = AUTH_WPA_WPA2_PSK
    SEC_WPA2_ENT = AUTH_WPA2_ENTERPRISE
    SEC_WPA3 = AUTH_WPA3_PSK
    SEC_WPA2_WPA3 = AUTH_WPA2_WPA3_PSK
    SEC_WAPI = AUTH_WAPI_PSK
    SEC_OWE = AUTH_OWE
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2
    PROTOCOL_DEFAULT = 7
    _phase = _OFF

    # The STA's link phase. Leaving _UP, the station loses its address, and with it its TCP
    # connections (host/board/socket.py sta_down).
    @property
    def _ph(self):
        return self._phase

    @_ph.setter
    def _ph(self, ph):
        if self._phase == _UP and ph != _UP:
            import socket

            socket.sta_down()
        self._phase = ph

    # One object per interface, as on the ESP32
    def __new__(cls, if_id=STA_IF):
        global _mac
        if if_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        o = _ifs[if_id]
        if o is None:
            if _mac is None:
                try:
                    import machine

                    _mac = (bytes(machine.unique_id()) + _MAC0)[:6]
                except (ImportError, AttributeError):
                    _mac = _MAC0
            o = object.__new__(cls)
            o._if = if_id
            o._act = False
            o._mac = _mac if if_id == STA_IF else _mac[:5] + bytes(((_mac[5] + 1) & 255,))
            # ssid, key, authmode, channel, hidden, max_clients, pm, txpower
            o._cfg = {"ssid": "", "key": "", "auth": 0, "chan": 1, "hidden": False}
            o._cfg.update({"maxc": 4, "pm": 1, "txpower": 20.0})
            if if_id == AP_IF:
                o._cfg["ssid"] = "ESP_%02X%02X%02X" % tuple(o._mac[3:])
                o._ip = ("192.168.4.1", "255.255.255.0", "192.168.4.1")
                o._offer_dns = _ZERO  # the DNS server its DHCP server offers
                o._pub = None  # last .ap.json text written
            else:
                o._ip = (_ZERO, _ZERO, _ZERO)  # static address when DHCP is off
                o._dhcp = True
                o._bssid = None  # connect(bssid=...)
                o._req = False  # connect() requested, not disconnect()ed
                o._ph = _OFF
                o._t = 0  # end of the current phase
                o._reason = 0  # last disconnect reason, 0 = none
                o._conf = 0  # allowed attempts (reconnects + 1), 0 = unlimited
                o._tries = 0
                o._ap = None  # bssid of the AP we are associated with
                o._lease = None
            _ifs[if_id] = o
        return o

    def active(self, on=None):
        if on is not None:
            on = bool(on)
            if self._if == STA_IF and not on and self._act:
                if self._ph != _OFF:
                    self._reason = _ASSOC_LEAVE
                self._ph = _OFF
                self._req = False
            if self._if == STA_IF and on and not self._act:
                self._tries = 0  # STA_START
            self._act = on
            self._set_mode()
            if self._if == AP_IF:
                self._publish()
        return self._act

    # network_wlan_active: esp_wifi_set_mode() unless no interface stays on (then only stop)
    def _set_mode(self):
        global _mode
        m = sum(1 << i for i in (STA_IF, AP_IF) if _ifs[i] and _ifs[i]._act)
        if m:
            _mode = m

    def _need(self, if_id):
        if self._if != if_id:
            raise OSError("STA required" if if_id == STA_IF else "AP required")

    def _started(self):
        if not (_ifs[0] and _ifs[0]._act) and not (_ifs[1] and _ifs[1]._act):
            raise OSError("Wifi Not Started")
        if not self._act:
            raise OSError("Wifi Invalid Mode")

    def connect(self, ssid=None, key=None, *, bssid=None):
        self._need(STA_IF)
        if ssid is not None or key is not None or bssid is not None:
            if bssid is not None and len(bssid) != 6:
                raise ValueError
            if isinstance(ssid, bytes):
                ssid = ssid.decode()
            if isinstance(key, bytes):
                key = key.decode()
            self._cfg["ssid"] = (ssid or "")[:32]
            self._cfg["key"] = (key or "")[:64]
            self._bssid = bssid
        self._started()
        self._tick()
        if self._ph != _OFF:
            # New config while linked: the driver leaves first (reason ASSOC_LEAVE)
            self._reason = _ASSOC_LEAVE
        self._tries = 0
        self._req = True
        self._attempt(ticks_ms())

    # Disconnects the STA, whichever interface it is called on (esp_wifi_disconnect)
    def disconnect(self):
        s = WLAN(STA_IF)
        s._started()
        s._req = False
        s._tick()
        if s._ph != _OFF:
            s._reason = _ASSOC_LEAVE
        s._ph = _OFF

    # Start one association attempt at t0. Missed retries are replayed one by one (against
    # the world as it is now); after a long silence the oldest are skipped.
    def _attempt(self, t0):
        ap = _find(self._cfg["ssid"], self._bssid)
        dt = max(1, _opt(ap, "assoc_ms", _ASSOC_MS) if ap else _world.get("noap_ms", _NOAP_MS))
        if ticks_diff(ticks_ms(), t0) > 16 * dt:
            t0 = ticks_add(ticks_ms(), -dt)
        self._ph = _ASSOC
        self._t = ticks_add(t0, dt)

    # STA_DISCONNECTED at time t: record why, then retry as the ESP32 port's handler does
    def _drop(self, reason, t):
        self._reason = reason
        self._ph = _OFF
        if self._req and self._act:
            if self._conf:
                self._tries += 1
                if self._tries >= self._conf:
                    return
            self._attempt(t)

    # The attempt that ended at t: judge it against the world as it is now
    def _assoc_done(self, t):
        ap = _find(self._cfg["ssid"], self._bssid)
        if ap is None:
            return self._drop(_reason(_world, "noap_reason", _NOAP_REASONS), t)
        refuse = ap.get("refuse")
        if refuse == "assoc":
            return self._drop(STAT_ASSOC_FAIL, t)
        if refuse == "handshake":
            return self._drop(STAT_HANDSHAKE_TIMEOUT, t)
        if not _key_ok(ap, self._cfg["key"]):
            return self._drop(_reason(ap, "wrong_key_reason", _WRONG_KEY_REASONS), t)
        self._ap = ap.get("bssid", "")
        self._ph = _DHCP
        if refuse == "dhcp":
            self._t = None  # no DHCP server answers: CONNECTING for ever
        else:
            self._t = ticks_add(t, _opt(ap, "dhcp_ms", _DHCP_MS) if self._dhcp else 0)

    # GOT_IP: take a lease from the AP's DHCP server (unless the address is static)
    def _got_ip(self, ap):
        global _dns
        self._ph = _UP
        self._reason = 0
        if self._dhcp:
            d = ap.get("dhcp", {})
            ip = d.get("ip", d.get("pool", "192.168.1.100"))
            gw = d.get("gateway", ip[: ip.rfind(".")] + ".1")
            self._lease = (ip, d.get("mask", "255.255.255.0"), gw)
            _dns = d.get("dns", gw)

    # The AP we are associated with, if it is still there and still accepts our key
    def _link(self):
        for ap in _world.get("aps", ()):
            if ap.get("bssid", "") == self._ap:
                ok = _audible(ap) and ap.get("ssid") == self._cfg["ssid"]
                return ap if ok and _key_ok(ap, self._cfg["key"]) else None
        return None

    # Bring the STA state up to date with the clock and the world
    def _tick(self):
        if self._if == STA_IF:
            _w()
            self._advance(ticks_ms())

    # Play the STA's timeline forward to now under the current _world
    def _advance(self, now):
        for _ in range(40):  # bounded; each pass moves at least one phase on
            ph = self._ph
            if ph >= _DHCP:
                ap = self._link()
                if ap is None:
                    self._drop(STAT_BEACON_TIMEOUT, now)
                    continue
                if ph == _DHCP and self._t is not None and ticks_diff(now, self._t) >= 0:
                    self._got_ip(ap)
            elif ph == _ASSOC and ticks_diff(now, self._t) >= 0:
                self._assoc_done(self._t)
                continue
            break

    def status(self, param=None):
        if param is None:
            if self._if != STA_IF:
                return None
            self._tick()
            r = self._reason
            if self._ph == _UP:
                return STAT_GOT_IP
            if r == STAT_NO_AP_FOUND or 210 <= r <= 212:
                return r
            if r in (STAT_WRONG_PASSWORD, _CONN_FAIL):
                return STAT_WRONG_PASSWORD
            if r == _ASSOC_LEAVE:
                return STAT_IDLE
            if self._req and (self._conf == 0 or self._tries < self._conf):
                return STAT_CONNECTING
            return r or STAT_IDLE
        if param == "stations":
            self._need(AP_IF)
            return [(_bmac(s["mac"]), s.get("ip")) for s in self._stations()]
        if param == "rssi":
            self._need(STA_IF)
            self._tick()
            ap = self._link() if self._ph >= _DHCP else None
            if ap is None:
                raise OSError("Wifi Not Connected")
            return ap.get("rssi", -50)
        raise ValueError("unknown status param")

    def isconnected(self):
        if self._if == AP_IF:
            return bool(self._stations())
        self._tick()
        return self._ph == _UP

    # Phones of the world associated with our soft AP
    def _stations(self):
        if not self._act:
            return []
        c = self._cfg
        out = []
        for s in _w().get("softap", {}).get("stations", ()):
            if s.get("ssid", c["ssid"]) != c["ssid"] or len(out) >= c["maxc"]:
                continue
            if c["auth"] == AUTH_OPEN or s.get("key", c["key"]) == c["key"]:
                out.append(s)
        return out

    # network_wlan_scan: the mode must include STA (ESP-IDF's mode is STA until active() sets
    # another, and stays the last one set after everything is switched off); a scan of a
    # stopped radio fails inside esp_wifi_scan_start, which the port turns into [].
    def scan(self):
        if not _mode & (1 << STA_IF):
            raise OSError("STA must be active")
        if not any(i and i._act for i in _ifs):
            return []
        sleep_ms(_w().get("scan_ms", _SCAN_MS))  # blocking, as on the board
        self._tick()
        if self._ph == _ASSOC:
            return []  # ESP-IDF refuses to scan while connecting; MicroPython returns []
        res = []
        for ap in _w().get("aps", ()):
            if _audible(ap):
                ssid = b"" if ap.get("hidden") else ap.get("ssid", "").encode()
                mac = _bmac(ap.get("bssid", "02:00:00:00:00:00"))
                res.append(
                    (ssid, mac, ap.get("channel", 1), ap.get("rssi", -50), _auth(ap), False)
                )
        res.sort(key=lambda r: r[3], reverse=True)  # strongest first
        return res

    # (ip, mask, gw) as the interface has it now
    def _addr(self):
        if self._if == AP_IF or not self._dhcp:
            return self._ip
        self._tick()
        return self._lease if self._ph == _UP else (_ZERO, _ZERO, _ZERO)

    # ports/esp32/network_common.c esp_ifconfig, over esp-netif (esp_netif_lwip.c): the DNS of
    # the STA is lwIP's one resolver (dns_setserver), the DNS of the soft AP is the one its DHCP
    # server offers to phones (dhcps_dns_setserver): configuring the AP leaves the resolver be.
    def ifconfig(self, conf=None):
        global _dns
        if conf is None:
            dns = self._offer_dns if self._if == AP_IF else _dns
            return self._addr() + (dns,)  # noqa: RUF005 (no (*a, b) in MicroPython)
        if isinstance(conf, str):
            if self._if != STA_IF or conf != "dhcp":
                raise ValueError("invalid arguments")
            self._dhcp = True
            return
        ip, mask, gw, dns = conf
        if isinstance(mask, int):
            mask = _mask(mask)
        self._ip = (ip, mask, gw)
        self._static()
        if dns == _ZERO:  # esp_netif_set_dns_info: ESP_ERR_ESP_NETIF_INVALID_PARAMS
            raise RuntimeError("Wifi Unknown Error 0x5001")
        if self._if == AP_IF:
            self._offer_dns = dns
        else:
            _dns = dns

    # A static address was set: DHCP client off (STA), or the soft AP renumbered
    def _static(self):
        if self._if == STA_IF:
            self._dhcp = False
        else:
            self._publish()

    def ipconfig(self, *args, **kw):
        if not kw:
            if len(args) != 1:
                raise TypeError("must query one param")
            k = args[0]
            if k == "dhcp4" and self._if == STA_IF:
                return self._dhcp
            if k == "addr4":
                return self._addr()[:2]
            if k == "gw4":
                return self._addr()[2]
            raise ValueError("unexpected key")
        if args:
            raise TypeError("can't specify pos and kw args")
        ip, mask, gw = self._addr()
        touched = False
        for k, v in kw.items():
            if k == "dhcp4" and self._if == STA_IF:
                self._dhcp = bool(v)
            elif k == "addr4":
                if isinstance(v, str):
                    if "/" in v:
                        v, bits = v.split("/")
                        mask = _mask(int(bits))
                    ip = v
                elif v is not None:
                    ip, mask = v
                touched = True
            elif k == "gw4":
                gw = v
                touched = True
            else:
                raise ValueError("unexpected key")
        if touched or self._if == AP_IF:
            self._ip = (ip, mask, gw)
            self._static()

    def config(self, *args, **kw):
        if args and kw:
            raise TypeError("either pos or kw args are allowed")
        if kw:
            return self._set(kw)
        if len(args) != 1:
            raise TypeError("can query only one param")
        return self._get(args[0])

    # config(k=v, ...): all or nothing, like esp_wifi_set_config() after the loop
    def _set(self, kw):
        n = dict(self._cfg)
        for k, v in kw.items():
            need = None
            if k == "mac":
                if len(v) != 6:
                    raise ValueError("invalid buffer length")
            elif k in ("ssid", "essid"):
                need, k, v = AP_IF, "ssid", (v.decode() if isinstance(v, bytes) else v)[:32]
            elif k in ("key", "password"):
                need, k, v = AP_IF, "key", (v.decode() if isinstance(v, bytes) else v)[:63]
            elif k in ("security", "authmode"):
                need, k = AP_IF, "auth"
            elif k == "hidden":
                need, v = AP_IF, bool(v)
            elif k == "max_clients":
                need, k = AP_IF, "maxc"
            elif k == "channel":
                k = "chan"
            elif k in ("hostname", "dhcp_hostname"):
                hostname(v)
            elif k == "reconnects":
                need = STA_IF
                self._conf = 0 if v == -1 else v + 1
            elif k not in ("pm", "txpower", "protocol", "bandwidth"):
                raise ValueError("unknown config param")
            if need is not None:
                self._need(need)
            if k in n or k in ("pm", "txpower", "protocol"):
                n[k] = v
        # The length is IDF's strlen of cfg.ap.password: bytes, not characters (network_wlan.c)
        if self._if == AP_IF and n["auth"] != AUTH_OPEN and len(n["key"].encode()) < 8:
            raise OSError("Wifi Invalid Password")
        if "mac" in kw:
            self._mac = bytes(kw["mac"])
        self._cfg = n
        if self._if == AP_IF:
            self._publish()

    # config('k')
    def _get(self, k):
        c = self._cfg
        if k == "mac":
            return self._mac
        if k in ("ssid", "essid"):
            return c["ssid"]
        if k == "channel":
            return self._channel()
        if k in ("hostname", "dhcp_hostname"):
            self._need(STA_IF)
            return _host[0]
        if k == "reconnects":
            self._need(STA_IF)
            return self._conf - 1
        if k in ("security", "authmode", "hidden"):
            self._need(AP_IF)
            return c["hidden" if k == "hidden" else "auth"]
        if k == "max_clients":
            return c["maxc"]
        if k in ("pm", "txpower"):
            return c[k]
        if k == "protocol":
            return c.get("protocol", 7)
        raise ValueError("unknown config param")

    # The radio's channel: the STA's AP while associated, else the soft AP's, else configured
    def _channel(self):
        sta, ap = _ifs[STA_IF], _ifs[AP_IF]
        if sta and sta._act:
            sta._tick()
            a = sta._link() if sta._ph >= _DHCP else None
            if a:
                return a.get("channel", 1)
        return ap._cfg["chan"] if ap and ap._act else self._cfg["chan"]

    # Tell the world what our soft AP looks like: <world>.ap.json, replaced atomically
    def _publish(self):
        p = os.getenv("EMW_WORLD")
        if not p:
            return
        c = self._cfg
        d = {"active": self._act, "ssid": c["ssid"], "key": c["key"], "authmode": c["auth"]}
        d["security"] = _SEC[c["auth"]] if c["auth"] < len(_SEC) else str(c["auth"])
        d.update({"channel": c["chan"], "hidden": c["hidden"], "ip": self._ip[0]})
        d["bssid"] = ":".join("%02x" % b for b in self._mac)
        s = json.dumps(d)
        if s == self._pub:
            return
        try:
            with open(p + ".ap.json.tmp", "w") as f:
                f.write(s)
            os.rename(p + ".ap.json.tmp", p + ".ap.json")
            self._pub = s
        except OSError:
            pass
