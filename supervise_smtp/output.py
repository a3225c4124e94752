"""Event lines on fd 2: logfmt (default) or JSON lines.

This is the only writer to fd 2.  Client and child bytes are hostile, so every
value is escaped here: no byte can start a new line, a new key or a forged
value.  Escaped text is printable ASCII only: backslash, and `\\xNN` for
control bytes, DEL and non-ASCII (`\\n`, `\\r`, `\\t` for the common three).

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
    if isinstance(value, (bytes, bytearray, memoryview)):
        return escape(bytes(value))
    if isinstance(value, (tuple, list, frozenset, set)):
        return ",".join(t for t in map(_text, value) if t is not None)
    return escape(str(value))


def _capped(fields: dict[str, object]) -> list[tuple[str, str | int | bool]]:
    items: list[tuple[str, str | int | bool]] = []
    truncated = False
    for key, value in fields.items():
        if value is None or (value is False and key == "truncated"):
            continue  # truncated= appears only when something was cut
        if isinstance(value, int):  # bool included
            items.append((key, value))
            continue
        text = _text(value)
        if text is None:
            continue
        if len(text) > MAX_VALUE_CHARS:
            cut = text[:MAX_VALUE_CHARS]
            tail = cut.rfind("\\", MAX_VALUE_CHARS - 4)
            text = cut[:tail] if tail >= 0 else cut
            truncated = True
        items.append((key, text))
    if truncated:
        items = [(k, v) for k, v in items if k != "truncated"]
        items.append(("truncated", True))
    return items


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
    line = " ".join(k + "=" + _logfmt_value(v) for k, v in _capped(fields))
    return _fit(line)


def _json_value(value: str | int | bool) -> str:
    if not isinstance(value, str):
        return _scalar(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_json(fields: dict[str, object]) -> bytes:
    """One JSON object per line; string values hold the same escaped text."""
    inner = ", ".join('"' + k + '": ' + _json_value(v) for k, v in _capped(fields))
    return _fit("{" + inner + "}")


def _fit(line: str) -> bytes:
    data = line.encode("ascii")
    if len(data) >= MAX_LINE_BYTES:
        # Only many near-cap values get here; drop whole trailing keys so
        # what stays still parses.
        json = data.startswith(b"{")
        sep = b", " if json else b" "
        while len(data) >= MAX_LINE_BYTES - 40:
            cut = data.rfind(sep, 0, len(data) - 1)
            if cut <= 0:
                break
            data = data[:cut]
            if json:
                data = data.rstrip(b"}")
        data += b', "truncated": true}' if json else b" truncated=true"
    return data + b"\n"


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
