"""Event lines on fd 2: logfmt (default) or JSON lines.

This is the only writer to fd 2.  Client and child bytes are hostile, so every
value is escaped here: no byte can start a new line, a new key or a forged
value.  Escaped text is printable ASCII only: backslash, and `\\xNN` for
control bytes, DEL and non-ASCII (`\\n`, `\\r`, `\\t` for the common three).
A value longer than MAX_VALUE_CHARS is cut between two escapes, never inside
one, and a line that would reach MAX_LINE_BYTES loses whole trailing keys:
either way the line ends with ``truncated=true`` and still parses (a cut can
never leave a lone backslash that escapes the closing quote).

Each line is written with a single ``os.write`` and kept under PIPE_BUF
(4096), so that lines from the many wrapper processes that share one log pipe
(one per tcpserver connection) never interleave.  fd 2 is left blocking: the
log service's back-pressure is the supervisor's design, and a write error
there never changes the SMTP session or our exit status.
"""

from __future__ import annotations

import os

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_VALUE_CHARS",
    "Output",
    "escape",
    "format_logfmt",
    "format_json",
    "parse_logfmt",
]

MAX_LINE_BYTES = 4000
MAX_VALUE_CHARS = 1024

_TABLE = [chr(i) if 0x20 <= i < 0x7F else f"\\x{i:02x}" for i in range(256)]
_TABLE[ord("\\")] = "\\\\"
_TABLE[ord("\n")] = "\\n"
_TABLE[ord("\r")] = "\\r"
_TABLE[ord("\t")] = "\\t"
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("\\")}


def escape(value: bytes | str) -> str:
    """Printable-ASCII text for any bytes (str is taken as UTF-8)."""
    if isinstance(value, str):
        if value.isascii() and value.isprintable() and "\\" not in value:
            return value
        value = value.encode("utf-8", "surrogateescape")
    if value.isascii() and _PLAIN.issuperset(value):
        return value.decode("ascii")
    return "".join(map(_TABLE.__getitem__, value))


def _text(value: object) -> str | None:
    """Escaped text of one value, or None to leave the key out."""
    if value is None:
        return None
    if isinstance(value, int):  # bool included
        return _scalar(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    # Each byte (or character) escapes to at least one character: escaping
    # one more than the cap is enough to know the value is cut, and where.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return escape(bytes(value[:MAX_VALUE_CHARS + 1]))
    if isinstance(value, (tuple, list, frozenset, set)):
        return ",".join(t for t in map(_text, value) if t is not None)
    return escape(str(value)[:MAX_VALUE_CHARS + 1])


def _cut(text: str, limit: int) -> str:
    """The longest prefix of escaped text, at most ``limit`` long, made of whole escapes.

    In escaped text a backslash always starts a unit: ``\\xNN`` (4
    characters) or ``\\\\``, ``\\n``, ``\\r``, ``\\t`` (2): the cut never
    leaves a lone backslash (which would escape a closing quote) or half a unit.
    """
    i = 0
    while True:
        j = text.find("\\", i, limit)
        if j < 0:
            return text[:limit]
        i = j + (4 if text[j + 1] == "x" else 2)
        if i > limit:
            return text[:j]


def _capped(fields: dict[str, object]) -> tuple[list[tuple[str, str | int | bool]], bool]:
    """(key, escaped and capped value) pairs, and whether anything was cut.

    ``truncated`` is not an item: it ends the line when a value was cut here
    or the caller said so (``truncated=True``), and only then.
    """
    items: list[tuple[str, str | int | bool]] = []
    truncated = False
    for key, value in fields.items():
        if value is None:
            continue
        if key == "truncated":
            truncated = truncated or bool(value)
            continue
        if isinstance(value, int):  # bool included
            items.append((key, value))
            continue
        text = _text(value)
        if text is None:
            continue
        if len(text) > MAX_VALUE_CHARS:
            text = _cut(text, MAX_VALUE_CHARS)
            truncated = True
        items.append((key, text))
    return items, truncated


def _scalar(value: int | bool) -> str:
    """Booleans and integers read the same in logfmt and JSON."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _logfmt_value(value: str | int | bool) -> str:
    if not isinstance(value, str):
        return _scalar(value)
    if not value or " " in value or "=" in value or '"' in value or "\\" in value:
        return '"' + value.replace('"', '\\"') + '"'
    return value


def format_logfmt(fields: dict[str, object]) -> bytes:
    """One logfmt line (with newline), values escaped and capped."""
    items, truncated = _capped(fields)
    return _fit([k + "=" + _logfmt_value(v) for k, v in items], truncated, "", " ",
                "", " truncated=true")


def _json_value(value: str | int | bool) -> str:
    if not isinstance(value, str):
        return _scalar(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_json(fields: dict[str, object]) -> bytes:
    """One JSON object per line; string values hold the same escaped text."""
    items, truncated = _capped(fields)
    return _fit(['"' + k + '": ' + _json_value(v) for k, v in items], truncated, "{", ", ",
                "}", ', "truncated": true')


def _fit(parts: list[str], truncated: bool, head: str, sep: str, tail: str,
         mark: str) -> bytes:
    """Join formatted items into one line under MAX_LINE_BYTES (newline included).

    Only lines with many near-cap values get too long: whole trailing items
    are dropped (never part of one, so what stays parses) and ``mark``
    (truncated) ends the line.  The first item, event=, always stays.
    """
    size = len(head) + len(tail) + 1 + sum(map(len, parts)) + len(sep) * (len(parts) - 1)
    if truncated or size >= MAX_LINE_BYTES:
        size += len(mark)
        while size >= MAX_LINE_BYTES and len(parts) > 1:
            size -= len(parts.pop()) + len(sep)
        truncated = True
    line = head + sep.join(parts) + (mark if truncated else "") + tail + "\n"
    return line.encode("ascii")


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse one logfmt line back into a dict (values stay escaped text).

    Inside quotes only ``\\"`` is an escape of ours; any other backslash
    belongs to the escaped text and is kept.
    """
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n or line[i] == "\n":
            break
        eq = line.index("=", i)
        key = line[i:eq]
        i = eq + 1
        if i < n and line[i] == '"':
            i += 1
            buf = []
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                    if line[i] != '"':
                        buf.append("\\")
                buf.append(line[i])
                i += 1
            i += 1
            out[key] = "".join(buf)
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            out[key] = line[i:end].rstrip("\n")
            i = end
    return out


class Output:
    """Writes events for one connection; ``base`` keys lead every line."""

    def __init__(self, fmt: str = "logfmt", fd: int = 2) -> None:
        self.fd = fd
        self.format = format_json if fmt == "json" else format_logfmt
        self.base: dict[str, object] = {}
        self.broken = False

    def emit(self, event: str, fields: dict[str, object] | None = None, /,
             **more: object) -> None:
        """Write one event line: event=, the base keys, then the fields."""
        line: dict[str, object] = {"event": event}
        line.update(self.base)
        if fields:
            line.update(fields)
        if more:
            line.update(more)
        self.write_raw(self.format(line))

    def write_raw(self, data: bytes) -> None:
        """Write bytes with as few writes as the pipe allows; errors disable output."""
        if self.broken:
            return
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:
            self.broken = True
