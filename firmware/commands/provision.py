# Section 6 of the spec: network provisioning ("distribution network").
# Type 5 (SoftAP + web page) is firmware/provision.py. Types 1-4 (Easylink, AirKiss, Easylink
# AWS, their fusion) listen to raw 802.11 frames in promiscuous mode, which MicroPython's
# network module does not expose: AT+SMARTSTART=1..4 answers ERROR, AT+ERRNO says why.
# Extensions: AT+SMARTSTART? (which type runs, 0 = none), AT+SMARTKEY (the set-up AP's
# key), AT+SMARTHTTP (where the set-up page listens), AT+SMARTCFG? (the stored AirKiss ids).
from firmware import at, ctx, provision
from firmware.at import AtError
from firmware.commands.system import secret, value

_SOFTAP = 5
_KEY_MAX = 63  # a WPA2 passphrase


def _start_query():
    return "+SMARTSTART:{}".format(_SOFTAP if provision.running() else 0)


def _start_set(p):
    at.count(p, 1)
    kind = at.integer(p, 0, 1, 5)
    if kind != _SOFTAP:
        raise AtError(
            at.E_UNSUPPORTED,
            "type {} needs promiscuous mode, which MicroPython's network module does not "
            "expose; use 5 (SoftAP)".format(kind),
        )
    provision.start()


def _cfg_query():
    dev, orig = ctx.settings["airkiss"]
    return "+SMARTCFG:{},{}".format(at.escape(dev), at.escape(orig))


# Stored (and persisted) so that hosts which send it keep working; no AirKiss here to use it.
def _cfg_set(p):
    at.count(p, 2)
    ctx.settings.set("airkiss", [at.text(p, 0, 64), at.text(p, 1, 64)])


def _key_query():
    return "+SMARTKEY:" + at.escape(secret(ctx.settings["prov_key"]))


# "" (or nothing): an open set-up AP; else its WPA2 key. Used from the next AT+SMARTSTART.
def _key_set(p):
    at.count(p, 1)
    key = at.text(p, 0, _KEY_MAX, least=0)
    if 0 < len(key.encode()) < 8:
        raise AtError(at.E_PARAM, "parameter 1: a WPA2 key has 8..63 characters")
    ctx.settings.set("prov_key", key)


def _http_query():
    return "+SMARTHTTP:{},{}".format(*ctx.settings["prov_http"])


# AT+SMARTHTTP=<AP|ipv4>[,<port>]: where the set-up page listens ("AP": the soft AP's own
# address; 80 if no port). Used from the next AT+SMARTSTART.
def _http_set(p):
    at.count(p, 1, 2)
    addr = p[0]
    if addr != "AP":
        parts = addr.split(".") if addr else ()
        if len(parts) != 4 or not all(
            s.isdigit() and len(s) <= 3 and int(s) <= 255 for s in parts
        ):
            raise AtError(at.E_PARAM, "parameter 1: AP or an IPv4 address")
    port = at.integer(p, 1, 1, 65535) if len(p) == 2 else 80
    ctx.settings.set("prov_http", [addr, port])


COMMANDS = {
    "SMARTSTART": (_start_query, _start_query, _start_set, None),
    "SMARTSTOP": (None, None, provision.at_smartstop, provision.at_smartstop),
    "SMARTCFG": value(_cfg_query, _cfg_set),
    "SMARTKEY": value(_key_query, _key_set),
    "SMARTHTTP": value(_http_query, _http_set),
}
