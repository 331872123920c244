# Section 8 of the spec: Bluetooth serial, offered over BLE with the Nordic UART Service
# (the EMW3239's Classic SPP does not exist in MicroPython's ESP32 bluetooth; see firmware/bt.py).
#
# Replies (every form a driver may send answers the same data):
#   AT+BTNAME[?|=?]       +BTNAME:<name>           AT+BTNAME=<name>: 1..26 bytes (it must fit
#                                                   the advertising packet with the flags)
#   AT+BTPASSKEY[?|=?]    +BTPASSKEY:<6 digits>    AT+BTPASSKEY=<6 digits>; next pairing on
#   AT+BTMAC[?|=?]        +BTMAC:xx:xx:xx:xx:xx:xx (not settable)
#   AT+BTDISCOVERY[?|=?]  +BTDISCOVERY:ON|OFF      AT+BTDISCOVERY=ON|OFF: connectable
#                                                   advertising or none; kept across restarts
#   AT+BTEVENT[?|=?]      +BTEVENT=EN|DN           ("=" as +WEVENT=ON: a "+BTEVENT:" reply
#                                                   would be taken for an event by drivers)
#   AT+BTSTATE[?|=?]      +BTSTATE:CONNECTED|DISCONNECTED|DISCOVERABLE
#   AT+BTSEND=<len>       >, then exactly <len> bytes (1..4096, binary), then OK once every
#                         byte has left as notifications; ERROR after the data without a
#                         paired phone
#   AT+BTSENDRAW          OK, then transparent mode both ways until +++ (starts advertising)
# Events (gated by AT+BTEVENT, never inside a response):
#   \r\n+BTEVENT:CONNECTION,ON\r\n    a phone connected and is paired (or bonded and encrypted)
#   \r\n+BTEVENT:CONNECTION,OFF\r\n   it left
#   \r\n+BTEVENT:DATA,<len>,<data>\r\n  <data> is exactly <len> raw bytes, as
#                         +CIPEVENT:SOCKET: read the header up to the second comma, then take
#                         <len> bytes. With AT+BTEVENT=DN, and in transparent mode, the
#                         received bytes go to the UART as they are, without framing.
from firmware import at, bt, ctx, serial
from firmware.at import AtError
from firmware.commands.system import action, reading, setter, value


def _name():
    return "+BTNAME:" + at.escape(bt.name())


def _name_set(p):
    at.count(p, 1)
    ctx.settings.set("bt_name", at.text(p, 0, bt.NAME_MAX))
    if bt.radio is not None:
        bt.radio.rename()


def _passkey():
    return "+BTPASSKEY:" + ctx.settings["bt_passkey"]


def _passkey_set(p):
    at.count(p, 1)
    key = p[0] or ""
    if len(key) != 6 or not key.isdigit():
        raise AtError(at.E_PARAM, "parameter 1: must be 6 digits")
    ctx.settings.set("bt_passkey", key)


def _mac():
    return "+BTMAC:" + bt.mac()


def _discovery():
    return "+BTDISCOVERY:" + at.word(ctx.settings["bt_on"])


def _event():
    return "+BTEVENT=" + ("EN" if ctx.settings["btevent"] else "DN")


def _event_set(p):
    at.count(p, 1)
    ctx.settings.set("btevent", at.choice(p, 0, ("EN", "DN")) == "EN")


def _state():
    return "+BTSTATE:" + bt.state()


def _send(p):
    at.count(p, 1)
    return serial.DataPhase(at.integer(p, 0, 1, serial.LENGTH_MAX), _send_data)


def _send_data(data):
    if bt.state() != bt.CONNECTED:
        raise AtError(at.E_STATE, "no phone connected")
    return bt.radio.send(data)


# Transparent mode both ways, once the OK is out; starts advertising (the spec).
def _sendraw():
    r = bt.start()
    r.advertise(True)  # now, or when the phone connected leaves
    ctx.serial.after_reply(lambda: ctx.serial.enter_transparent(r))


COMMANDS = {
    "BTNAME": value(_name, _name_set),
    "BTPASSKEY": value(_passkey, _passkey_set),
    "BTMAC": reading(_mac),
    "BTDISCOVERY": value(_discovery, bt.at_btdiscovery),
    "BTEVENT": value(_event, _event_set),
    "BTSTATE": reading(_state),
    "BTSEND": setter(_send),
    "BTSENDRAW": action(_sendraw),
}
