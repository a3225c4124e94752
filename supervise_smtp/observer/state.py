"""Stages and their transition table, limits, and the session summary diagnose reads.

Stages are plain ``str`` constants, not an ``Enum``: ``enum`` costs several
milliseconds to import and the observer is imported once per SMTP connection.
The constant's value is its wire name (``client_lost_after_<stage>``).

A stage names the last protocol step the client reached, so the verdict can
say where a connection was lost: it moves on the client's commands (EHLO,
MAIL, RCPT, DATA...), on the server's 354 (``data_body``) and on the
end-of-data marker (``data_end``).  AUTH and STARTTLS are excursions: when
they end, the stage returns to where it was.  TRANSITIONS is the whole
machine; StageMachine is the only writer of ``SessionState.stage``.
"""

from __future__ import annotations

__all__ = [
    "ANY",
    "BACK",
    "BYTES_CAP",
    "COUNT_CAP",
    "EV_AUTH_DONE",
    "EV_CHUNK",
    "EV_END_OF_DATA",
    "EV_GO_AHEAD",
    "EV_GREETING",
    "EV_TLS",
    "EV_TLS_REFUSED",
    "MAX_REPEAT_EVENTS",
    "MessageStats",
    "PENDING_CAP",
    "RESET",
    "SessionState",
    "StageMachine",
    "STAGES",
    "STAGE_AUTH",
    "STAGE_BANNER",
    "STAGE_BDAT",
    "STAGE_CONNECT",
    "STAGE_DATA",
    "STAGE_DATA_BODY",
    "STAGE_DATA_END",
    "STAGE_EHLO",
    "STAGE_MAIL",
    "STAGE_QUIT",
    "STAGE_RCPT",
    "STAGE_STARTTLS",
    "STAGE_TLS",
    "TEXT_CAP",
    "TRANSITIONS",
    "USER_CAP",
    "bump",
    "capped",
    "clip",
]

STAGE_CONNECT = "connect"
STAGE_BANNER = "banner"
STAGE_EHLO = "ehlo"
STAGE_MAIL = "mail"
STAGE_RCPT = "rcpt"
STAGE_DATA = "data"
STAGE_DATA_BODY = "data_body"
STAGE_DATA_END = "data_end"
STAGE_BDAT = "bdat"
STAGE_STARTTLS = "starttls"
STAGE_TLS = "tls"
STAGE_AUTH = "auth"
STAGE_QUIT = "quit"

STAGES = (
    STAGE_CONNECT, STAGE_BANNER, STAGE_EHLO, STAGE_MAIL, STAGE_RCPT, STAGE_DATA,
    STAGE_DATA_BODY, STAGE_DATA_END, STAGE_BDAT, STAGE_STARTTLS, STAGE_TLS,
    STAGE_AUTH, STAGE_QUIT,
)

# What moves the stage: a client command (its verb, as split_command reads
# it) or one of these steps of the exchange.
EV_GREETING = "greeting"  # the server's first reply
EV_GO_AHEAD = "go_ahead"  # 354 to DATA: the client's bytes are the body
EV_CHUNK = "chunk"  # BDAT with a chunk the server reads (it offered CHUNKING)
EV_END_OF_DATA = "end_of_data"  # the client's CRLF.CRLF, or the last BDAT chunk read
EV_TLS = "tls_started"  # 220 to STARTTLS, or TLS from the server's first byte (SMTPS)
EV_TLS_REFUSED = "tls_refused"  # any other answer to STARTTLS
EV_AUTH_DONE = "auth_done"  # the final answer to AUTH

ANY = "*"  # (ANY, event): from every stage without an entry of its own
BACK = "back"  # to the stage an excursion (STARTTLS, AUTH) left when it began
RESET = "reset"  # to where the greeting steps alone led: ehlo, banner or connect

# (stage, event) -> next stage.  An event without an entry (NOOP, VRFY, an
# unknown line, a refused BDAT...) leaves the stage where it is.
TRANSITIONS = {
    (STAGE_CONNECT, EV_GREETING): STAGE_BANNER,
    (ANY, "HELO"): STAGE_EHLO,
    (ANY, "EHLO"): STAGE_EHLO,
    (ANY, "MAIL"): STAGE_MAIL,
    (ANY, "RCPT"): STAGE_RCPT,
    (ANY, "DATA"): STAGE_DATA,
    (ANY, EV_GO_AHEAD): STAGE_DATA_BODY,
    (ANY, EV_CHUNK): STAGE_BDAT,
    (ANY, EV_END_OF_DATA): STAGE_DATA_END,
    (ANY, "RSET"): RESET,
    (ANY, "QUIT"): STAGE_QUIT,
    (ANY, "STARTTLS"): STAGE_STARTTLS,
    (ANY, EV_TLS_REFUSED): BACK,
    (ANY, EV_TLS): STAGE_TLS,
    (ANY, "AUTH"): STAGE_AUTH,
    (ANY, EV_AUTH_DONE): BACK,
}
_EXCURSIONS = frozenset((STAGE_STARTTLS, STAGE_AUTH))
_GREETING_STEPS = frozenset((EV_GREETING, "HELO", "EHLO"))

# Counters stop here: a hostile peer cannot make them grow without bound.
COUNT_CAP = 2**31 - 1
# Byte totals get more room: a 4 GiB transfer is legitimate.
BYTES_CAP = 2**53
# Client or server text copied into an event or the summary.
TEXT_CAP = 512
# AUTH user names: enough for any real address, small enough for a log line.
USER_CAP = 256
# Commands awaiting a reply (pipelining); the excess is only counted.
PENDING_CAP = 1000
# Events of one kind per session; beyond, the state only counts.
MAX_REPEAT_EVENTS = 10


def capped(value: int, cap: int = COUNT_CAP) -> int:
    """``value``, or ``cap`` if it is larger."""
    return value if value < cap else cap


def clip(data: bytes, limit: int = TEXT_CAP) -> tuple[bytes, bool]:
    """``data`` cut to ``limit`` bytes, and whether it was cut."""
    if len(data) <= limit:
        return data, False
    return data[:limit], True


class _Record:
    """Slots-based record with a repr, for the summary objects below."""

    __slots__: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """The attributes in declaration order (for the summary line)."""
        return {key: getattr(self, key) for key in self.__slots__}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({inner})"


class MessageStats(_Record):
    """Counters of one message body (DATA or BDAT); never the content.

    ``wire_bytes`` counts what the client sent, end marker included; ``size``
    is the message after dot-unstuffing, as SIZE (RFC 1870) counts it;
    ``qmail_size`` is what qmail-smtpd's ``blast()`` puts into the queue
    (unstuffed, each CRLF stored as LF), the number its databytes limit sees.
    Lines are numbered from 1, one per LF, as qmail-smtpd reads them.
    """

    __slots__ = (
        "message", "method", "wire_bytes", "size", "qmail_size", "lines",
        "dot_stuffed", "bare_lf_count", "bare_lf_first_line", "bare_cr_count",
        "bare_cr_first_line", "nul_count", "nul_first_line", "long_line_count",
        "long_line_first_line", "eight_bit_count", "eight_bit_first_line",
        "smuggling_count", "chunks", "complete",
    )

    def __init__(self, message: int, method: str) -> None:
        self.message = message
        self.method = method
        self.wire_bytes = 0
        self.size = 0
        self.qmail_size = 0
        self.lines = 0
        self.dot_stuffed = 0
        self.bare_lf_count = 0
        self.bare_lf_first_line: int | None = None
        self.bare_cr_count = 0
        self.bare_cr_first_line: int | None = None
        self.nul_count = 0
        self.nul_first_line: int | None = None
        self.long_line_count = 0
        self.long_line_first_line: int | None = None
        self.eight_bit_count = 0
        self.eight_bit_first_line: int | None = None
        self.smuggling_count = 0
        self.chunks = 0
        self.complete = False


class SessionState(_Record):
    """What the diagnose step reads once the connection is over.

    Plain attributes, updated as events are produced.  It never holds a
    credential: AUTH leaves only the mechanism, the user and the result.
    """

    __slots__ = (
        "stage", "sent", "accepted", "rejected", "banner_code", "last_reply_code",
        "last_reply_enhanced", "last_reply_text", "last_reply_command",
        "last_reply_stage", "ehlo_seen", "pipelining", "starttls_offered",
        "chunking", "size_limit", "auth_offered", "quit_sent", "quit_answered",
        "tls_active", "tls_implicit", "auth_mechanism", "auth_user", "auth_result",
        "auth_code", "messages", "messages_queued", "message", "data_rejected",
        "pipelining_violations", "early_talker", "starttls_injection",
        "lines_too_long", "pending", "pending_dropped", "unsolicited_replies",
        "malformed_replies", "client_bytes", "server_bytes", "client_closed",
        "server_closed", "not_smtp", "rejects", "rejects_unlogged", "end_reply_offset",
        "unseen_lines", "tls_unanswered", "quit_from", "quit_reply_start",
    )

    def __init__(self) -> None:
        self.stage = STAGE_CONNECT
        # verb -> count; keys come from a fixed set of verbs plus "UNKNOWN".
        self.sent: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.banner_code: int | None = None
        self.last_reply_code: int | None = None
        self.last_reply_enhanced: str | None = None
        self.last_reply_text: bytes | None = None
        self.last_reply_command: str | None = None
        self.last_reply_stage: str | None = None
        self.ehlo_seen = False
        self.pipelining = False
        self.starttls_offered = False
        self.chunking = False
        self.size_limit: int | None = None
        self.auth_offered: bytes | None = None
        self.quit_sent = False
        self.quit_answered = False
        self.tls_active = False
        self.tls_implicit = False
        self.auth_mechanism: str | None = None
        self.auth_user: bytes | None = None
        self.auth_result: str | None = None
        self.auth_code: int | None = None
        self.messages = 0
        self.messages_queued = 0
        # The current (or last) message body; None before the first one.
        self.message: MessageStats | None = None
        # The DataRejected event, if the server answered in the middle of a body.
        self.data_rejected: object | None = None
        self.pipelining_violations = 0
        self.early_talker = False
        self.starttls_injection = 0
        self.lines_too_long = 0
        self.pending = 0
        self.pending_dropped = 0
        self.unsolicited_replies = 0
        self.malformed_replies = 0
        self.client_bytes = 0
        self.server_bytes = 0
        self.client_closed = False
        self.server_closed = False
        # The client is taken for something other than SMTP (NotSmtp): its
        # unknown lines make no events; cleared when the server accepts a command.
        self.not_smtp = False
        # 4xx/5xx replies, and how many of them got no Reject event (bounded).
        self.rejects = 0
        self.rejects_unlogged = 0
        # Server stream offset just past the reply to the last end of data:
        # the reply reached the client once that many bytes were written to it.
        self.end_reply_offset: int | None = None
        # The stage QUIT was sent in, and the server stream offset where the
        # reply to QUIT begins: a client that got every byte before it was
        # there for its session's end (a client gone earlier left in quit_from).
        self.quit_from: str | None = None
        self.quit_reply_start: int | None = None
        # Client lines held past the hold bound, answered but never parsed.
        self.unseen_lines = 0
        # The client opened with a TLS hello and the server closed without a byte.
        self.tls_unanswered = False


def bump(table: dict[str, int], key: str) -> None:
    """Add one to ``table[key]``, capped at COUNT_CAP."""
    value = table.get(key, 0)
    if value < COUNT_CAP:
        table[key] = value + 1


class StageMachine:
    """Moves ``state.stage`` by TRANSITIONS; nothing else writes the stage."""

    __slots__ = ("state", "_back", "_reset")

    def __init__(self, state: SessionState) -> None:
        self.state = state
        self._back = STAGE_CONNECT  # the stage the current excursion left
        self._reset = STAGE_CONNECT  # the greeting steps alone, for RSET

    def move(self, event: str) -> None:
        """Apply ``event`` (a verb or an EV_* step) to the stage."""
        stage = self.state.stage
        if event in _GREETING_STEPS:
            self._reset = _next(self._reset, event) or self._reset
        new = TRANSITIONS.get((stage, event)) or TRANSITIONS.get((ANY, event))
        if new is None:
            return
        if new == BACK:
            new = self._back
        elif new == RESET:
            new = self._reset
        elif new in _EXCURSIONS and new != stage:
            self._back = stage
        self.state.stage = new


def _next(stage: str, event: str) -> str | None:
    return TRANSITIONS.get((stage, event)) or TRANSITIONS.get((ANY, event))
