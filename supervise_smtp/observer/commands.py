"""Pure reading of what a peer sent (no state): command lines, reply lines, TLS.

Kept apart from the state machine so each rule of RFC 5321 / 1870 / 3030 /
3463 is a small function that can be tested alone.  The first byte of a TLS
record is read here too: the observer and the bare-LF fixer tell SMTP from
TLS the same way, without loading the TLS record parser.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; only mypy reads this
    from typing import Any

__all__ = [
    "KNOWN_VERBS",
    "LAST_IN_GROUP",
    "NOT_SMTP_LINES",
    "enhanced_code",
    "junk_lines",
    "parse_bdat",
    "parse_path",
    "parse_reply_line",
    "split_command",
    "TLS_ALERT",
    "TLS_CHANGE_CIPHER_SPEC",
    "TLS_HANDSHAKE",
    "TLS_RECORD_TYPES",
    "opens_tls",
    "is_tls_record",
]

KNOWN_VERBS = frozenset({
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY",
    "EXPN", "HELP", "QUIT", "STARTTLS", "AUTH", "ETRN", "TURN", "ATRN",
})
# RFC 2920 3.1 (+ RFC 3207, 4954): these end a pipelined group; a command
# sent behind one of them before its reply is a violation.
LAST_IN_GROUP = frozenset({
    "EHLO", "HELO", "DATA", "VRFY", "EXPN", "TURN", "QUIT", "NOOP", "STARTTLS", "AUTH",
})
_MAX_VERB = 16
# Unknown commands in a row before a client is taken for not speaking SMTP at
# all (Postfix's smtpd_hard_error_limit default): the observer and the
# bare-LF fixer then stop parsing it.
NOT_SMTP_LINES = 20
# Line heads read as commands even from a client taken for not SMTP: the
# verbs that could bring it back to SMTP.
_VERB_HEADS = (b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"STAR", b"AUTH",
               b"QUIT")
_VERB_LINE: Any = None

# TLS record content types (RFC 8446 5.1) that open a record of a live
# session: change_cipher_spec, alert, handshake, application_data.
TLS_CHANGE_CIPHER_SPEC = 0x14
TLS_ALERT = 0x15
TLS_HANDSHAKE = 0x16
TLS_RECORD_TYPES = frozenset((TLS_CHANGE_CIPHER_SPEC, TLS_ALERT, TLS_HANDSHAKE, 0x17))


def split_command(line: bytes) -> tuple[str, bytes]:
    """(VERB, argument bytes); VERB is "UNKNOWN" for anything not in KNOWN_VERBS.

    As qmail-smtpd's commands.c: the line is a C string (a NUL ends it, so
    ``DATA\0junk`` is DATA), the verb runs to the first space and is matched
    without case; spaces after it are skipped (a tab is part of the verb).
    An unknown line is returned whole.
    """
    whole = line
    nul = line.find(b"\0")
    if nul >= 0:
        line = line[:nul]
    sp = line.find(b" ")
    head = line if sp < 0 else line[:sp]
    args = b"" if sp < 0 else line[sp + 1:].strip(b" \t")
    if len(head) <= _MAX_VERB and head.isalpha() and head.isascii():
        verb = head.decode("ascii").upper()
        if verb in KNOWN_VERBS:
            return verb, args
    return "UNKNOWN", whole


def junk_lines(head: bytes, seg: bytes) -> tuple[int, bool]:
    """Where the lines of a client taken for not SMTP stop being junk in ``seg``.

    ``head`` is the first bytes of the line in progress (held from earlier
    chunks).  Returns ``(end, command)``: ``seg[:end]`` ends the junk lines
    (0: no whole one), and ``command`` says a line that starts with one of
    the verbs of _VERB_HEADS begins at ``end``.  One regular-expression scan
    per chunk, not a Python step per line.
    """
    if (head + seg[:4])[:4].upper() in _VERB_HEADS:
        return 0, True  # the line in progress (maybe begun in an earlier chunk)
    found = _verb_line_start().search(seg)
    last = seg.rfind(b"\n") if found is None else found.start()
    return last + 1, found is not None


def _verb_line_start() -> Any:
    """The LF before a line starting with one of _VERB_HEADS, any case.

    ``re`` costs start-up time: compiled only once a client is taken for not
    SMTP, which a real mail client never is.
    """
    global _VERB_LINE
    if _VERB_LINE is None:
        import re

        heads = b"|".join(_VERB_HEADS)
        _VERB_LINE = re.compile(b"\\n(?=" + heads + b")", re.IGNORECASE)
    return _VERB_LINE


def parse_path(args: bytes, keyword: bytes) -> tuple[bytes | None, bytes]:
    """``FROM:<a@b> SIZE=1`` -> (b"a@b", b"SIZE=1"); None if ``keyword:`` is absent.

    Lenient like real servers: case-insensitive keyword, spaces after the
    colon, a path without angle brackets.
    """
    n = len(keyword)
    if args[:n].upper() != keyword or args[n:n + 1] != b":":
        return None, args
    rest = args[n + 1:].lstrip(b" ")
    if rest[:1] == b"<":
        close = rest.find(b">")
        if close < 0:
            return rest[1:], b""
        return rest[1:close], rest[close + 1:].strip(b" ")
    sp = rest.find(b" ")
    if sp < 0:
        return rest, b""
    return rest[:sp], rest[sp + 1:].strip(b" ")


def parse_bdat(args: bytes) -> tuple[int | None, bool]:
    """``1000 LAST`` -> (1000, True); (None, False) when the size is not a number."""
    parts = args.split()
    if not parts or not parts[0].isdigit() or len(parts[0]) > 15:
        return None, False
    last = len(parts) > 1 and parts[1].upper() == b"LAST"
    return int(parts[0]), last


def parse_reply_line(line: bytes) -> tuple[int, bool, bytes] | None:
    """``250-text`` -> (250, True, b"text"); None when not a reply line."""
    if len(line) < 3 or not line[:3].isdigit():
        return None
    sep = line[3:4]
    if sep == b"-":
        return int(line[:3]), True, line[4:]
    if sep in (b" ", b""):
        return int(line[:3]), False, line[4:]
    return None


def enhanced_code(text: bytes) -> str | None:
    """The RFC 3463 ``class.subject.detail`` code at the start of ``text``."""
    head = text[:12].split(b" ", 1)[0]
    parts = head.split(b".")
    if len(parts) != 3 or parts[0] not in (b"2", b"4", b"5"):
        return None
    for part in parts[1:]:
        if not (1 <= len(part) <= 3 and part.isdigit()):
            return None
    return head.decode("ascii")


def opens_tls(data: bytes) -> bool:
    """A client's first bytes that may be a TLS ClientHello (a handshake record).

    No SMTP command starts with 0x16.  Whether it really is TLS (SMTPS) only
    the server's answer tells: see ``is_tls_record``.
    """
    return data[:1] == b"\x16"


def is_tls_record(data: bytes) -> bool:
    """``data`` starts a TLS record: a server that answers in TLS, not with a reply line."""
    return bool(data) and data[0] in TLS_RECORD_TYPES
