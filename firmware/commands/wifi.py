# Section 3 of the spec: Wi-Fi management.
import sys

from firmware import at, ctx, wifi
from firmware.at import AtError
from firmware.commands.system import action, reading, secret, switch, value

_SSID_MAX = 32
_KEY_MAX = 64


# The radio firmware is ESP-IDF's, inside the MicroPython image: report that image's version.
def _wfver():
    return "+WFVER:mpy_{}.{}.{}".format(*sys.implementation.version)


# Upper-case hex without separators: the document's XX:XX form breaks four known drivers.
def _wmac():
    return "+WMAC:" + wifi.mac_text(wifi.station.wlan.config("mac"), "").upper()


def _scanopt_query():
    return "+WSCANOPT:{}".format(ctx.settings["scanopt"])


def _scanopt_set(p):
    at.count(p, 1)
    ctx.settings.set("scanopt", at.integer(p, 0, 0, 1))


# AT+WSCAN (every network) or AT+WSCAN=<ssid> (that one only).
def _scan(p=None):
    only = None
    if p is not None:
        at.count(p, 1)
        only = at.text(p, 0, _SSID_MAX)
    advanced = ctx.settings["scanopt"] == 1
    lines = [None]
    for ssid_raw, bssid, channel, rssi, auth, _hidden in wifi.station.scan():
        ssid = ssid_raw.decode()
        if not ssid or (only is not None and ssid != only):
            continue  # hidden networks have no name to list or join
        if advanced:
            lines.append(
                "{},{},{},{},{}".format(
                    at.escape(ssid), wifi.mac_text(bssid), wifi.auth_name(auth), channel, rssi
                )
            )
        else:
            lines.append("{},{}".format(at.escape(ssid), rssi))
    lines[0] = "+WSCAN:{}".format(len(lines) - 1)
    return lines


def _ipv4(p, i):
    v = p[i] if i < len(p) else None
    parts = v.split(".") if v else ()
    if len(parts) != 4 or not all(s.isdigit() and len(s) <= 3 and int(s) <= 255 for s in parts):
        raise AtError(at.E_PARAM, "parameter {}: not an IPv4 address".format(i + 1))
    return v


def _sapip_query():
    if wifi.softap.up():
        return "+WSAPIP:{},{},{}".format(*wifi.softap.wlan.ifconfig()[:3])
    return "+WSAPIP:{},{},{}".format(*ctx.settings["ap_ip"])


def _sapip_set(p):
    at.count(p, 1, 3)
    ip = _ipv4(p, 0)
    mask, gw = ("255.255.255.0", ip) if len(p) == 1 else (_ipv4(p, 1), _ipv4(p, 2))
    ctx.settings.set("ap_ip", [ip, mask, gw])
    wifi.softap.apply_ip()


def _sap_query():
    ssid, key = ctx.settings["ap"]
    return "+WSAP:{},{}".format(at.escape(ssid), at.escape(secret(key)))


# <ssid>[,<key>] of AT+WSAP= and AT+WJAP=.
def _credentials(p):
    at.count(p, 1, 2)
    return [at.text(p, 0, _SSID_MAX), at.text(p, 1, _KEY_MAX, least=0)]


def _sap_set(p):
    ctx.settings.update({"ap": _credentials(p), "ap_on": True})
    wifi.softap.start()


def _sapq():
    ctx.settings.set("ap_on", False)
    wifi.softap.stop()


def _saps():
    return "+WSAPS:" + ("AP_UP" if wifi.softap.up() else "AP_DOWN")


def _japip_query():
    return "+WJAPIP:{},{},{},{}".format(*wifi.station.addresses())


# A static address: stored with DHCP turned off, used from the next join on.
def _japip_set(p):
    at.count(p, 3, 4)
    addr = [_ipv4(p, 0), _ipv4(p, 1), _ipv4(p, 2)]
    addr.append(_ipv4(p, 3) if len(p) == 4 else addr[2])
    ctx.settings.update({"sta_ip": addr, "dhcp": False})


def _jap_stored():
    ssid, key = ctx.settings["sta"]
    return "+WJAP:{},{}".format(at.escape(ssid), at.escape(secret(key)))


def _jap_live():
    st = wifi.station
    if st.state != wifi.UP:
        return "+WJAP:0,0,0,0"
    ssid = st.wlan.config("ssid")
    bssid, channel = st.bssid.get(ssid, (bytes(6), st.wlan.config("channel")))
    return "+WJAP:{},{},{},{}".format(
        at.escape(ssid), wifi.mac_text(bssid), channel, st.wlan.status("rssi")
    )


# Store the credentials and start joining; the outcome arrives as +WEVENT (wire notes).
def _jap_set(p):
    ctx.settings.update({"sta": _credentials(p), "sta_on": True})
    wifi.station.join()


def _japq():
    ctx.settings.set("sta_on", False)
    wifi.station.quit()


def _japs():
    st = wifi.station
    if st.state == wifi.DOWN and st.error is not None:
        return "+WJAPS:{},{}".format(wifi.DOWN, st.error)
    return "+WJAPS:" + st.state


COMMANDS = {
    "WFVER": reading(_wfver),
    "WMAC": reading(_wmac),
    "WSCANOPT": value(_scanopt_query, _scanopt_set),
    "WSCAN": (None, None, _scan, _scan),
    "WDHCP": switch("dhcp", "+WDHCP:"),
    "WSAPIP": value(_sapip_query, _sapip_set),
    "WSAP": (_sap_query, _sap_query, _sap_set, None),
    "WSAPQ": action(_sapq),
    "WSAPS": reading(_saps),
    "WJAPIP": value(_japip_query, _japip_set),
    "WJAP": (_jap_stored, _jap_live, _jap_set, None),
    "WJAPQ": action(_japq),
    "WJAPS": reading(_japs),
}
