# Section 5 of the spec: MQTT. The session itself is firmware/mqtt.py.
#
# Every query answers the same data for "=?" (the spec's form), "?" and the bare command.
# Configuration persists (unless FLASHLOCK) and applies from the next connection.
# Replies and events (wire notes: what drivers parse):
#   AT+MQTTSTART   OK, then +MQTTEVENT:CONNECT,SUCCESS | CONNECT,RECONNECTING | CONNECT,FAIL
#                  | CONNECT,INIT_ERROR
#   AT+MQTTSUB=    OK, then +MQTTEVENT:<id>,SUBSCRIBE,SUCCESS | <id>,SUBSCRIBE,FAIL once the
#                  broker answers (stored while not connected: subscribed at each connect)
#   AT+MQTTUNSUB=  OK, then +MQTTEVENT:<id>,UNSUBSCRIBE,SUCCESS | <id>,UNSUBSCRIBE,FAIL
#   AT+MQTTSEND=   >, <len> bytes, OK, then +MQTTEVENT:PUBLISH,SUCCESS | PUBLISH,FAIL
#                  (ERROR after the data if not connected or no AT+MQTTPUB topic). With 16
#                  requests awaiting their acks, the OK waits up to 10 s for room (so does
#                  AT+MQTTSUB/UNSUB): ERROR only if none comes.
#   AT+MQTTCLOSE   OK, then +MQTTEVENT:CLOSE,SUCCESS if a session was started
#   messages       +MQTTRECV:<sub id>,<len>,<payload>
# Extension: AT+MQTTERR? -> +MQTTERR:<why the session last failed> (empty if it never did).
#
# Subscriptions are configuration, like AT+MQTTPUB: AT+MQTTSUB=? lists them, they outlive
# AT+MQTTCLOSE and a restart, and each connection subscribes them again (reported before
# CONNECT,SUCCESS). AT+MQTTUNSUB forgets one.
from firmware import at, ctx, events, mqtt, mqttpkt, serial
from firmware.commands.system import action, reading, secret, setter, switch, value

_USER_MAX = 256
_PASS_MAX = 512  # cloud tokens (SAS, JWT) are long
_HOST_MAX = 253
_CID_MAX = 256


def _auth_query():
    user, pswd = ctx.settings["mqtt_auth"]
    return "+MQTTAUTH:{},{}".format(at.escape(user), at.escape(secret(pswd)))


def _auth_set(p):
    at.count(p, 1, 2)
    user = at.text(p, 0, _USER_MAX, least=0)
    pswd = at.text(p, 1, _PASS_MAX, least=0)
    ctx.settings.set("mqtt_auth", [user, pswd])


def _sock_query():
    host, port = ctx.settings["mqtt_sock"]
    return "+MQTTSOCK:{},{}".format(at.escape(host), port)


def _sock_set(p):
    at.count(p, 2)
    host = at.text(p, 0, _HOST_MAX)
    if " " in host:
        raise at.AtError(at.E_PARAM, "parameter 1: not a host name")
    port = at.integer(p, 1, 1, 65535)
    ctx.settings.set("mqtt_sock", [host, port])


def _caverify_query():
    server, client = ctx.settings["mqtt_caverify"]
    return "+MQTTCAVERIFY:{},{}".format(at.word(server), at.word(client))


def _caverify_set(p):
    at.count(p, 2)
    ctx.settings.set("mqtt_caverify", [at.on_off(p, 0), at.on_off(p, 1)])


def _cid_query():
    return "+MQTTCID:" + at.escape(ctx.settings["mqtt_cid"])


# An empty id means the module's own, "EMW_<MAC>" (some brokers refuse an empty one).
def _cid_set(p):
    at.count(p, 1)
    ctx.settings.set("mqtt_cid", at.text(p, 0, _CID_MAX, least=0))


def _keepalive_query():
    return "+MQTTKEEPALIVE:{}".format(ctx.settings["mqtt_keepalive"])


def _keepalive_set(p):
    at.count(p, 1)
    ctx.settings.set("mqtt_keepalive", at.integer(p, 0, 0, 65535))


def _start():
    mqtt.get().start()


def _sub_query():
    lines = [None]
    for i in range(mqtt.SUBS):
        e = mqtt.sub(i)
        if e:
            lines.append("{},{},{}".format(i, at.escape(e[0]), e[1]))
    lines[0] = "+MQTTSUB:{}".format(len(lines) - 1)
    return lines


# Store the subscription, and subscribe now if connected (a topic that the id replaces is
# unsubscribed). Re-sending the same subscription subscribes again (drivers retry until
# they see the event).
async def _sub_set(p):
    at.count(p, 3)
    i = at.integer(p, 0, 0, mqtt.SUBS - 1)
    topic = at.text(p, 1, mqtt.TOPIC_MAX)
    if not mqttpkt.valid_filter(topic):
        raise at.AtError(at.E_PARAM, "parameter 2: not a valid topic filter")
    qos = at.integer(p, 2, 0, 2)
    s = mqtt.get()
    old = mqtt.sub(i)
    mqtt.store_sub(i, [topic, qos])
    if s.up():
        try:
            if old and old[0] != topic:
                await s.unsubscribe(i, old[0], quiet=True)
            await s.subscribe(i)
        except OSError as e:
            s.broken(e)  # stored: subscribed again after the reconnect
    else:
        s.subs[i] = None


# Forget the subscription; unsubscribe at the broker if connected. OK for an unused id
# (drivers clear ids before subscribing).
async def _unsub_set(p):
    at.count(p, 1)
    i = at.integer(p, 0, 0, mqtt.SUBS - 1)
    s = mqtt.get()
    old = mqtt.sub(i)
    if old:
        mqtt.store_sub(i, [])
    if old and s.up():
        try:
            await s.unsubscribe(i, old[0])
            return
        except OSError as e:
            s.broken(e)  # the broker forgets it with the connection
    s.subs[i] = mqtt.UNSUB_OK
    events.emit("MQTTEVENT", "{},{}".format(i, mqtt.UNSUB_OK))


def _pub_query():
    topic, qos = ctx.settings["mqtt_pub"]
    return "+MQTTPUB:{},{}".format(at.escape(topic), qos)


_ACTIONS = ("connect", "subscribe", "publish", "CONNECT", "SUBSCRIBE", "PUBLISH")


def _status_set(p):
    at.count(p, 1, 2)
    action = at.choice(p, 0, _ACTIONS).lower()
    s = mqtt.get()
    if action == "subscribe":
        at.count(p, 2)
        word = s.subs[at.integer(p, 1, 0, mqtt.SUBS - 1)] or mqtt.SUB_FAIL
    else:
        at.count(p, 1)
        word = s.status if action == "connect" else s.pub or mqtt.PUB_FAIL
    return "+MQTTSTATUS:" + word


def _err_query():
    return "+MQTTERR:" + ctx.mqtt_error


COMMANDS = {
    "MQTTAUTH": value(_auth_query, _auth_set),
    "MQTTSOCK": value(_sock_query, _sock_set),
    "MQTTCAVERIFY": value(_caverify_query, _caverify_set),
    "MQTTSSL": switch("mqtt_ssl", "+MQTTSSL:"),
    "MQTTCID": value(_cid_query, _cid_set),
    "MQTTKEEPALIVE": value(_keepalive_query, _keepalive_set),
    "MQTTRECONN": switch("mqtt_reconn", "+MQTTRECONN:"),
    "MQTTAUTOSTART": switch("mqtt_autostart", "+MQTTAUTOSTART:"),
    # ":" as the document writes it. Unlike "+WEVENT=ON", a driver's event matcher that takes
    # this line for an event finds no result word it knows in "ON", and ignores it.
    "MQTTEVENT": switch("mqttevent", "+MQTTEVENT:"),
    "MQTTSTART": action(_start),
    "MQTTSUB": value(_sub_query, _sub_set),
    "MQTTPUB": value(_pub_query, mqtt.at_mqttpub),
    "MQTTSEND": setter(mqtt.at_mqttsend),
    "MQTTUNSUB": setter(_unsub_set),
    "MQTTSTATUS": setter(_status_set),
    "MQTTCLOSE": action(mqtt.at_mqttclose),
    "MQTTERR": reading(_err_query),
}
