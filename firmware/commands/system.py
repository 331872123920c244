# Section 1 of the spec: system commands, and the error-detail extension.
import gc

import machine

from firmware import aio, at, board, ctx, registry, serial, settings
from firmware.version import VERSION


# Rows of the command table: (test "=?", query "?", set "=", bare) handlers, None where a form
# is refused. Every group builds its rows with these (tools/cmdindex.py reads them).


# A row for an ON/OFF setting: AT+X? / AT+X=? / AT+X answer "<reply>ON|OFF",
# AT+X=ON|OFF sets it.
def switch(key, reply):
    def query():
        return reply + at.word(ctx.settings[key])

    def store(p):
        at.count(p, 1)
        ctx.settings.set(key, at.on_off(p, 0))

    return (query, query, store, query)


# Row for a value with a query and a setter: "=?", "?" and the bare command all answer it.
def value(query, setter):
    return (query, query, setter, query)


# Row for a value that can only be read: every form but "=" answers it.
def reading(fn):
    return (fn, fn, None, fn)


# Row for a command that takes parameters ("=" only).
def setter(fn):
    return (None, None, fn, None)


# Row for a command without parameters (the bare form only).
def action(fn):
    return (None, None, None, fn)


def _ok():
    return None


def _fwver():
    return "+FWVER:" + VERSION


def _systime():
    return "+SYSTIME:{}".format(ctx.uptime_ms())


# The free heap once idle groups are released (registry.py): what the host can count on.
async def _memfree():
    await aio.settle()
    registry.release()
    gc.collect()
    return "+MEMFREE:{}".format(gc.mem_free())


def _factory():
    settings.wipe()
    ctx.serial.after_reply(restart)


def _reboot():
    ctx.serial.after_reply(restart)


def restart():
    ctx.serial.flush()
    machine.reset()


# Deep sleep until the host pulls the STANDBY pin low; the module then starts afresh.
def _standby():
    ctx.serial.after_reply(_sleep)


def _sleep():
    import esp32

    ctx.serial.flush()
    pin = machine.Pin(board.WAKE_PIN, machine.Pin.IN, machine.Pin.PULL_UP)
    esp32.wake_on_ext0(pin, esp32.WAKEUP_ALL_LOW)
    machine.deepsleep()


# Extension: the reason of the most recent ERROR.
def _errno():
    return serial.error_line(ctx.serial.last_error)


# Extension: AT+SECRETS=HIDE masks keys and passwords in query replies and refuses to read the
# private key back. It persists and is one-way: only AT+FACTORY, which erases the secrets, shows
# them again (else anyone on the UART could undo it).
_MASK = "********"


def secret(s):
    return _MASK if s and ctx.settings["hide_secrets"] else s


def refuse_if_hidden(what):
    if ctx.settings["hide_secrets"]:
        raise at.AtError(at.E_STATE, "secrets are hidden (AT+SECRETS=HIDE): " + what)


def _secrets_query():
    return "+SECRETS:" + ("HIDE" if ctx.settings["hide_secrets"] else "SHOW")


def _secrets_set(p):
    at.count(p, 1)
    if at.choice(p, 0, ("HIDE", "SHOW")) == "SHOW":
        refuse_if_hidden("only AT+FACTORY shows them again")
        return
    if ctx.settings["flashlock"]:
        raise at.AtError(at.E_STATE, "FLASHLOCK is ON: HIDE must be stored, turn it OFF first")
    ctx.settings.set("hide_secrets", True)


COMMANDS = {
    "": action(_ok),
    "FWVER": reading(_fwver),
    "SYSTIME": reading(_systime),
    "MEMFREE": reading(_memfree),
    "FACTORY": action(_factory),
    "REBOOT": action(_reboot),
    "FLASHLOCK": switch("flashlock", "+FLASHLOCK:"),
    # "=" rather than ":" as the document writes it: a "+WEVENT:" prefix would be taken
    # for an event by every driver's event matcher (wire notes).
    "WEVENT": switch("wevent", "+WEVENT="),
    "CIPEVENT": switch("cipevent", "+CIPEVENT="),
    "STANDBY": action(_standby),
    "ERRNO": reading(_errno),
    "ERRVERBOSE": switch("verbose_errors", "+ERRVERBOSE:"),
    "SECRETS": value(_secrets_query, _secrets_set),
    # Extension (AT+CMD?, AT+HELP): every command and the forms it accepts, from the command
    # index (no group is loaded for it).
    "CMD": (None, registry.listing, None, None),
    "HELP": action(registry.listing),
}
