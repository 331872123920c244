# What a station status means for AT+WJAPS: a pure function, no I/O.
#
# With config(reconnects=0), WLAN.status() passes ESP-IDF's disconnect reason through
# (ports/esp32/network_wlan.c, network_wlan_status): 202 for AUTH_FAIL and CONNECTION_FAIL,
# 201/210/211/212 for the NO_AP_FOUND family, and any other reason as it is. A wrong WPA/WPA2
# key usually ends the 4-way handshake: 15 (4WAY_HANDSHAKE_TIMEOUT) or 204 (HANDSHAKE_TIMEOUT),
# some APs answer 2 (AUTH_EXPIRE) (MicroPython issue 11625). Numbers: wifi_err_reason_t of
# ESP-IDF v5.2, the one MicroPython v1.24 builds with.
try:
    from micropython import const
except ImportError:  # CPython, for the unit tests

    def const(x):
        return x


# Failure codes of AT+WJAPS.
ERR_UNKNOWN = const(0)
ERR_PASSWORD = const(1)
ERR_NO_SSID = const(2)

_STAT_IDLE = const(1000)
_STAT_CONNECTING = const(1001)
_STAT_GOT_IP = const(1010)

_WRONG_KEY = (
    2,  # AUTH_EXPIRE
    15,  # 4WAY_HANDSHAKE_TIMEOUT
    202,  # AUTH_FAIL (also CONNECTION_FAIL, 205, which status() reports as 202)
    204,  # HANDSHAKE_TIMEOUT
)
_NOT_FOUND = (
    201,  # NO_AP_FOUND
    210,  # NO_AP_FOUND_W_COMPATIBLE_SECURITY
    211,  # NO_AP_FOUND_IN_AUTHMODE_THRESHOLD
    212,  # NO_AP_FOUND_IN_RSSI_THRESHOLD
)


# The AT+WJAPS failure code of a status() value, or None while it is not a failure (idle,
# connecting, connected).
def join_error(status):
    if status in (_STAT_IDLE, _STAT_CONNECTING, _STAT_GOT_IP) or not status:
        return None
    if status in _WRONG_KEY:
        return ERR_PASSWORD
    if status in _NOT_FOUND:
        return ERR_NO_SSID
    return ERR_UNKNOWN
