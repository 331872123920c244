# The running module's shared objects, set up by app.main(): the one place handlers find them.
import time

settings = None  # settings.Settings
serial = None  # serial.Serial: the command engine and the one writer
certs_held = {}  # certificates stored while FLASHLOCK is ON (certs.py), kept until reboot
mqtt_error = ""  # why the MQTT session last failed (AT+MQTTERR), kept when its group is released
LINKS = 5  # link ids 0-4 (section 4): the links' commands check ids without loading the links

_uptime = 0  # ms counted up to _ticks
_ticks = time.ticks_ms()


# Milliseconds since start, beyond the ~12-day wrap of ticks_ms (app calls it at least hourly).
def uptime_ms():
    global _uptime, _ticks
    now = time.ticks_ms()
    _uptime += time.ticks_diff(now, _ticks)
    _ticks = now
    return _uptime
