# Section 7 of the spec: SNTP time synchronization and the RTC.
#
# AT+SNTPCFG=<zone>[,<domain1>[,<domain2>]]
#   zone: see sntp.parse_zone ("+8", "-5", "+5:30" or "+5.5", "+5:45"; -12..+14).
#   With the zone alone (what several drivers send: "AT+SNTPCFG=+8") the stored servers stay;
#   with domains, the list is replaced (one domain clears the second). A domain may end with
#   ":<port>" (extension: a test server cannot listen on port 123). Persisted unless FLASHLOCK.
#   Factory default: zone +0 (UTC), servers pool.ntp.org and time.google.com.
# AT+SNTPCFG? / =? / AT+SNTPCFG (extension: the spec has no query) -> +SNTPCFG:<zone>,<d1>,<d2>
#   with the zone as "+8" / "-9:30" / "+0" and an empty field for a missing domain.
# AT+SNTPTIME -> +SNTPTIME:<YYYY-MM-DDTHH:MM:SS.ffffff> in the configured zone; sets the RTC.
#   ERROR without Wi-Fi, or when neither server answers well within 2 s each (AT+ERRNO says
#   why, per server). The UART's next lines wait; the event loop does not.
# AT+RTCGET (also ? and =?) -> +RTCGET:<same format>: the RTC (kept in UTC) in the zone now
#   configured.
from firmware import at, ctx, sntp
from firmware.commands.system import action, reading, value

_DOMAIN_MAX = 64
_HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"


def _zone(p):
    z = sntp.parse_zone(p[0])
    if z is None:
        raise at.AtError(at.E_PARAM, "parameter 1: time zone must be -12..+14, as +8 or +5:30")
    return z


# A host name or address, with an optional :port.
def _domain(p, i):
    v = at.text(p, i, _DOMAIN_MAX)
    host, _ = sntp.split_server(v)
    if not host or any(c not in _HOST_CHARS for c in host):
        raise at.AtError(at.E_PARAM, "parameter {}: not a host name".format(i + 1))
    return v


def _cfg_query():
    s1, s2 = ctx.settings["sntp_servers"]
    return "+SNTPCFG:{},{},{}".format(
        sntp.zone_text(ctx.settings["sntp_zone"]), at.escape(s1), at.escape(s2)
    )


def _cfg_set(p):
    at.count(p, 1, 3)
    zone = _zone(p)
    servers = ctx.settings["sntp_servers"]
    if len(p) > 1:
        servers = [_domain(p, 1), _domain(p, 2) if len(p) > 2 else ""]
    ctx.settings.update({"sntp_zone": zone, "sntp_servers": servers})


async def _time():
    secs, us = await sntp.sync()
    return "+SNTPTIME:" + sntp.text(secs, us)


def _rtcget():
    return "+RTCGET:" + sntp.text(*sntp.rtc_now())


COMMANDS = {
    "SNTPCFG": value(_cfg_query, _cfg_set),
    "SNTPTIME": action(_time),
    "RTCGET": reading(_rtcget),
}
