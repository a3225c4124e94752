"""``--bare-lf fix``: turn bare LF into CRLF inside DATA, as fixcrio does (sans-IO).

qmail-smtpd rejects a message with a bare LF (451 smtplf) and the broken
mailer retries for days.  fixcrio lets it through by rewriting every bare LF
of the whole stream, silently.  Here the rewrite is narrower, and counted for
a ``bare_lf_fixed`` event:

- only inside a DATA body (after the server's 354, up to the client's end of
  data); never in commands, never after STARTTLS or in SMTPS;
- the end of data is only ever the client's own ``\\r\\n.\\r\\n``.  A line
  holding a lone dot next to a bare LF (the SMTP smuggling shapes ``\\n.\\n``,
  ``\\r\\n.\\n``, ``\\n.\\r\\n``) is NOT turned into an end of data: it is
  dot-stuffed to ``..\\r\\n``, so qmail-smtpd keeps a literal "." line and what
  follows stays message text, up to the real end.  This is the choice Postfix
  3.9 makes with ``smtpd_forbid_bare_newline = normalize``: accept the broken
  mailer's message, never let a bare newline end it;
- a bare CR is left alone (qmail-smtpd passes it on unchanged).

The SMTP around the body is read with the observer's own pieces (its line
reader, command and reply parsers, TLS sniff and not-SMTP rule), so both
read a client alike.  Replies are matched to client lines one for one, as
qmail-smtpd answers them (AUTH continuation lines included), to know which
reply answers DATA.  A client that sends its body before the 354 gets no
rewrite for those bytes.
"""

from __future__ import annotations

from supervise_smtp.observer.commands import (
    NOT_SMTP_LINES,
    opens_tls,
    parse_reply_line,
    split_command,
)
from supervise_smtp.observer.lines import LineReader
from supervise_smtp.observer.replies import ReplyAssembler
from supervise_smtp.observer.state import PENDING_CAP

__all__ = ["BareLFFixer", "LINE_HEAD_BYTES"]

# Client modes: read command lines; pass bytes on until the answer to DATA;
# rewrite a body; pass everything on for good (TLS, not SMTP).
_CMD, _WAIT, _BODY, _OPAQUE = "cmd", "wait", "body", "opaque"
# Of a command or reply line only this much is kept: enough for its verb or code.
LINE_HEAD_BYTES = 4096


class BareLFFixer:
    """feed_client(bytes) -> bytes to send on; feed_server(bytes) watches replies."""

    def __init__(self) -> None:
        self.mode = _CMD
        self._commands = LineReader(LINE_HEAD_BYTES)
        self._replies = LineReader(LINE_HEAD_BYTES)
        self._reply = ReplyAssembler()
        self._pending: list[str] = []  # one entry per client line awaiting a reply
        self._banner = False
        self._unknown = 0  # unknown commands in a row
        # body state
        self._at_start = True  # at the start of a body line
        self._held = b""  # "." or ".\r" at a line start: maybe the end of data
        self._last = b""  # last body byte sent on
        self._prev_crlf = True  # the client ended the previous line with CRLF
        self._line = 1
        # what was done, for the log
        self.sender = b""
        self.fixed = 0  # bare LF rewritten in the current message
        self.first_line: int | None = None
        self.dots = 0  # lone-dot lines next to a bare LF, kept as text
        self.messages: list[tuple[bytes, int, int | None, int]] = []

    # -- server side: which reply answers DATA, STARTTLS --------------------
    def feed_server(self, data: bytes) -> None:
        if self.mode == _OPAQUE or not data:
            return
        pos = 0
        while pos < len(data):
            line, pos, _, truncated = self._replies.next_line(data, pos)
            if line is None:
                return
            parsed = parse_reply_line(line)  # a malformed line answers nothing
            if parsed is None:
                continue
            code, more, text = parsed
            reply = self._reply.add(code, more, text, truncated)
            if reply is not None:
                self._on_reply(reply.code)

    def _on_reply(self, code: int) -> None:
        if not self._banner:
            self._banner = True
            return
        if not self._pending:
            return
        verb = self._pending.pop(0)
        if verb == "DATA" and self.mode == _WAIT:
            if code == 354:
                self._begin_body()
            else:
                self.mode = _CMD
        elif verb == "STARTTLS" and code == 220:
            self.mode = _OPAQUE

    # -- client side ---------------------------------------------------------
    def feed_client(self, data: bytes) -> bytes:
        """The bytes to send to qmail-smtpd in place of ``data``."""
        if not data or self.mode == _OPAQUE:
            return data
        if self.mode == _BODY:
            return self._body(data)
        if self.mode == _WAIT:
            return data  # before the 354: not a body yet, whatever it holds
        if not self._banner and not self._commands.buffered and opens_tls(data):
            self.mode = _OPAQUE  # SMTPS: TLS from the first byte
            return data
        pos = 0
        while pos < len(data):
            line, pos, _, _ = self._commands.next_line(data, pos)
            if line is None:
                break
            self._command(line)
            if self.mode != _CMD:
                return data[:pos] + self.feed_client(data[pos:])
        return data

    def _command(self, line: bytes) -> None:
        verb, args = split_command(line)  # the observer's reading of the line
        if verb != "UNKNOWN":
            self._unknown = 0
        else:
            self._unknown += 1
            if self._unknown >= NOT_SMTP_LINES:
                self.mode = _OPAQUE  # not SMTP (the observer's not_smtp): never rewritten
                return
        if verb == "MAIL":
            self.sender = args.split(b":", 1)[-1].strip()[:256]
        elif verb == "DATA":
            self.mode = _WAIT
        self._pending.append(verb if verb in ("DATA", "STARTTLS") else "")
        del self._pending[:-PENDING_CAP]

    # -- the body --------------------------------------------------------------
    def _begin_body(self) -> None:
        self.mode = _BODY
        self._at_start, self._held, self._last = True, b"", b""
        self._prev_crlf, self._line = True, 1
        self.fixed, self.first_line, self.dots = 0, None, 0

    def _body(self, data: bytes) -> bytes:
        """Rewrite up to the client's end of data; what follows is commands again."""
        if not self._held and b"\n." not in data and not (self._at_start and data[:1] == b"."):
            # Most chunks of most messages: no line starts with a dot and
            # every LF has its CR.  Proved with two counts at C speed; the
            # chunk goes on untouched and only the line state moves.
            lf = data.count(b"\n")
            crlf = data.count(b"\r\n")
            if data[:1] == b"\n" and not self._at_start and self._last == b"\r":
                crlf += 1  # the CR came at the end of the last chunk
            if lf == crlf:
                if lf:
                    self._line += lf
                    self._prev_crlf = True
                if data[-1:] == b"\n":
                    self._at_start, self._last = True, b"\n"
                else:
                    self._at_start, self._last = False, data[-1:]
                return data
        data = self._held + data
        self._held = b""
        out = bytearray()
        i = 0
        while True:
            nl = data.find(b"\n", i)
            if nl < 0:
                break
            seg = data[i:nl]  # this line, or its rest when it began in a past chunk
            crlf = seg.endswith(b"\r") if seg else (not self._at_start and self._last == b"\r")
            if self._at_start and seg in (b".", b".\r"):
                if crlf and self._prev_crlf:  # the client's own \r\n.\r\n
                    out += b".\r\n"
                    self._end()
                    return bytes(out) + self.feed_client(data[nl + 1:])
                out += b"..\r\n"  # a dot next to a bare LF: text, never the end
                self.dots += 1
            else:
                out += seg if crlf else seg + b"\r"
                out += b"\n"
            if not crlf:
                self.fixed += 1
                if self.first_line is None:
                    self.first_line = self._line
            self._prev_crlf = crlf
            self._at_start, self._last = True, b"\n"
            self._line += 1
            i = nl + 1
        rest = data[i:]
        if self._at_start and rest in (b".", b".\r"):
            self._held = rest  # wait: it may be the end of data
        elif rest:
            out += rest
            self._at_start, self._last = False, rest[-1:]
        return bytes(out)

    def flush(self) -> bytes:
        """At client EOF: a held "." goes on as it came."""
        held, self._held = self._held, b""
        return held

    def _end(self) -> None:
        self.mode = _CMD
        self._pending.append("")  # the reply to the end of data
        if self.fixed or self.dots:
            self.messages.append((self.sender, self.fixed, self.first_line, self.dots))
