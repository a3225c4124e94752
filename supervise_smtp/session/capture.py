"""Targeted, redacted transcript capture of one SMTP connection.

``Capture`` turns observer events into recordio-compatible lines::

    2026-11-25T11:00:00.123456 4242 < MAIL FROM:<a@example.org>
    2026-11-25T11:00:00.123789 4242 > 250 2.1.0 ok

(UTC timestamp, wrapper pid, ``<`` client to server, ``>`` server to client),
every text escaped with ``output.escape`` so no control byte reaches the file.
It never sees a raw byte: the AUTH exchange is ``[auth redacted]``, a message
body is only its size and anomaly counts, and TLS is only its hello/alert
summaries.

Lines are buffered in memory up to ``SPILL_BYTES``, then spilled to a
``.tmp-*`` file (mode 0600) in the capture directory; at most ``max_bytes``
of lines are kept, then one ``[truncated]`` line.  ``finish(verdict)`` keeps
the transcript (atomic rename to ``<start UTC>-<remote>-<pid>.txt``) only when
``when`` is None (always) or holds the verdict, else deletes it.

A directory that another user could write (group- or world-writable
without the sticky bit, or owned by someone else than us or root:
safedir.py) is refused the same way.  Any OSError (missing parent
directory, permission, ENOSPC) switches capture off for the rest of the
connection and is kept in ``error``; ``event`` and
``finish`` never raise, so the SMTP session is never affected.  The caller
logs one ``capture_error`` event from ``error``.
"""

from __future__ import annotations

import os
import time

from supervise_smtp.session.output import escape, render

TYPE_CHECKING = False
if TYPE_CHECKING:  # re, tempfile, typing: costly imports, per connection
    from collections.abc import Callable
    from typing import Any

__all__ = ["BODY_MODES", "SPILL_BYTES", "TRUNCATED", "Capture", "filename_safe", "timestamp"]

MAX_BODY_LINE = 2048  # a captured body line is cut here
SPILL_BYTES = 64 * 1024
BODY_MODES = ("none", "headers", "full")
TRUNCATED = "[truncated]"
AUTH_REDACTED = "[auth redacted]"

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_OPEN_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)

# DataEnd fields shown in the body summary, after bytes and lines.
_BODY_KEYS = (
    "bare_lf_count", "bare_lf_first_line", "bare_cr_count", "bare_cr_first_line",
    "nul_count", "nul_first_line", "long_line_count", "long_line_first_line",
    "eight_bit_count", "smuggling_count", "dot_stuffed", "method", "chunks",
)
_BODY_NAMES = {"bare_lf_count": "bare_lf", "bare_cr_count": "bare_cr", "nul_count": "nul",
               "long_line_count": "long_lines", "eight_bit_count": "eight_bit",
               "smuggling_count": "smuggling"}


def timestamp(t: float, sep: str = "-", tsep: str = ":", dsep: str = "T") -> str:
    """UTC ``YYYY-mm-ddTHH:MM:SS.ffffff`` of ``t`` (separators adjustable)."""
    sec, usec = divmod(round(t * 1_000_000), 1_000_000)
    fmt = f"%Y{sep}%m{sep}%d{dsep}%H{tsep}%M{tsep}%S"
    return time.strftime(fmt, time.gmtime(sec)) + f".{usec:06d}"


def filename_safe(text: str | None) -> str:
    """``text`` usable in a file name: only [A-Za-z0-9.-], others become ``_``."""
    if not text:
        return "unknown"
    return "".join(c if c in _SAFE else "_" for c in text[:100])


def _value(value: object) -> str:
    """A value as the log line shows it (true/false, escaped, capped)."""
    return render(value) or ""


def _pairs(fields: dict[str, object]) -> str:
    """``key=value ...``; a value with a space is double-quoted (logfmt style)."""
    out = []
    for key, value in fields.items():
        text = render(value)
        if text is None:
            continue
        if " " in text or '"' in text or not text:
            text = '"' + text.replace('"', '\\x22') + '"'
        out.append(f"{key}={text}")
    return " ".join(out)


class Capture:
    """Transcript of one connection; see the module docstring."""

    def __init__(
        self, directory: str, pid: int, remote: str | None,
        when: frozenset[str] | None, max_bytes: int = 1 << 20, body: str = "none",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if body not in BODY_MODES:
            raise ValueError(f"capture body mode must be one of {BODY_MODES}: {body!r}")
        self.directory = directory
        self.pid = pid
        self.remote = remote
        self.when = when
        self.max_bytes = max_bytes
        # Bodies never reach events: with body=headers|full the session also
        # hands us the raw DATA bytes (body_data); "none" keeps the summary only.
        self.body = body
        self._body_line = bytearray()  # a body line not yet ended
        self._body_on = True  # headers mode: off after the empty line
        self.clock = clock
        self.error: str | None = None
        self.path: str | None = None
        self.started = clock()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._total = 0
        self._truncated = False
        self._fd: int | None = None
        self._tmp: str | None = None
        self._done = False
        self._auth = False  # inside an AUTH exchange: 334 texts are redacted

    # -- events -> text -------------------------------------------------

    def format(self, ev: object) -> list[str]:
        """The transcript texts (unescaped parts already escaped) for one event."""
        handler = _formats().get(type(ev))
        if handler is not None:
            return handler(self, ev)
        name = escape(str(getattr(ev, "NAME", type(ev).__name__)))
        fields_fn = getattr(ev, "fields", None)
        pairs = _pairs(fields_fn() if callable(fields_fn) else {})
        return [f"[{name} {pairs}]" if pairs else f"[{name}]"]

    def _command(self, ev: Any) -> list[str]:
        verb = ev.verb or "UNKNOWN"
        args = ev.args or b""
        if verb == "AUTH":
            self._auth = True
            return [" ".join(t for t in ("AUTH", escape(args), AUTH_REDACTED) if t)]
        self._auth = False
        cut = " [line cut]" if ev.truncated else ""
        if verb == "UNKNOWN":
            if ev.line_bytes is not None:  # after AUTH: maybe a credential, never shown
                return [f"[{ev.line_bytes} bytes not shown]"]
            return [escape(args) + cut]
        return [(f"{verb} {escape(args)}" if args else verb) + cut]

    def _reply(self, ev: Any) -> list[str]:
        code, text = ev.code, ev.text or b""
        if self._auth and code == 334:
            return [f"{code} {AUTH_REDACTED}"]
        if getattr(ev, "command", None) != "AUTH":  # a banner has none
            self._auth = False
        parts = text.split(b"\n")
        out = [f"{code}{' ' if i == len(parts) - 1 else '-'}{escape(part)}".rstrip()
               for i, part in enumerate(parts)]
        if ev.truncated:
            out[-1] += " [line cut]"
        return out

    def _auth_result(self, ev: Any) -> list[str]:
        self._auth = False
        fields = {"mechanism": ev.mechanism, "result": ev.result, "user": ev.user,
                  "code": ev.code}
        return [f"{AUTH_REDACTED} {_pairs(fields)}"]

    def _nothing(self, ev: Any) -> list[str]:
        return []  # data_start; a reject line repeats a reply the transcript has

    def _data_end(self, ev: Any) -> list[str]:
        summary = [f"body: {ev.size} bytes", f"{ev.lines} lines"]
        for key in _BODY_KEYS:
            value = getattr(ev, key)
            if value is not None:
                summary.append(f"{_BODY_NAMES.get(key, key)}={_value(value)}")
        return ["[" + ", ".join(summary) + "]"]

    def _client_hello(self, ev: Any) -> list[str]:
        fields = {"sni": ev.sni, "versions": ev.versions, "alpn": ev.alpn,
                  "ciphers": ev.cipher_count}
        return [f"[tls client_hello {_pairs(fields)}]"]

    def _server_hello(self, ev: Any) -> list[str]:
        fields = {"version": ev.version, "cipher": ev.cipher,
                  "hello_retry": ev.hello_retry or None}
        return [f"[tls server_hello {_pairs(fields)}]"]

    def _tls_alert(self, ev: Any) -> list[str]:
        if ev.encrypted:
            return ["[tls alert encrypted]"]
        level = _value(ev.level or "unknown")
        desc = _value(ev.description or ev.code or "unknown")
        return [f"[tls alert {level} {desc}]"]

    # -- public API ---------------------------------------------------

    def event(self, direction: str, ev: object) -> None:
        """Record one observer event seen in ``direction`` ("<" or ">")."""
        if self._done or self.error is not None:
            return
        try:
            texts = self.format(ev)
        except Exception as exc:  # never let a malformed event disturb the session
            texts = [f"[capture_format_error {escape(type(exc).__name__)}]"]
        if not texts:
            return
        stamp = timestamp(self.clock())
        arrow = ">" if direction == ">" else "<"
        for text in texts:
            self._add(f"{stamp} {self.pid} {arrow} {text}\n".encode("ascii"), stamp, arrow)

    def body_data(self, data: bytes) -> None:
        """Raw DATA body bytes from the client (``--capture-body headers|full``).

        Written as ``PID < line`` lines, escaped, up to the client's end of
        data; ``headers`` stops at the first empty line.  The end-of-data
        summary line still comes from the DataEnd event.
        """
        if self.body == "none" or self._done or self.error is not None:
            return
        line = self._body_line
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            stop = len(data) if nl < 0 else nl + 1
            if len(line) < MAX_BODY_LINE:
                line += data[start:stop][: MAX_BODY_LINE - len(line)]
            start = stop
            if nl < 0:
                break
            text = bytes(line).rstrip(b"\r\n")
            line.clear()
            if text == b".":  # the client's end of data: the next message starts fresh
                self._body_on = True
                return
            if self._body_on:
                stamp = timestamp(self.clock())
                self._add(f"{stamp} {self.pid} < {escape(text)}\n".encode("ascii"), stamp, "<")
            if not text and self.body == "headers":
                self._body_on = False

    def finish(self, verdict: str) -> str | None:
        """Keep (path) or drop (None) the transcript according to ``verdict``."""
        if self._done:
            return self.path
        self._done = True
        if self.error is not None:
            self._discard()
            return None
        if self.when is not None and verdict not in self.when:
            self._discard()
            return None
        try:
            self._flush()
            assert self._fd is not None and self._tmp is not None
            os.close(self._fd)
            self._fd = None
            name = f"{timestamp(self.started, '', '', 'T')}-{filename_safe(self.remote)}" \
                   f"-{self.pid}.txt"
            path = os.path.join(self.directory, name)
            os.rename(self._tmp, path)
            self._tmp = None
            self.path = path
            return path
        except OSError as exc:
            self._fail(exc)
            self._discard()
            return None

    # -- internals ----------------------------------------------------

    def _add(self, line: bytes, stamp: str, arrow: str) -> None:
        if self._truncated:
            return
        if self._total + len(line) > self.max_bytes:
            self._truncated = True
            line = f"{stamp} {self.pid} {arrow} {TRUNCATED}\n".encode("ascii")
        self._total += len(line)
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered > SPILL_BYTES:
            try:
                self._flush()
            except OSError as exc:
                self._fail(exc)
                self._discard()

    def _open(self) -> None:
        try:
            os.mkdir(self.directory, 0o700)
        except FileExistsError:
            pass
        from supervise_smtp.session.safedir import refusal

        reason = refusal(self.directory)
        if reason:  # another user could swap our files there: no transcript
            raise OSError(None, f"refused: {reason}")
        # mkstemp's way without tempfile's imports: an unguessable name,
        # created exclusively, never through a symlink, 0600 from the start.
        for _ in range(10):
            tmp = f"{self.directory}/.tmp-{self.pid}-{os.urandom(6).hex()}"
            try:
                fd = os.open(tmp, _OPEN_FLAGS, 0o600)
            except FileExistsError:
                continue
            self._fd, self._tmp = fd, tmp
            os.fchmod(fd, 0o600)  # whatever the umask
            return
        raise FileExistsError(f"no free temporary name in {self.directory}")

    def _flush(self) -> None:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        data = memoryview(b"".join(self._buffer))
        self._buffer = []
        self._buffered = 0
        while data:
            n = os.write(self._fd, data)
            data = data[n:]

    def _fail(self, exc: OSError) -> None:
        reason = exc.strerror or type(exc).__name__
        code = f"errno={exc.errno} " if exc.errno is not None else ""
        self.error = f"{code}{reason}"[:200]

    def _discard(self) -> None:
        self._buffer = []
        self._buffered = 0
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None


_FORMATS: dict[type, Callable[[Capture, Any], list[str]]] = {}


def _formats() -> dict[type, Callable[[Capture, Any], list[str]]]:
    """Event class -> Capture method that writes it, built at the first event."""
    if not _FORMATS:
        from supervise_smtp.observer import events as ev
        from supervise_smtp.observer import tls

        _FORMATS.update({
            ev.Command: Capture._command, ev.Reply: Capture._reply, ev.Banner: Capture._reply,
            ev.AuthResult: Capture._auth_result, ev.DataStart: Capture._nothing,
            ev.Reject: Capture._nothing, ev.DataEnd: Capture._data_end,
            tls.TLSClientHello: Capture._client_hello,
            tls.TLSServerHello: Capture._server_hello, tls.TLSAlert: Capture._tls_alert,
        })
    return _FORMATS
