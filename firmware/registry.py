# The command table: every command name, and the group module (firmware/commands/<group>.py)
# whose COMMANDS rows answer it. A group is imported on the first use of one of its commands,
# so a feature the host never uses costs no RAM (as asyncio's lazy __init__ does).
# host_tests/test_registry.py checks that these lists match each module's COMMANDS.
# fmt: off
GROUPS = (
    ("system", ("", "FWVER", "SYSTIME", "MEMFREE", "FACTORY", "REBOOT", "FLASHLOCK", "WEVENT",
                "CIPEVENT", "STANDBY", "ERRNO", "ERRVERBOSE")),
    ("uart", ("UART", "UARTFOMAT", "UARTE")),
    ("wifi", ("WFVER", "WMAC", "WSCANOPT", "WSCAN", "WDHCP", "WSAPIP", "WSAP", "WSAPQ", "WSAPS",
              "WJAPIP", "WJAP", "WJAPQ", "WJAPS")),
    ("tcpip", ("SSLCERTGET", "SSLCERTSET", "CIPDOMAIN", "CIPAUTOCONN", "CIPSSLOPT", "CIPSTART",
               "CIPSTOP", "CIPSTATUS", "CIPSEND", "CIPSENDRAW", "CIPRECV", "CIPRECVCFG", "CIPERR",
               "CIPDROPS")),
    ("mqtt", ("MQTTAUTH", "MQTTSOCK", "MQTTCAVERIFY", "MQTTSSL", "MQTTCID", "MQTTKEEPALIVE",
              "MQTTRECONN", "MQTTAUTOSTART", "MQTTEVENT", "MQTTSTART", "MQTTSUB", "MQTTPUB",
              "MQTTSEND", "MQTTUNSUB", "MQTTSTATUS", "MQTTCLOSE")),
    ("provision", ("SMARTSTART", "SMARTSTOP", "SMARTCFG", "SMARTKEY", "SMARTHTTP")),
    ("enet", ("ENETRAWMODE", "ENETRAWSEND")),
    ("sntp", ("SNTPCFG", "SNTPTIME", "RTCGET")),
    ("bt", ("BTNAME", "BTPASSKEY", "BTMAC", "BTDISCOVERY", "BTEVENT", "BTSTATE", "BTSEND",
            "BTSENDRAW")),
    ("ota", ("OTACHECK", "OTASTART", "OTAURL")),
)
# fmt: on


def group_names():
    return [g for g, _ in GROUPS]


class Table:
    def __init__(self):
        self._rows = {}  # name -> (test, query, set, exec), or the group name until loaded
        for group, names in GROUPS:
            for name in names:
                self._rows[name] = group

    def get(self, name):
        row = self._rows.get(name)
        if isinstance(row, str):
            module = __import__("firmware.commands." + row, None, None, ("COMMANDS",))
            self._rows.update(module.COMMANDS)
            row = self._rows[name]
        return row
