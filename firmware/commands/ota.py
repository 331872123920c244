# Section 10 of the spec: OTA of the AT firmware, from an HTTP(S) server the user runs, named
# by the extension AT+OTAURL (the EMW cloud does not exist for this product). docs/OTA.md has
# the manifest, the flow and the events; firmware/otaupdate.py the download and the switch
# (imported by AT+OTACHECK/AT+OTASTART through registry.use, which counts it and its HTTP
# modules as this group's; nothing here keeps a reference to them, so they go with the group
# once otaupdate.idle()); boot.py and firmware/ota.py the slots and rollback.
#   AT+OTACHECK    +OTACHECK:<version of the server's latest release>
#   AT+OTASTART=<version>   OK, then +OTAEVENT:START, [PROGRESS,<percent>...], SUCCESS and a
#                  restart into it, or FAIL,<reason> (AT+ERRNO: the detail)
from micropython import const

from firmware import at, ctx, ota, registry, wifi
from firmware.at import AtError
from firmware.commands.system import reading, setter, switch, value

_URL_MAX = const(200)


# An update server is set and the module can reach it.
def _need_server():
    if not ctx.settings["ota_url"]:
        raise AtError(at.E_STATE, "no update server (AT+OTAURL)")
    if not wifi.online():
        raise AtError(at.E_STATE, "no network")


async def _check_cmd():
    _need_server()
    otaupdate = registry.use("ota", "firmware.otaupdate")
    return "+OTACHECK:" + await otaupdate.latest()


def _start(p):
    at.count(p, 1)
    otaupdate = registry.use("ota", "firmware.otaupdate")
    version = at.text(p, 0, otaupdate.VERSION_MAX)
    if not otaupdate.version_ok(version):
        raise AtError(at.E_PARAM, "parameter 1: letters, digits, . _ - only")
    _need_server()
    if not otaupdate.idle():
        raise AtError(at.E_STATE, "an update is running")
    if ota.free_slot() is None:
        raise AtError(at.E_STATE, "an update waits for confirmation")
    otaupdate.start(version)


def _url_query():
    return "+OTAURL:" + at.escape(ctx.settings["ota_url"])


def _url_set(p):
    at.count(p, 1)
    url = at.text(p, 0, _URL_MAX)
    httpmsg = registry.use("ota", "firmware.httpmsg")
    try:
        httpmsg.split_url(url)
    except ValueError:
        raise AtError(at.E_PARAM, "parameter 1: http://host[:port]/path or https://...")
    ctx.settings.set("ota_url", url)


COMMANDS = {
    "OTAPROGRESS": switch("ota_progress", "+OTAPROGRESS:"),
    "OTACHECK": reading(_check_cmd),
    "OTASTART": setter(_start),
    "OTAURL": value(_url_query, _url_set),
}
