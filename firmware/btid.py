# The module's Bluetooth identity (AT+BTMAC, AT+BTNAME), known without loading the radio's code
# (firmware/bt.py): the provisioning page shows it too.
import machine

from firmware import ctx


# The Bluetooth address: the board's base MAC + 2, as ESP-IDF derives it; readable without
# powering the radio.
def mac():
    m = bytearray(machine.unique_id())
    m[5] = (m[5] + 2) & 0xFF
    return ":".join("{:02x}".format(b) for b in m)


def name():
    return ctx.settings["bt_name"] or "EMW3239_" + mac()[9:].replace(":", "").upper()
