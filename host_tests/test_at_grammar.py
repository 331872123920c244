"""Layer 1: the pure AT grammar (firmware/at.py) under CPython, table-driven."""

import pytest

from firmware import at
from firmware.at import AtError

PARSE = [
    (b"AT", ("", at.EXEC, [])),
    (b"AT+FWVER", ("FWVER", at.EXEC, [])),
    (b"AT+FWVER?", ("FWVER", at.QUERY, [])),
    (b"+++AT", ("", at.EXEC, [])),
    (b"+++AT+FWVER?", ("FWVER", at.QUERY, [])),
    (b"AT+WSAP=?", ("WSAP", at.TEST, [])),
    (b"AT+UARTE=ON", ("UARTE", at.SET, ["ON"])),
    (b"AT+X=1,,3", ("X", at.SET, ["1", None, "3"])),
    (b'AT+X=1,"",3', ("X", at.SET, ["1", "", "3"])),
    (b"AT+X=", ("X", at.SET, [None])),
    (b"AT+CIPSTART=4,tcp_server,8080,", ("CIPSTART", at.SET, ["4", "tcp_server", "8080"])),
    (
        b"AT+MQTTCID=a|securemode=3\\,signmethod=hmacsha1|",
        ("MQTTCID", at.SET, ["a|securemode=3,signmethod=hmacsha1|"]),
    ),
    (b"AT+X=a\\\\,b", ("X", at.SET, ["a\\", "b"])),
    (b"AT+X=a\\b", ("X", at.SET, ["a\\b"])),
    (b"AT+WJAP=my net,pass word", ("WJAP", at.SET, ["my net", "pass word"])),
    ("AT+WJAP=caf\u00e9,k".encode(), ("WJAP", at.SET, ["caf\u00e9", "k"])),
    # a quoted parameter may hold commas; quotes elsewhere, or never closed, are characters
    (
        b'AT+WJAP="Cafe Wi-Fi, 2nd floor",key',
        ("WJAP", at.SET, ["Cafe Wi-Fi, 2nd floor", "key"]),
    ),
    (b'AT+X="x",', ("X", at.SET, ["x"])),
    (b'AT+X=,"a,b"', ("X", at.SET, [None, "a,b"])),
    (b'AT+X="a"b",c', ("X", at.SET, ['a"b', "c"])),
    (b'AT+X=a"b,"c', ("X", at.SET, ['a"b', '"c'])),
    (b'AT+X="abc', ("X", at.SET, ['"abc'])),
    (b'AT+X="c\\,d",e\\,f', ("X", at.SET, ["c,d", "e,f"])),
    (
        b"AT+UART=115200, 8, 1, NONE, NONE",
        ("UART", at.SET, ["115200", " 8", " 1", " NONE", " NONE"]),
    ),
    (b"AT+WJAP= my net , key ", ("WJAP", at.SET, [" my net ", " key "])),
]


@pytest.mark.parametrize(("line", "want"), PARSE)
def test_parse(line, want):
    assert at.parse(line) == want


BAD = [
    b"at",
    b"at+fwver?",
    b"AT+",
    b"AT+fwver",
    b"AT+AT+WDHCP?",
    b"AT+X?=",
    b"AT+X??",
    b"+++",
    b"++++AT",
    b"ATE0",
    b"AT+X=\xff\xfe",
    b"\x00\x01AT",
]


@pytest.mark.parametrize("line", BAD)
def test_parse_rejects(line):
    with pytest.raises(AtError) as e:
        at.parse(line)
    assert e.value.code == at.E_SYNTAX


def test_checks():
    assert at.integer(["7"], 0, 1, 8) == 7
    assert at.integer(["+8"], 0, -12, 14) == 8
    assert at.integer(["-12"], 0, -12, 14) == -12
    assert at.integer([" 7\t"], 0, 1, 8) == 7  # blanks around numbers and keywords
    assert at.choice([" NONE "], 0, ("NONE", "EVEN")) == "NONE"
    assert at.text([" my net "], 0, 16) == " my net "  # never in text (SSIDs, keys, topics)
    for bad in (["x"], [None], [""], [" "], ["9"], ["1.5"], ["+"], ["7 7"]):
        with pytest.raises(AtError):
            at.integer(bad, 0, 1, 8)
    with pytest.raises(AtError):
        at.integer([], 0, 1, 8)
    assert at.on_off(["ON"], 0) is True
    with pytest.raises(AtError):
        at.on_off(["on"], 0)
    assert at.text(["abc"], 0, 3) == "abc"
    with pytest.raises(AtError):
        at.text(["abcd"], 0, 3)
    assert at.text([None], 0, 3, least=0) == ""
    at.count([1, 2], 2)
    with pytest.raises(AtError) as e:
        at.count([1], 2, 3)
    assert e.value.code == at.E_COUNT


def test_escape_round_trip():
    for s in ("plain", "a,b", "back\\slash,comma"):
        line = b"AT+X=" + at.escape(s).encode() + b",2"
        assert at.parse(line)[2] == [s, "2"]
