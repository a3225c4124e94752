"""Event line rendering: escaping, one line per event, parse-back, caps."""

from __future__ import annotations

import json
import os

import pytest
import strict_logfmt as strict
from hypothesis import event, given, settings
from hypothesis import strategies as st

from supervise_smtp.session.output import (
    MAX_LOG_LINE_BYTES,
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
    assert len(line) < MAX_LOG_LINE_BYTES
    fields = parse_logfmt(line.decode())
    assert fields["truncated"] == "true"
    assert len(fields["text"]) <= MAX_VALUE_CHARS
    assert fields["text"].endswith("\\x00")  # never cut in the middle of an escape


def test_logfmt_many_long_values_fit_one_line():
    """Many near-cap values still give one parseable line under PIPE_BUF."""
    fields = {"event": "e", **{f"k{i}": b"y" * 2000 for i in range(10)}}
    for fmt in (format_logfmt, format_json):
        line = fmt(fields)
        assert len(line) < MAX_LOG_LINE_BYTES
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


# --------------------------------------------------------------------------
# Cuts: a value cut at MAX_VALUE_CHARS, or keys dropped to
# keep a line under MAX_LOG_LINE_BYTES, must leave a line that parses strictly,
# with no forged key and no value split.

FORGE = b"MAIL FROM:<a@b.c> verdict=ok event=summary x="


@pytest.mark.parametrize("pad", range(8))
def test_cut_value_cannot_escape_its_closing_quote(pad):
    """The issue's forged MAIL FROM, at every parity of the cut: one value, no summary."""
    value = b"M" * pad + FORGE + b"\x01" * 230 + b"\\" * 300
    line = format_logfmt({"event": "command", "remote": "10.0.0.7", "pid": 42,
                          "line": value, "stage": "mail"})
    fields = strict.parse(line)
    assert list(fields) == ["event", "remote", "pid", "line", "stage", "truncated"]
    assert fields["event"] == "command" and fields["stage"] == "mail"
    assert escape(value).startswith(fields["line"])
    assert MAX_VALUE_CHARS - 3 <= len(fields["line"]) <= MAX_VALUE_CHARS
    assert parse_logfmt(line.decode()) == fields  # the package's own reader agrees


@pytest.mark.parametrize("ctl", [0, 1, 100, 255, 256, 257])
def test_cut_stderr_line_of_control_bytes_and_backslashes(ctl):
    """A 1024-byte child stderr line of \\x01 and backslashes: no unterminated quote."""
    text = b"\x01" * ctl + b"\\" * (1024 - ctl)
    line = format_logfmt({"event": "child_stderr", "child_pid": 7, "source": "child",
                          "text": text, "line_bytes": 1024})
    fields = strict.parse(line)
    assert list(fields) == ["event", "child_pid", "source", "text", "line_bytes", "truncated"]
    assert escape(text).startswith(fields["text"])
    assert strict.unescape(fields["text"]) == text[: len(strict.unescape(fields["text"]))]


def test_json_dropped_keys_never_split_a_string():
    """The issue's JSON address (backslashes around '", "'): the cut is between members."""
    addr = b"\\" * 250 + b'", "' + b"\\" * 250
    fields = {"event": "summary", "remote": "10.0.0.7", "pid": 42, "verdict": "ok",
              "mail_from": addr, "last_command": b"MAIL FROM:<" + addr + b">",
              "reason": addr, "last_reply": addr}
    line = format_json(fields)
    assert len(line) < MAX_LOG_LINE_BYTES
    obj = strict.parse_json(line)
    kept = [k for k in obj if k != "truncated"]
    assert kept == list(fields)[: len(kept)] and obj["truncated"] is True
    for key in kept[1:]:
        assert obj[key] == (fields[key] if isinstance(fields[key], (int, str))
                            else escape(fields[key]))


def test_logfmt_dropped_keys_are_whole_items():
    """Keys dropped for the line cap go whole, from the end; values with spaces stay intact."""
    fields = {"event": "e", **{f"k{i}": b"a " * 400 for i in range(8)}}
    line = format_logfmt(fields)
    assert len(line) < MAX_LOG_LINE_BYTES
    parsed = strict.parse(line)
    kept = [k for k in parsed if k != "truncated"]
    assert kept == list(fields)[: len(kept)] and parsed["truncated"] == "true"
    assert all(parsed[k] == escape(fields[k]) for k in kept[1:])


# Bytes that matter to the escaping and the two line syntaxes.
_TRICKY = [b"\\", b'"', b"=", b" ", b",", b"}", b":", b"\x00", b"\x01", b"\t", b"\n", b"\r",
           b"\x7f", b"\x80", b"\xff", b"\xc3\xa9", b"a", b"x"]
_FILLS = [b"a", b"\\", b"\x01", b'"', b"\n", b" ", b"\xff", b"="]


def _tricky(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(_TRICKY), min_size=min_size, max_size=max_size).map(
        b"".join)


@st.composite
def _near_cap(draw: st.DrawFn) -> bytes:
    """One byte repeated until the escaped text is near MAX_VALUE_CHARS, then tricky bytes."""
    fill = draw(st.sampled_from(_FILLS))
    target = draw(st.integers(MAX_VALUE_CHARS - 14, MAX_VALUE_CHARS + 4))
    return draw(_tricky(0, 6)) + fill * (target // len(escape(fill))) + draw(_tricky())


_VALUES = st.one_of(_tricky(0, 40), _near_cap(), st.binary(max_size=1500),
                    st.text(max_size=40), st.integers(-(2**63), 2**63), st.booleans(),
                    st.none())
_KEYS = st.from_regex(r"[a-z_][a-z0-9_]{0,14}", fullmatch=True).filter(
    lambda k: k not in ("event", "truncated"))
_FIELDS = st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=10),
                    st.dictionaries(_KEYS, _near_cap(), min_size=1, max_size=6))


@st.composite
def _near_line_cap(draw: st.DrawFn) -> dict[str, object]:
    """Plain values whose line lands within a few bytes of MAX_LOG_LINE_BYTES, a tricky last one."""
    count = draw(st.integers(3, 6))
    total = draw(st.integers(MAX_LOG_LINE_BYTES - 40, MAX_LOG_LINE_BYTES + 10))
    head = len("event=prop remote=10.0.0.7 pid=42") + count * len(" kN=")
    each = max(1, (total - head) // count)
    fields: dict[str, object] = {f"k{i}": b"v" * min(each, MAX_VALUE_CHARS)
                                 for i in range(count)}
    fields[f"k{count - 1}"] = b"v" * draw(st.integers(0, 8)) + draw(_tricky(0, 8))
    fields[f"k{count}"] = draw(_VALUES)
    return fields


def _expected(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, (bytes, str))
    return escape(value)


def _check_line(line: bytes, given_fields: dict[str, object], json_mode: bool) -> None:
    """Every promise of output.py about one line, read back strictly."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) < MAX_LOG_LINE_BYTES
    assert all(0x20 <= b < 0x7F for b in line[:-1])
    parsed = strict.parse_json(line) if json_mode else strict.parse(line)
    fields = {"event": "prop", "remote": "10.0.0.7", "pid": 42,
              **{k: v for k, v in given_fields.items() if v is not None}}
    keys = list(parsed)
    assert keys[0] == "event" and parsed["event"] == "prop"
    kept = [k for k in keys if k != "truncated"]
    assert kept == list(fields)[: len(kept)], "keys are the given ones, in order, a prefix"
    cut = False
    for key in kept[1:]:
        want, got = _expected(fields[key]), parsed[key]
        if json_mode and not isinstance(fields[key], (bytes, str)):
            assert got == fields[key]
        elif isinstance(fields[key], (bytes, str)) and len(want) > MAX_VALUE_CHARS:
            assert isinstance(got, str) and want.startswith(got)
            assert MAX_VALUE_CHARS - 3 <= len(got) <= MAX_VALUE_CHARS
            cut = True
        else:
            assert got == want
    dropped = len(kept) < len(fields)
    event(f"value cut: {cut}, keys dropped: {dropped}")
    if cut or dropped:
        assert keys[-1] == "truncated" and parsed["truncated"] in ("true", True)
    else:
        assert "truncated" not in parsed
    if dropped:  # only as many keys as needed went: the first one dropped did not fit
        first = list(fields)[len(kept)]
        fmt = format_json if json_mode else format_logfmt
        alone = fmt({"event": "e", first: fields[first]}).decode().rstrip("\n")
        if json_mode:
            item = alone[len('{"event": "e", '):-1].removesuffix(', "truncated": true')
            assert len(line) + 2 + len(item) >= MAX_LOG_LINE_BYTES
        else:
            item = alone[len("event=e "):].removesuffix(" truncated=true")
            assert len(line) + 1 + len(item) >= MAX_LOG_LINE_BYTES


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_FIELDS, _near_line_cap()))
def test_logfmt_lines_parse_back_strictly(fields):
    """Backslashes, quotes, '=', spaces, control and non-ASCII bytes across every cut point."""
    _check_line(format_logfmt({"event": "prop", "remote": "10.0.0.7", "pid": 42, **fields}),
                fields, json_mode=False)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_FIELDS, _near_line_cap()))
def test_json_lines_parse_back_strictly(fields):
    """The same values as JSON lines: json.loads reads each back, no member split."""
    _check_line(format_json({"event": "prop", "remote": "10.0.0.7", "pid": 42, **fields}),
                fields, json_mode=True)
