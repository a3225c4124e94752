"""Event lines on fd 2: logfmt (default) or JSON lines.

This is the only writer to fd 2.  Client and child bytes are hostile, so every
value is escaped here: no byte can start a new line, a new key or a forged
value.  Escaped text is printable ASCII only: backslash, and `\\xNN` for
control bytes, DEL and non-ASCII (`\\n`, `\\r`, `\\t` for the common three).
A value longer than MAX_VALUE_CHARS is cut between two escapes, never inside
one, and a line that would reach MAX_LOG_LINE_BYTES loses whole trailing keys:
either way the line ends with ``truncated=true`` and still parses (a cut can
never leave a lone backslash that escapes the closing quote).

Each line is written with a single ``os.write`` and kept under PIPE_BUF
(4096), so that lines from the many wrapper processes that share one log pipe
(one per tcpserver connection) never interleave.

The mail never waits for the log service.  fd 2 is one pipe shared by
tcpserver and every wrapper: it stays blocking (O_NONBLOCK would change
tcpserver's pipe too), and POLLOUT before a write proves nothing (another
writer can take the room first).  So on the per-connection path
(``Output(background=True)``) the relay only appends finished lines to a
small bounded backlog, and a writer thread (``_thread``, started at the
first line, every signal blocked in it) does the blocking writes, whole
lines in order.  What is lost when the log service stops reading: lines
beyond the backlog (BACKLOG_LINES lines or BACKLOG_BYTES bytes), counted in
``Output.dropped`` and reported as ``log_dropped=N`` on the summary, which
always gets in; and at the end of the connection whatever is still waiting
after ``close``'s timeout (about a second), when the process exits.
A write error (EPIPE, EBADF) stops the output and never changes the SMTP
session or our exit status.  (Not an interval timer interrupting a blocked
write: SIGALRM is one of the signals forwarded to the child, and under
PEP 475 os.write retries EINTR unless the handler raises, which races with a
write that completed.)
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs start-up; mypy knows this name
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BACKLOG_BYTES",
    "BACKLOG_LINES",
    "MAX_LOG_LINE_BYTES",
    "MAX_VALUE_CHARS",
    "Output",
    "escape",
    "format_logfmt",
    "format_json",
    "parse_logfmt",
    "render",
]

MAX_LOG_LINE_BYTES = 4000
MAX_VALUE_CHARS = 1024
BACKLOG_LINES = 64  # lines waiting for fd 2, per connection (background output)
BACKLOG_BYTES = 256 * 1024  # and their bytes (--stderr pass lines can be 64 KiB)
_WRITER_STACK = 256 * 1024  # the writer thread's stack: it only calls os.write

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


def render(value: object, limit: int = MAX_VALUE_CHARS) -> str | None:
    """A field's value as every writer shows it (log line, alert environment,
    transcript): printable ASCII, escaped, ``true``/``false``, sequences
    comma-joined, cut to ``limit`` between whole escapes; None: leave it out."""
    text = _text(value)
    if text is not None and len(text) > limit:
        text = _cut(text, limit)
    return text


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
    """Join formatted items into one line under MAX_LOG_LINE_BYTES (newline included).

    Only lines with many near-cap values get too long: whole trailing items
    are dropped (never part of one, so what stays parses) and ``mark``
    (truncated) ends the line.  The first item, event=, always stays.
    """
    size = len(head) + len(tail) + 1 + sum(map(len, parts)) + len(sep) * (len(parts) - 1)
    if truncated or size >= MAX_LOG_LINE_BYTES:
        size += len(mark)
        while size >= MAX_LOG_LINE_BYTES and len(parts) > 1:
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
    """Writes events for one connection; ``base`` keys lead every line.

    ``background=False`` (subcommands, tests): each line is written before
    ``emit`` returns.  ``background=True`` (the per-connection path): lines go
    to a bounded backlog (BACKLOG_LINES lines, BACKLOG_BYTES bytes) that a
    writer thread, started at the first line, writes to ``fd`` in order,
    whole lines with blocking writes; the caller never waits for ``fd``.
    When the backlog is full a line is dropped and counted in ``dropped``,
    except the summary, which always gets in.  ``close`` waits a bounded time
    for the backlog; what is still there when the process ends is lost.

    ``nonblocking=True`` (serve's workers): ``fd`` is an O_NONBLOCK file
    description of our own on the log pipe (the resident parent opened it
    before dropping privileges; fd 2's own description stays blocking).  A
    line is written at once when the pipe has room -- a write of less than
    PIPE_BUF goes in whole or not at all -- else it waits in the same bounded
    backlog for the next line or for ``close``.  No thread: a process that
    was forked from a warm parent pays no thread start and no handoff.
    """

    def __init__(self, fmt: str = "logfmt", fd: int = 2, background: bool = False,
                 nonblocking: bool = False) -> None:
        self.fd = fd
        self.nonblocking = nonblocking
        self.format = format_json if fmt == "json" else format_logfmt
        self.base: dict[str, object] = {}
        self.broken = False
        self.dropped = 0  # lines lost to a full backlog
        self.background = background
        self._lines: list[bytes] = []  # the backlog; [0] is being written
        self._bytes = 0
        self._lock: Any = None  # guards the fields above and below; made with the thread
        self._wake: Any = None  # held while the writer has nothing to do
        self._done: Any = None  # released when the writer has stopped
        self._idle = False  # the writer waits on _wake
        self._closing = False
        self._stopped = False  # close saw the writer stop
        self._no_thread = False  # the thread could not start: poll before each write

    def emit(self, event: str, fields: dict[str, object] | None = None, /,
             **more: object) -> None:
        """Write one event line: event=, the base keys, then the fields."""
        line: dict[str, object] = {"event": event}
        line.update(self.base)
        if fields:
            line.update(fields)
        if more:
            line.update(more)
        self.write_raw(self.format(line), event == "summary")

    def write_raw(self, data: bytes, force: bool = False) -> None:
        """Write one or more whole lines; ``force``: into the backlog even when full.

        A write error (EPIPE, EBADF...) disables output; nothing is raised.
        """
        if self.broken:
            return
        if self.nonblocking:
            self._write_now(data, force)
            return
        if not self.background:
            self._write(data)
            return
        if self._lock is None:
            self._start()
        if self._no_thread:
            if self._ready():
                self._write(data)
            else:
                self.dropped += 1
            return
        with self._lock:
            if self.broken:
                return
            if self._closing or not force and (
                    len(self._lines) >= BACKLOG_LINES or self._bytes + len(data) > BACKLOG_BYTES):
                self.dropped += 1
                return
            self._lines.append(data)
            self._bytes += len(data)
            if self._idle:
                self._idle = False
                self._wake.release()

    def close(self, timeout: float = 1.0) -> bool:
        """Wait at most ``timeout`` seconds for the backlog to be written.

        True when every line got out.  Call it once, last: lines written
        after it are dropped.  The writer thread may stay blocked in a write;
        the process ends anyway (os._exit does not wait for it).
        """
        if self.nonblocking:
            return self._drain(timeout)
        if self._lock is None or self._no_thread or self._stopped:
            return not self.broken
        with self._lock:
            self._closing = True
            if self._idle:
                self._idle = False
                self._wake.release()
        self._stopped = bool(self._done.acquire(True, max(timeout, 0.0)))
        return self._stopped and not self.broken

    def _write_now(self, data: bytes, force: bool) -> None:
        """nonblocking: the backlog first, then ``data``; what does not fit waits."""
        lines = self._lines
        if lines:
            self._flush_some()
        if not lines and not self.broken:
            try:
                os.write(self.fd, data)  # < PIPE_BUF: all or EAGAIN
                return
            except BlockingIOError:
                pass
            except (OSError, ValueError):
                self.broken = True
                return
        if not force and (len(lines) >= BACKLOG_LINES or self._bytes + len(data) > BACKLOG_BYTES):
            self.dropped += 1
            return
        lines.append(data)
        self._bytes += len(data)

    def _flush_some(self) -> None:
        """nonblocking: write backlog lines while the pipe takes them."""
        lines = self._lines
        while lines and not self.broken:
            try:
                os.write(self.fd, lines[0])
            except BlockingIOError:
                return
            except (OSError, ValueError):
                self.broken = True
                lines.clear()
                self._bytes = 0
                return
            self._bytes -= len(lines.pop(0))

    def _drain(self, timeout: float) -> bool:
        """nonblocking: wait at most ``timeout`` for the pipe to take the backlog."""
        import select
        import time

        deadline = time.monotonic() + max(timeout, 0.0)
        self._flush_some()
        while self._lines and not self.broken:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                select.select([], [self.fd], [], left)
            except (OSError, ValueError):
                self.broken = True
                break
            self._flush_some()
        return not self._lines and not self.broken

    def _start(self) -> None:
        """Start the writer thread: signals blocked in it, a small stack."""
        import _signal
        import _thread

        self._lock = _thread.allocate_lock()
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        # The thread inherits the mask: every signal goes to the main thread,
        # whose poll() it must interrupt (signal forwarding, SIGCHLD).
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
        try:
            size = _thread.stack_size(_WRITER_STACK)
            try:
                _thread.start_new_thread(self._writer, ())
            finally:
                _thread.stack_size(size)
        except (RuntimeError, MemoryError, ValueError):  # e.g. RLIMIT_NPROC
            self._no_thread = True
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)

    def _writer(self) -> None:
        """The writer thread: backlog lines to fd, in order, until closed or broken."""
        lock, wake, lines = self._lock, self._wake, self._lines
        while True:
            with lock:
                if lines:
                    data = lines[0]
                elif self._closing:
                    break
                else:
                    self._idle = True
                    data = None
            if data is None:
                wake.acquire()
                continue
            ok = self._write(data)
            with lock:
                del lines[0]
                self._bytes -= len(data)
                if not ok:
                    lines.clear()
                    self._bytes = 0
                    break
        self._done.release()

    def _write(self, data: bytes) -> bool:
        """Blocking write of all of ``data``; False (and broken) on an error."""
        try:
            while data:
                try:
                    n = os.write(self.fd, data)
                except BlockingIOError:  # someone made the shared pipe non-blocking
                    import select

                    select.select([], [self.fd], [])
                    continue
                data = data[n:]
        except (OSError, ValueError):
            self.broken = True
            return False
        return True

    def _ready(self) -> bool:
        """Without a writer thread: write only when fd has room right now."""
        import select

        try:
            return bool(select.select([], [self.fd], [], 0)[1])
        except (OSError, ValueError):
            self.broken = True
            return False
