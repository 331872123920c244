# Section 9 of the spec: raw Ethernet frames. The document's module (moc108) hands raw frames
# to the host; MicroPython on the ESP32 has no raw-frame API (lwIP sockets only), so the mode
# is always OFF: AT+ENETRAWMODE? answers +ENETRAWMODE:OFF and =OFF is OK, while =ON and
# AT+ENETRAWSEND answer ERROR (AT+ERRNO says why). ENETRAWSEND reads its frame first, as any
# refused data phase (firmware/serial.py): a host may send it without waiting for ">".
from firmware import at, serial
from firmware.at import AtError
from firmware.commands.system import setter, value

_WHY = "no raw Ethernet frames on the ESP32 (MicroPython has no raw-frame API; moc108 only)"


def _mode_query():
    return "+ENETRAWMODE:OFF"


def _mode_set(p):
    at.count(p, 1)
    if at.on_off(p, 0):
        raise AtError(at.E_UNSUPPORTED, _WHY)


def _send_set(p):
    at.count(p, 1)
    length = at.integer(p, 0, 1, serial.LENGTH_MAX)
    return serial.DataPhase(length, None, error=AtError(at.E_UNSUPPORTED, _WHY))


COMMANDS = {
    "ENETRAWMODE": value(_mode_query, _mode_set),
    "ENETRAWSEND": setter(_send_set),
}
