# The AT line grammar and parameter checks: pure functions, no I/O.
# A command line is  AT+<NAME>[op][p1,p2,...]  (without its \r).

try:
    from micropython import const
except ImportError:  # CPython, for the unit tests

    def const(x):
        return x


# Operators, also the index of the handler in a command-table row.
TEST = const(0)  # AT+X=?   (in this dialect: "the parameters the user set")
QUERY = const(1)  # AT+X?
SET = const(2)  # AT+X=<params>
EXEC = const(3)  # AT+X

# Error categories, after ESP-AT's ESP_AT_ERROR_NO sub-categories. The wire only ever says
# ERROR; the code and the detail are kept for AT+ERRNO (see README, extensions).
E_SYNTAX = const(1)  # the line is not AT+<NAME>[op][params]
E_UNKNOWN = const(2)  # no such command
E_OP = const(3)  # the command has no handler for this operator
E_COUNT = const(4)  # wrong number of parameters
E_PARAM = const(5)  # a parameter is out of range or malformed
E_STATE = const(6)  # not possible now (link down, busy, wrong mode)
E_FAIL = const(7)  # the operation was tried and failed
E_TIMEOUT = const(8)  # a data phase or a network operation timed out
E_UNSUPPORTED = const(9)  # exists in the spec, impossible on this hardware
E_INTERNAL = const(10)  # a bug: an unexpected exception in a handler


class AtError(Exception):
    def __init__(self, code, detail=""):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


# Split a command line (bytes) into (name, op, params).
# name is a str ("" for plain AT); params is a list of str, or None where a parameter was
# omitted (empty between commas). Inside a parameter "\," is a literal comma and "\\" a
# backslash; a parameter wrapped in double quotes is unquoted ("" is an empty string). A
# leading "+++" is ignored: transparent mode's escape, which a driver sends in command mode too
# and then goes on with its next command on the same line (wire notes).
def parse(line):
    if line[:3] == b"+++":
        line = line[3:]
    if line[:2] != b"AT":
        raise AtError(E_SYNTAX, "line does not start with AT")
    n = len(line)
    if n == 2:
        return "", EXEC, []
    if line[2] != 0x2B:  # "+"
        raise AtError(E_SYNTAX, "expected + after AT")
    i = 3
    while i < n and (0x41 <= line[i] <= 0x5A or 0x30 <= line[i] <= 0x39):  # A-Z 0-9
        i += 1
    if i == 3:
        raise AtError(E_SYNTAX, "missing command name")
    name = line[3:i].decode()
    rest = line[i:]
    if not rest:
        return name, EXEC, []
    if rest == b"?":
        return name, QUERY, []
    if rest == b"=?":
        return name, TEST, []
    if rest[0] != 0x3D:  # "="
        raise AtError(E_SYNTAX, "unexpected character after command name")
    return name, SET, split_params(rest[1:])


def split_params(raw):
    try:
        text = raw.decode()
    except UnicodeError:
        raise AtError(E_SYNTAX, "parameters are not UTF-8")
    if "\\" in text or '"' in text:
        params = _scan(text)
    else:
        params = [f or None for f in text.split(",")]
    # "AT+CIPSTART=4,tcp_server,8080," : a trailing empty parameter is tolerated (wire notes).
    if len(params) > 1 and params[-1] is None:
        params.pop()
    return params


# Split text at commas, character by character: "\," is a comma and "\\" a backslash
# anywhere; a parameter that starts with a double quote runs to the quote that ends it
# (followed by a comma or the end of the line), commas included, and is unquoted. A quote
# anywhere else, or one never closed, is an ordinary character.
def _scan(text):
    params = []
    field = []
    quoted = False  # the field began with a quote that is still open
    i = 0
    n = len(text)
    while i <= n:
        c = text[i] if i < n else ","  # the end of the line ends the last field
        if c == "\\" and i + 1 < n and text[i + 1] in ",\\":
            field.append(text[i + 1])
            i += 1
        elif c == '"' and not field and not quoted and _closes(text, i + 1):
            quoted = True
        elif c == '"' and quoted and (i + 1 == n or text[i + 1] == ","):
            quoted = False
            params.append("".join(field))
            field = []
            i += 1  # past the comma (or the end) that follows
        elif c == "," and not quoted:
            params.append("".join(field) or None)
            field = []
        else:
            field.append(c)
        i += 1
    return params


# True if a quote opened before text[i] is closed by a quote followed by a comma or the end.
def _closes(text, i):
    j = text.find('"', i)
    while j >= 0:
        if j + 1 == len(text) or text[j + 1] == ",":
            return True
        j = text.find('"', j + 1)
    return False


# Parameter checks. Each takes the parameter list and an index, and raises AtError(E_PARAM)
# naming the parameter (1-based, as a user counts) when the value does not fit.
def count(p, least, most=None):
    if most is None:
        most = least
    if not least <= len(p) <= most:
        raise AtError(E_COUNT, "need {}..{} parameters, got {}".format(least, most, len(p)))


def text(p, i, most, least=1):
    v = p[i] if i < len(p) else None
    if v is None:
        v = ""
    if not least <= len(v.encode()) <= most:
        raise AtError(E_PARAM, "parameter {}: length must be {}..{}".format(i + 1, least, most))
    return v


# Numbers and keywords tolerate blanks around them ("AT+UART=115200, 8, 1, NONE, NONE", as
# the document's own examples write); text() keeps them: they belong to SSIDs, keys, topics.
def _bare(p, i):
    v = p[i] if i < len(p) else None
    return v.strip(" \t") if v else v


def integer(p, i, lo, hi):
    v = _bare(p, i)
    try:
        if v is None or not (v.isdigit() or (v[0] in "+-" and v[1:].isdigit())):
            raise ValueError
        n = int(v)
    except (ValueError, IndexError):
        raise AtError(E_PARAM, "parameter {}: not a number".format(i + 1))
    if not lo <= n <= hi:
        raise AtError(E_PARAM, "parameter {}: must be {}..{}".format(i + 1, lo, hi))
    return n


def choice(p, i, choices):
    v = _bare(p, i)
    if v not in choices:
        raise AtError(E_PARAM, "parameter {}: must be one of {}".format(i + 1, ",".join(choices)))
    return v


def on_off(p, i):
    return choice(p, i, ("ON", "OFF")) == "ON"


def word(flag):
    return "ON" if flag else "OFF"


# Escape a value for a reply line the way parameters are written ("," -> "\,"), so that a
# stored SSID with a comma reads back as the host wrote it.
def escape(s):
    if "," not in s and "\\" not in s:
        return s
    return s.replace("\\", "\\\\").replace(",", "\\,")
