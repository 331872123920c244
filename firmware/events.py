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


def emit(kind, params):
    gate = _GATES.get(kind)
    if gate is None or ctx.settings[gate]:
        ctx.serial.event("+{}:{}".format(kind, params))
