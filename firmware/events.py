# Unsolicited result codes: "+<KIND>:<params>", each gated by its own ON/OFF setting.
from firmware import ctx

# The setting that turns each kind on; AT+WEVENT also covers the provisioning event.
_GATES = {
    "WEVENT": "wevent",
    "CIPEVENT": "cipevent",
    "MQTTEVENT": "mqttevent",
    "BTEVENT": "btevent",
    "SMARTEVENT": "wevent",
}


# caused: part of the response of the command being answered (see serial.Serial.event).
def emit(kind, params, caused=False):
    gate = _GATES.get(kind)
    if gate is None or ctx.settings[gate]:
        ctx.serial.event("+{}:{}".format(kind, params), caused)
