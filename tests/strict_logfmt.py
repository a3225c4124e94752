"""A strict reader of supervise-smtp's event lines, independent of the package.

The package's own ``parse_logfmt`` is lenient (it reads what it is given);
this one accepts exactly what ``supervise_smtp/session/output.py`` promises to write
and rejects everything else, so that a test reading a line through it proves
the line is well formed and carries no forged key.

Grammar of one logfmt line (``parse``)::

    line    = pair *( SP pair ) [ LF ]          ; one space between pairs, none at the end
    pair    = key "=" ( bare / quoted )
    key     = [a-z_] *[a-z0-9_]                  ; each key at most once; the first is "event"
    bare    = 1*( printable ASCII except SP DQUOTE "=" "\\" )
    quoted  = DQUOTE *( plain / unit / %x5C DQUOTE ) DQUOTE
              ; used only when needed: empty, or holding SP "=" DQUOTE or "\\"
    plain   = printable ASCII (0x20-0x7e) except DQUOTE and "\\"
    unit    = "\\\\" / "\\n" / "\\r" / "\\t" / "\\x" 2( [0-9a-f] )

A value is *escaped text* (``output.escape``): printable ASCII in which a
backslash always starts one whole escape unit (``\\\\``, ``\\n``, ``\\r``,
``\\t``, ``\\xNN``, lower-case hex).  The logfmt layer adds a single escape,
``\\"`` for a double quote inside a quoted value; it never doubles a
backslash, which always belongs to a unit of the escaped text.  So a quoted
value can never end in a lone backslash, and a reader that takes ``\\\\`` and
``\\"`` as escapes (a standard logfmt reader) sees the same token boundaries.
``parse`` returns the escaped text of each value (``\\"`` turned back into
``"``, every unit kept as written); ``unescape`` gives the original bytes.

A JSON line (``parse_json``) is one object whose keys follow the same rule,
without duplicates, whose first key is "event", and whose values are
integers, booleans, or strings of escaped text; and it is written exactly as
``output.format_json`` writes it (``{"k": v, "k2": v2}``: one space after
each colon and comma, no other whitespace), so a raw CR or TAB, which JSON
would take as whitespace, or any other spelling of the same object is
refused too.

Any other line raises ``StrictError``: an unterminated quote, a stray quote,
a bare backslash, a half escape, a duplicate key, two spaces, trailing
garbage, a missing or misplaced ``event``.
"""

from __future__ import annotations

import json
import re

__all__ = ["StrictError", "parse", "parse_json", "unescape", "ESCAPED_TEXT"]


class StrictError(ValueError):
    """The line is not one that output.py may write."""


_KEY = r"[a-z_][a-z0-9_]*"
_BARE = r'[!#-<>-\[\]-~]+'  # printable, no space, no " = \
_UNIT = r'\\(?:[\\nrt]|x[0-9a-f]{2})'
_QUOTED = r'"((?:[ !#-\[\]-~]|' + _UNIT + r'|\\")*)"'
_PAIR = re.compile(rf"({_KEY})=(?:({_BARE})|{_QUOTED})")
_TOKEN = re.compile(_UNIT + r'|\\"')
ESCAPED_TEXT = re.compile(r"(?:[ -\[\]-~]|" + _UNIT + r")*")  # what a value may hold


def _text(line: str | bytes) -> str:
    """The line as text, without its newline; StrictError if not ASCII."""
    if isinstance(line, bytes):
        try:
            line = line.decode("ascii")
        except UnicodeDecodeError as err:
            raise StrictError(f"not ASCII: {line!r}") from err
    return line[:-1] if line.endswith("\n") else line


def parse(line: str | bytes) -> dict[str, str]:
    """The pairs of one logfmt event line, in order; StrictError if malformed."""
    text = _text(line)
    out: dict[str, str] = {}
    pos = 0
    while True:
        m = _PAIR.match(text, pos)
        if m is None:
            raise StrictError(f"bad pair at column {pos}: {text[pos:pos + 40]!r} in {line!r}")
        key, bare, quoted = m.group(1), m.group(2), m.group(3)
        if key in out:
            raise StrictError(f"duplicate key {key!r} in {line!r}")
        if bare is not None:
            out[key] = bare
        else:
            if quoted and not any(c in quoted for c in ' ="\\'):
                raise StrictError(f"needless quotes for {key!r} in {line!r}")
            out[key] = _TOKEN.sub(lambda t: '"' if t[0] == '\\"' else t[0], quoted)
        pos = m.end()
        if pos == len(text):
            break
        if text[pos] != " ":
            raise StrictError(f"garbage at column {pos}: {text[pos:pos + 40]!r} in {line!r}")
        pos += 1
    if next(iter(out)) != "event":
        raise StrictError(f"event= is not first in {line!r}")
    return out


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if not re.fullmatch(_KEY, key):
            raise StrictError(f"bad key {key!r}")
        if key in out:
            raise StrictError(f"duplicate key {key!r}")
        if isinstance(value, str):
            if not ESCAPED_TEXT.fullmatch(value):
                raise StrictError(f"not escaped text in {key!r}: {value!r}")
        elif not isinstance(value, int):  # bool included
            raise StrictError(f"bad value type in {key!r}: {value!r}")
        out[key] = value
    return out


def parse_json(line: str | bytes) -> dict[str, object]:
    """The members of one JSON event line, in order; StrictError if malformed."""
    text = _text(line)
    if "\n" in text or not text.startswith("{") or not text.endswith("}"):
        raise StrictError(f"not one JSON object: {line!r}")
    try:
        obj = json.loads(text, object_pairs_hook=_pairs)
    except ValueError as err:  # StrictError included
        raise StrictError(f"{err} in {line!r}") from err
    if not isinstance(obj, dict) or not obj or next(iter(obj)) != "event":
        raise StrictError(f"event is not first in {line!r}")
    written = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items()) + "}"
    if text != written:
        raise StrictError(f"not written as output.py writes JSON: {line!r}")
    return obj


_SIMPLE = {"\\\\": 0x5C, "\\n": 0x0A, "\\r": 0x0D, "\\t": 0x09}


def unescape(text: str) -> bytes:
    """The bytes behind escaped text (the inverse of output.escape)."""
    if not ESCAPED_TEXT.fullmatch(text):
        raise StrictError(f"not escaped text: {text!r}")
    out = bytearray()
    for m in re.finditer(_UNIT + "|.", text, re.S):
        unit = m[0]
        if len(unit) == 1:
            out.append(ord(unit))
        elif unit[1] == "x":
            out.append(int(unit[2:], 16))
        else:
            out.append(_SIMPLE[unit])
    return bytes(out)
