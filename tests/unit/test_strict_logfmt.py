"""The strict reader of the tests (tests/strict_logfmt.py) rejects what it must."""

from __future__ import annotations

import pytest
import strict_logfmt as strict


def test_accepts_what_output_writes():
    """Bare and quoted values, escape units, \\" inside quotes, the empty value."""
    line = ('event=summary remote=10.0.0.7 pid=17617 verdict=bare_lf '
            'reason="451 smtplf after 5 bare LF" text="a\\\\b \\x01\\"q\\"\\r\\n" empty=""\n')
    assert strict.parse(line) == {
        "event": "summary", "remote": "10.0.0.7", "pid": "17617", "verdict": "bare_lf",
        "reason": "451 smtplf after 5 bare LF", "text": 'a\\\\b \\x01"q"\\r\\n', "empty": ""}
    assert strict.unescape('a\\\\b \\x01"q"\\r\\n') == b'a\\b \x01"q"\r\n'


@pytest.mark.parametrize("line", [
    'event=x text="abc\n',  # unterminated quote
    'event=x text="ab\\" stage=y\n',  # the closing quote escaped by a lone backslash
    'event=x text="ab\\\\\\" y=1\n',  # the same after a whole unit
    'event=x text=a"b\n',  # stray quote in a bare value
    'event=x text="a"b\n',  # garbage after a quoted value
    'event=x text="a\\x0"\n',  # half an escape
    'event=x text="a\\q"\n',  # unknown escape
    'event=x text="a\\X41"\n',  # upper-case escape
    'event=x a=1 a=2\n',  # duplicate key
    'event=x  a=1\n',  # two spaces
    'event=x a=1 \n',  # trailing space
    'event=x a=\n',  # empty bare value
    'event=x a=b=c\n',  # '=' in a bare value
    'event=x a=b\\c\n',  # backslash in a bare value
    'event=x A=1\n',  # key syntax
    'a=1 event=x\n',  # event not first
    'event=x text="plain"\n',  # needless quotes: output.py never writes them
    'event=x a=\x01\n',  # control byte
    'event=x a=1\n\n',  # two lines
    '',
])
def test_rejects_malformed_lines(line):
    """Unterminated or stray quotes, half escapes, duplicate keys, trailing garbage."""
    with pytest.raises(strict.StrictError):
        strict.parse(line)


@pytest.mark.parametrize("line", [
    '{"event": "x", "a": "b\\\\", "truncated": true\n',  # cut inside the object
    '{"event": "x", "a": "b", "a": "c"}\n',  # duplicate key
    '{"a": "b", "event": "x"}\n',  # event not first
    '{"event": "x", "a": "\\\\q"}\n',  # not escaped text (a lone backslash unit)
    '{"event": "x", "a": 1.5}\n',  # float
    '{"event": "x"} {}\n',  # trailing garbage
    '{"event": "x",\r"a": "b"}\n',  # a raw CR: JSON whitespace, a line break on a terminal
    '{"event": "x",\t"a": 1}\n',  # a raw TAB
    '{"event":"x","a":1}\n',  # not as output.py spaces it
    '{"event": "x", "a": "\\u0041"}\n',  # another spelling of "A"
])
def test_json_rejects_malformed_lines(line):
    """Invalid JSON, duplicate or misplaced keys, values that are not escaped text."""
    with pytest.raises(strict.StrictError):
        strict.parse_json(line)
