"""Reading supervise-smtp's event lines back, tolerant of everything else.

A log directory holds more than our lines: tcpserver's (``tcpserver: end
123 status 256``), qmail-scanner's and other programs' stderr, a line a
crash cut in half.  ``parse_event`` sorts the text after the timestamp into
one of three: ours (a dict of its keys and values), FOREIGN (not an event
line at all) or MALFORMED (it starts like one of ours but does not parse:
a quote never closed, a raw control byte, JSON that is not an object).  It
never raises.

Values stay the escaped text output.py wrote (printable ASCII; ``\\"``
inside quotes turned back into ``"``), so whatever is shown from them is as
safe as the log itself.  A JSON line (``--format json``) gives the same
dict: integers and booleans as their logfmt text, strings not printable
ASCII escaped again.  tests/strict_logfmt.py is the strict reader of the
same grammar; this one accepts more (a value with ``=`` or ``\\`` unquoted,
an empty bare value) and still refuses what would make the fields ambiguous.
"""

from __future__ import annotations

import json
import re

from supervise_smtp.session.output import escape

__all__ = ["FOREIGN", "MALFORMED", "parse_event"]

FOREIGN = "foreign"
MALFORMED = "malformed"

# One pair (key, quoted value or bare value, then a space or the end), or one
# character of anything else (junk: the line is malformed).  Quoted text is
# printable ASCII, with a backslash always followed by one printable character
# (the loop unrolled: runs of plain characters between escapes, for speed).
_PAIR = re.compile(
    r'([a-z_][a-z0-9_]*)=(?:"([ !#-\[\]-~]*(?:\\[ -~][ !#-\[\]-~]*)*)"|([!#-~]*))(?: +|$)|(.)'
)


def _logfmt(text: str) -> dict[str, str] | str:
    fields: dict[str, str] = {}
    for key, quoted, bare, junk in _PAIR.findall(text):
        if junk:
            return MALFORMED
        fields[key] = (quoted.replace('\\"', '"') if '\\"' in quoted else quoted) if quoted else (
            bare)
    return fields


def _json(text: str) -> dict[str, str] | str:
    try:
        obj = json.loads(text)
    except ValueError:
        return MALFORMED
    if not isinstance(obj, dict):
        return MALFORMED
    if not isinstance(obj.get("event"), str):
        return FOREIGN  # someone else's JSON
    fields: dict[str, str] = {}
    for key, value in obj.items():
        if value is True:
            fields[key] = "true"
        elif value is False:
            fields[key] = "false"
        elif isinstance(value, int):
            fields[key] = str(value)
        elif isinstance(value, str):
            fields[key] = value if value.isascii() and value.isprintable() else escape(value)
        elif value is None:
            continue
        else:
            return MALFORMED
    return fields


def parse_event(text: str) -> dict[str, str] | str:
    """The keys and values of one of our event lines, or FOREIGN, or MALFORMED.

    ``text`` is the line after its timestamp, without the newline.  Ours:
    logfmt that starts with ``event=``, or a JSON object with an ``event``
    string.  The result has an ``event`` key whenever it is a dict.
    """
    if text.startswith("event="):
        fields = _logfmt(text)
        if isinstance(fields, dict) and fields.get("event"):
            return fields
        return MALFORMED
    if text.startswith("{"):
        return _json(text)
    return FOREIGN
