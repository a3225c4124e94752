"""Event line rendering: escaping, one line per event, parse-back, caps."""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st

from supervise_smtp.output import (
    MAX_LINE_BYTES,
    MAX_VALUE_CHARS,
    Output,
    escape,
    format_json,
    format_logfmt,
    parse_logfmt,
)


def _unescape(text: str) -> bytes:
    """Inverse of escape(), to prove it loses nothing."""
    out = bytearray()
    i = 0
    simple = {"n": 10, "r": 13, "t": 9, "\\": 92}
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ord(ch))
            i += 1
        elif text[i + 1] == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out.append(simple[text[i + 1]])
            i += 2
    return bytes(out)


def test_escape_control_and_non_ascii_bytes():
    """Control bytes, DEL, backslash and non-ASCII become visible escapes."""
    assert escape(b"a\r\n\t\x00\x7f\xff\\b") == "a\\r\\n\\t\\x00\\x7f\\xff\\\\b"
    assert escape("été") == "\\xc3\\xa9t\\xc3\\xa9"
    assert escape(b"plain text") == "plain text"


def test_logfmt_quotes_values_that_could_forge_keys():
    """A client value with spaces, '=' or quotes stays one quoted value."""
    line = format_logfmt({"event": "x", "text": b'EHLO a verdict=ok "x"'}).decode()
    assert line == 'event=x text="EHLO a verdict=ok \\"x\\""\n'
    assert parse_logfmt(line) == {"event": "x", "text": 'EHLO a verdict=ok "x"'}


def test_logfmt_types_and_none_skipped():
    """Integers, booleans and floats render plainly; None leaves the key out."""
    line = format_logfmt({"event": "e", "n": 3, "ok": True, "bad": False, "s": 0.25, "x": None})
    assert line == b"event=e n=3 ok=true bad=false s=0.250\n"


def test_logfmt_caps_long_values():
    """A 1 MB value is cut under the line limit and marked truncated."""
    line = format_logfmt({"event": "e", "text": b"\x00" * 1_000_000})
    assert len(line) < MAX_LINE_BYTES
    fields = parse_logfmt(line.decode())
    assert fields["truncated"] == "true"
    assert len(fields["text"]) <= MAX_VALUE_CHARS
    assert fields["text"].endswith("\\x00")  # never cut in the middle of an escape


def test_logfmt_many_long_values_fit_one_line():
    """Many near-cap values still give one parseable line under PIPE_BUF."""
    fields = {"event": "e", **{f"k{i}": b"y" * 2000 for i in range(10)}}
    for fmt in (format_logfmt, format_json):
        line = fmt(fields)
        assert len(line) < MAX_LINE_BYTES + 40
        assert line.count(b"\n") == 1
    assert parse_logfmt(format_logfmt(fields).decode())["truncated"] == "true"
    assert json.loads(format_json(fields))["truncated"] is True


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.binary(max_size=300),
                       max_size=8))
def test_logfmt_roundtrip_property(values):
    """Any bytes give one printable line that parses back to the escaped values."""
    fields = {"event": "prop", **values}
    line = format_logfmt(fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert all(0x20 <= b < 0x7F for b in line[:-1])
    parsed = parse_logfmt(line.decode())
    assert parsed["event"] == "prop"
    for key, value in values.items():
        if key != "event":
            assert parsed[key] == escape(value)
            assert _unescape(parsed[key]) == value


@given(st.binary(max_size=300))
def test_json_roundtrip_property(value):
    """JSON lines are valid JSON holding the same escaped text as logfmt."""
    line = format_json({"event": "j", "v": value, "n": 5})
    assert line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj == {"event": "j", "v": escape(value), "n": 5}


def test_output_emit_key_order_and_single_write(tmp_path):
    """event= first, then the base keys, then the fields, one line per emit."""
    r, w = os.pipe()
    out = Output(fd=w)
    out.base = {"remote": "1.2.3.4", "pid": 42}
    out.emit("connect", {"child_pid": 43}, prog="qmail-smtpd")
    os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    assert data == b"event=connect remote=1.2.3.4 pid=42 child_pid=43 prog=qmail-smtpd\n"


def test_output_write_error_disables_quietly():
    """A broken log pipe never raises into the session."""
    r, w = os.pipe()
    os.close(r)
    out = Output(fd=w)
    out.emit("x", a=1)  # EPIPE (SIGPIPE is ignored by Python)
    assert out.broken
    out.emit("y")
    os.close(w)
