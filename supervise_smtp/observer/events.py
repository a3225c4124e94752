"""Event classes emitted by the sans-IO observer.

Events are plain classes with ``__slots__`` rather than dataclasses: importing
``dataclasses`` is a costly import, and the observer is imported once per SMTP
connection.  Each subclass lists its fields in ``__slots__``; the field names
are the log keys (stable API: never rename one), and ``NAME`` is the
snake_case event name written as ``event=...``.
"""

from __future__ import annotations

__all__ = [
    "AuthResult",
    "Banner",
    "BareCR",
    "BareLF",
    "Capabilities",
    "Command",
    "DataEnd",
    "DataRejected",
    "DataStart",
    "EarlyTalker",
    "Event",
    "LineTooLong",
    "LongLine",
    "MalformedReply",
    "NotSmtp",
    "NulByte",
    "PeerClosed",
    "PipeliningViolation",
    "Reject",
    "Reply",
    "Smuggling",
    "StartTLS",
    "StartTLSInjection",
]


class Event:
    """Base of all observer events: keyword construction, equality, repr."""

    __slots__: tuple[str, ...] = ()
    NAME = "event"

    def __init__(self, **fields: object) -> None:
        slots = self.__slots__
        for key in slots:
            object.__setattr__(self, key, fields.pop(key, None))
        if fields:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(fields)}")

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def fields(self) -> dict[str, object]:
        """The event's fields in declaration order, for output."""
        return {key: getattr(self, key) for key in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.fields() == other.fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.fields().values())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields().items())
        return f"{type(self).__name__}({inner})"


# Client and server text is carried as raw ``bytes`` cut to TEXT_CAP (512)
# with ``truncated=True``; the output layer escapes it.  A field that does not
# apply is None (the output leaves it out).


class Banner(Event):
    """The server's greeting (the first reply), usually 220."""

    __slots__ = ("code", "enhanced", "text", "truncated")
    NAME = "banner"


class Command(Event):
    """One client command line.

    ``verb`` is the upper-cased verb when it is one we know, else "UNKNOWN"
    with only the line's first word in ``args`` (cut to UNKNOWN_WORD_BYTES),
    never the rest of it.  After an AUTH, whatever its reply, the lines up to
    the next known verb may be credentials sent to a server that refused the
    exchange: they keep ``args`` None and give only their length,
    ``line_bytes``.  For AUTH, ``args`` is the mechanism only: the initial
    response is a credential and never reaches an event.  ``address``/``params``
    are set for MAIL and RCPT.  ``pipelined`` says replies to earlier commands
    were still pending.
    """

    __slots__ = ("verb", "args", "address", "params", "pipelined", "truncated", "line_bytes")
    NAME = "command"


class Reply(Event):
    """One complete server reply (all lines of a multiline one).

    ``command`` is the verb it answers ("DATA_END" for the reply after the
    end-of-data marker), None when no command was pending (unsolicited, such
    as qmail-smtpd's 451 in the middle of a body).  ``in_stage`` is the stage
    when it arrived.  ``text`` joins the lines' text with LF.
    """

    __slots__ = ("code", "enhanced", "text", "lines", "command", "in_stage", "truncated")
    NAME = "reply"


class Reject(Event):
    """A 4xx/5xx reply and the command it answered, as Postfix's ``reject:`` line.

    ``arg`` is the command's address (MAIL, RCPT), AUTH's mechanism (never a
    credential), nothing for a line that may be one (see Command), or the
    line's argument (an unknown command's first word), cut to 256 bytes; ``command`` is None
    for the banner and for a reply no command was waiting for.  Replies in the
    middle of a body are DataRejected instead.  The first few per session
    only; the summary counts them all (``rejects``).
    """

    __slots__ = ("code", "enhanced", "text", "command", "arg", "in_stage", "truncated")
    NAME = "reject"


class MalformedReply(Event):
    """A server line that is not ``ddd``, ``ddd text`` or ``ddd-text``."""

    __slots__ = ("text", "truncated")
    NAME = "malformed_reply"


class Capabilities(Event):
    """The extensions a 250 reply to EHLO advertised (RFC 5321 4.1.1.1)."""

    __slots__ = (
        "pipelining", "size", "starttls", "auth", "chunking", "eightbitmime",
        "smtputf8", "keywords", "truncated",
    )
    NAME = "capabilities"


class DataStart(Event):
    """A message body begins: 354 to DATA, or the first BDAT chunk."""

    __slots__ = ("message", "method")
    NAME = "data_start"


class DataEnd(Event):
    """A message body ended: the exact ``CRLF.CRLF`` marker, or BDAT LAST.

    Counts only (see MessageStats for their meaning); ``*_first_line`` are
    1-based body line numbers, None when the count is 0.
    """

    __slots__ = (
        "message", "method", "wire_bytes", "size", "qmail_size", "lines",
        "dot_stuffed", "bare_lf_count", "bare_lf_first_line", "bare_cr_count",
        "bare_cr_first_line", "nul_count", "nul_first_line", "long_line_count",
        "long_line_first_line", "eight_bit_count", "eight_bit_first_line",
        "smuggling_count", "chunks",
    )
    NAME = "data_end"


class DataRejected(Event):
    """The server replied while the client was still sending a body.

    qmail-smtpd does this on the first bare LF (``451 See
    https://cr.yp.to/docs/smtplf.html.``) and then exits, so this event ties
    the reply to the body line where the first bare LF was seen.
    """

    __slots__ = (
        "code", "enhanced", "text", "truncated", "in_stage", "message",
        "body_bytes", "body_lines", "bare_lf_count", "bare_lf_first_line",
        "bare_cr_count", "nul_count",
    )
    NAME = "data_rejected"


class BareLF(Event):
    """First LF not preceded by CR in a message body (qmail-smtpd rejects it)."""

    __slots__ = ("message", "line", "offset")
    NAME = "bare_lf"


class BareCR(Event):
    """First CR not followed by LF in a message body."""

    __slots__ = ("message", "line", "offset")
    NAME = "bare_cr"


class NulByte(Event):
    """First NUL byte in a message body."""

    __slots__ = ("message", "line", "offset")
    NAME = "nul_byte"


class LongLine(Event):
    """First body line over 998 octets (RFC 5321 4.5.3.1.6); offset of its start."""

    __slots__ = ("message", "line", "offset")
    NAME = "long_line"


class Smuggling(Event):
    """An end-of-data look-alike in a body (SMTP smuggling).

    ``variant`` spells the bytes around the dot, e.g. ``\\n.\\n`` or
    ``\\r\\n.\\0\\r\\n``; ``line`` and ``offset`` locate the dot in the body.
    """

    __slots__ = ("message", "variant", "line", "offset")
    NAME = "smuggling"


class LineTooLong(Event):
    """A command or reply line passed ``limit`` bytes; the rest is skipped."""

    __slots__ = ("direction", "limit")
    NAME = "line_too_long"


class PipeliningViolation(Event):
    """A command sent before it was allowed (RFC 2920).

    ``kind`` is ``unadvertised`` (PIPELINING not offered and a reply still
    pending), ``after_<verb>`` (sent behind a command that must end a group,
    such as EHLO or QUIT) or ``after_data`` (bytes behind DATA before its 354).
    """

    __slots__ = ("kind", "verb", "pending")
    NAME = "pipelining_violation"


class NotSmtp(Event):
    """The client is not speaking SMTP: ``unknown_lines`` unknown commands in a row.

    HTTP sent to port 25, a port scanner, a binary stream.  From here on its
    unknown lines and their replies make no events (one pending entry for the
    whole run), until the server accepts a real command again.  The limit
    follows Postfix's smtpd_hard_error_limit (20): a real client does not send
    twenty unknown commands in a row.
    """

    __slots__ = ("unknown_lines",)
    NAME = "not_smtp"


class EarlyTalker(Event):
    """The client spoke before the server's banner was complete."""

    __slots__ = ()
    NAME = "early_talker"


class StartTLS(Event):
    """From here on the stream is TLS; ``implicit`` for SMTPS (no STARTTLS)."""

    __slots__ = ("implicit",)
    NAME = "starttls"


class StartTLSInjection(Event):
    """Plaintext sent behind STARTTLS before its 220 (CVE-2011-0411 style)."""

    __slots__ = ("length",)
    NAME = "starttls_injection"


class AuthResult(Event):
    """The end of an AUTH exchange; never the secret.

    ``user`` is PLAIN's authentication identity, LOGIN's first answer or
    CRAM-MD5's name, cut to 256 bytes (``user_truncated``); None if unknown.
    ``result`` is ``ok``, ``failed`` or ``cancelled``.
    """

    __slots__ = ("mechanism", "user", "user_truncated", "result", "code", "enhanced")
    NAME = "auth_result"


class PeerClosed(Event):
    """EOF from ``peer`` (client or server) in ``stage``.

    ``pending`` commands were still unanswered; ``partial_bytes`` of an
    unterminated line were dropped (their content is never reported).
    """

    __slots__ = ("peer", "stage", "pending", "partial_bytes")
    NAME = "peer_closed"
