"""The Observer: one SMTP connection followed from both sides, sans-IO.

Bytes in, events out (h11 style).  The client side is read in one of a few
modes -- command lines, bytes held behind DATA/STARTTLS until their reply,
a DATA body, BDAT chunk bytes, opaque TLS -- and the server side as reply
lines until TLS starts.  Replies are matched to commands through a FIFO of
pending verbs, which is what makes pipelining (RFC 2920) visible.

What the client's bytes are is decided by the server's answer, never
guessed before it: bytes sent behind DATA or STARTTLS, or a first byte 0x16
before the banner, are held (bounded) until the reply.  After a 354 they are
body, after a 220 TLS (or a CVE-2011-0411 style injection), after a refusal
commands; a first 0x16 is SMTPS only once the server answers with TLS
records.  Beyond the bound the held bytes are only counted, while a
speculative body scan and a count of their lines keep both readings exact
enough to stay in step with the server's replies.  BDAT bytes are a chunk
only when the server advertised CHUNKING.  A message is queued only when the
server's reply to its end accepted it.

Command lines are read the way qmail-smtpd's commands.c reads them: up to
LF, one CR dropped, a C string (cut at the first NUL), the verb up to the
first space, case-insensitive.

We observe, we never enforce: peer misbehaviour is an event, and peer input
never raises.  Nothing here does I/O, reads a clock or logs.
"""

from __future__ import annotations

from .body import BodyScanner
from .commands import (
    LAST_IN_GROUP,
    NOT_SMTP_LINES,
    parse_bdat,
    parse_path,
    parse_reply_line,
    split_command,
)
from .events import (
    AuthResult,
    Banner,
    Command,
    DataEnd,
    DataRejected,
    DataStart,
    EarlyTalker,
    Event,
    LineTooLong,
    MalformedReply,
    NotSmtp,
    PeerClosed,
    PipeliningViolation,
    Reject,
    Reply,
    StartTLS,
    StartTLSInjection,
)
from .lines import LineReader
from .replies import CompleteReply, ReplyAssembler, capabilities
from .state import (
    BYTES_CAP,
    COUNT_CAP,
    PENDING_CAP,
    STAGE_AUTH,
    STAGE_BANNER,
    STAGE_BDAT,
    STAGE_CONNECT,
    STAGE_DATA,
    STAGE_DATA_BODY,
    STAGE_DATA_END,
    STAGE_EHLO,
    STAGE_MAIL,
    STAGE_QUIT,
    STAGE_RCPT,
    STAGE_STARTTLS,
    STAGE_TLS,
    USER_CAP,
    MessageStats,
    SessionState,
    bump,
    clip,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; only mypy reads this
    from collections.abc import Callable
    from typing import Any

    from .auth import AuthExchange

__all__ = ["MAX_LINE_BYTES", "Observer"]

MAX_LINE_BYTES = 65536
# Events of one kind per session; beyond, the state only counts.
MAX_REPEAT_EVENTS = 10
_MAX_MECHANISM = 32

# Client-side modes.
_CMD = 0
_HOLD = 1
_BODY = 2
_BDAT = 3
_TLS = 4

# Pseudo-verbs in the pending FIFO.
_GREETING = "GREETING"
_DATA_END = "DATA_END"
_BDAT_LAST = "BDAT_LAST"
_UNSEEN = "UNSEEN"  # lines held past the bound: answered, never parsed
_END_OF_MESSAGE = (_DATA_END, _BDAT_LAST)

_TLS_HANDSHAKE = 0x16
# First byte of a TLS record: change_cipher_spec, alert, handshake, data.
_TLS_RECORD_TYPES = frozenset((0x14, 0x15, 0x16, 0x17))
# Line heads read as commands even from a client taken for not SMTP.
_VERB_HEADS = (b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"STAR", b"AUTH",
               b"QUIT")
_VERB_LINE: Any = None


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


# Verbs that, once accepted, show a client taken for not SMTP speaks it after all.
_SPEAKS_SMTP = frozenset(("HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "STARTTLS", "AUTH"))
# 4xx/5xx replies logged as Reject events per session; the rest only counted.
MAX_REJECT_EVENTS = 10
# The end of the bytes held past the bound is kept, so that the commands a
# client sends after a long pipelined body (RSET, QUIT) are still parsed.
_RECENT_BYTES = 4096
# Body events kept from a speculative scan until the 354 that confirms it.
_MAX_SPEC_EVENTS = 64


class _Wait:
    """A command waiting for its reply; ``count`` > 1 for a run of unparsed lines.

    ``junk``: unknown lines of a client taken for not SMTP (or never parsed):
    their replies make no events, only counts.
    """

    __slots__ = ("verb", "arg", "count", "junk")

    def __init__(self, verb: str, arg: bytes | None, count: int, junk: bool = False) -> None:
        self.verb = verb
        self.arg = arg  # what a Reject line shows: an address, a mechanism, the line
        self.count = count
        self.junk = junk


def _default_tls() -> Any:
    from .tls import TLSStream  # only when TLS starts

    return TLSStream()


def _cap(value: int, cap: int = COUNT_CAP) -> int:
    return value if value < cap else cap


class Observer:
    """Watches one SMTP connection; see the module docstring.

    ``feed_client`` / ``feed_server`` take the bytes the relay just moved and
    return the events they complete; ``b""`` is EOF for that direction.
    ``stage`` and ``state`` (a SessionState) are readable at any time.
    ``tls_factory`` builds the TLS record parser (tests inject a stand-in).
    """

    def __init__(
        self, max_line_bytes: int = MAX_LINE_BYTES,
        tls_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.state = SessionState()
        self._tls_factory = tls_factory or _default_tls
        self._tls: Any = None
        self._creader = LineReader(max_line_bytes)
        self._sreader = LineReader(max_line_bytes)
        self._replies = ReplyAssembler()
        self._pending: list[_Wait] = [_Wait(_GREETING, None, 1)]
        self._cmode = _CMD
        self._server_tls = False
        self._hold = bytearray()
        self._hold_for: str | None = None  # "DATA", "STARTTLS" or "TLS" (a first 0x16)
        self._reset_overflow()
        self._arg: bytes | None = None  # the current command's Reject text
        self._reply_end = 0  # server stream offset just past the current reply line
        self._body: BodyScanner | None = None
        self._bdat_left = 0
        self._bdat_last = False
        self._auth: AuthExchange | None = None
        self._stage_before = STAGE_CONNECT
        self._greeted = False  # HELO/EHLO sent
        self._client_seen = False
        self._server_seen = False
        self._banner_done = False
        self._too_long = {"client": 0, "server": 0}
        self._unknown_run = 0

    @property
    def stage(self) -> str:
        """The last protocol step reached (a STAGE_* value)."""
        return self.state.stage

    @property
    def awaiting_data_reply(self) -> bool:
        """True between the end of a message (``.`` or BDAT LAST) and the server's reply.

        In that window the message may already be in the queue: a wrapper
        timeout must not fire there (it would make the client retry a message
        that was delivered).
        """
        return any(w.verb in _END_OF_MESSAGE for w in self._pending)

    @property
    def buffered(self) -> int:
        """Bytes held across feeds, all buffers together (bounded)."""
        n = (self._creader.buffered + self._sreader.buffered + len(self._hold)
             + self._replies.buffered)
        if self._body is not None:
            n += self._body.buffered
        return n

    def close_client(self) -> list[Event]:
        """Client EOF; same as ``feed_client(b"")``."""
        return self.feed_client(b"")

    def close_server(self) -> list[Event]:
        """Server EOF; same as ``feed_server(b"")``."""
        return self.feed_server(b"")

    # -- client side -----------------------------------------------------

    def feed_client(self, data: bytes) -> list[Event]:
        """Bytes from the client (``b""`` at EOF); returns completed events."""
        out: list[Event] = []
        st = self.state
        if st.client_closed:
            return out
        if not data:
            self._client_eof(out)
            return out
        st.client_bytes = _cap(st.client_bytes + len(data), BYTES_CAP)
        if not self._client_seen:
            self._client_seen = True
            if data[0] == _TLS_HANDSHAKE and not self._server_seen:
                self._start_hold("TLS")  # SMTPS, or junk: the server's first byte says
            elif not self._banner_done:
                st.early_talker = True
                out.append(EarlyTalker())
        self._client_data(data, out)
        return out

    def _client_data(self, data: bytes, out: list[Event]) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            mode = self._cmode
            if mode == _CMD:
                if self.state.not_smtp and self._auth is None:
                    pos, command = self._junk(data, pos)
                    if not command:
                        continue
                line, pos, cut_now, truncated = self._creader.next_line(data, pos)
                if cut_now:
                    self._line_too_long("client", out)
                if line is not None:
                    self._client_line(line, truncated, out)
            elif mode == _BODY:
                assert self._body is not None
                used, events, done = self._body.feed(data[pos:] if pos else data)
                out += events
                pos += used
                if done:
                    self._end_data(out)
            elif mode == _BDAT:
                assert self._body is not None
                take = min(self._bdat_left, n - pos)
                _, events, _ = self._body.feed(data[pos:pos + take])
                out += events
                pos += take
                self._bdat_left -= take
                if not self._bdat_left:
                    self._end_bdat_chunk(out)
            elif mode == _HOLD:
                self._hold_data(data[pos:] if pos else data, out)
                pos = n
            else:  # _TLS
                out += self._tls.feed_client(data[pos:] if pos else data)
                pos = n

    def _client_line(self, line: bytes, truncated: bool, out: list[Event]) -> None:
        if self._auth is not None:
            # A credential: the exchange takes the user name, the line dies here.
            self._auth.client_response(line)
            return
        st = self.state
        verb, args = split_command(line)
        bump(st.sent, verb)
        if verb != "UNKNOWN":
            self._unknown_run = 0
        else:
            self._unknown_run += 1
            if st.not_smtp or self._unknown_run >= NOT_SMTP_LINES:
                if not st.not_smtp:
                    self._not_smtp(out)
                self._push("UNKNOWN", None)  # one entry for the whole run
                return
        pending = self._waiting()
        if pending:
            self._check_pipelining(verb, pending, out)
        address = params = None
        if verb == "MAIL" or verb == "RCPT":
            path, rest = parse_path(args, b"FROM" if verb == "MAIL" else b"TO")
            if path is not None:
                address = clip(path)[0]
                params = clip(rest)[0] if rest else None
        initial = None
        if verb == "AUTH":
            mech, _, initial = args.partition(b" ")
            args = mech[:_MAX_MECHANISM].upper()
        text, cut = clip(args)
        out.append(Command(
            verb=verb, args=text, address=address, params=params,
            pipelined=pending > 0, truncated=truncated or cut,
        ))
        self._arg = clip(address if address is not None else text, USER_CAP)[0]
        handler = getattr(self, "_cmd_" + verb.lower(), None)
        if handler is None:
            self._push(verb)  # NOOP, VRFY, HELP, UNKNOWN...: only a reply to match
        else:
            handler(args, initial, out)

    def _junk(self, data: bytes, pos: int) -> tuple[int, bool]:
        """A client taken for not SMTP: its lines counted at C speed, not parsed.

        Only a line that starts with a verb that could bring it back to SMTP
        is read as a command (``True``: parse one line at the returned
        position); the lines before it become one pending run for their
        replies.  One regular-expression scan and one count per chunk, not a
        Python step per line: a binary stream stays cheap to relay.
        """
        st = self.state
        reader = self._creader
        seg = data[pos:] if pos else data
        if (reader.head(4) + seg[:4])[:4].upper() in _VERB_HEADS:
            return pos, True  # the line in progress (maybe begun in an earlier chunk)
        found = _verb_line_start().search(seg)
        last = seg.rfind(b"\n") if found is None else found.start()
        if last < 0:
            reader.next_line(seg, 0)  # no LF: only held (bounded)
            return len(data), False
        lines = seg.count(b"\n", 0, last + 1)
        reader.clear()
        st.sent["UNKNOWN"] = _cap(st.sent.get("UNKNOWN", 0) + lines)
        self._unknown_run = _cap(self._unknown_run + lines)
        self._push("UNKNOWN", None, lines)
        if found is not None:
            return pos + last + 1, True
        reader.next_line(seg[last + 1:], 0)  # the next line's start, held
        return len(data), False

    def _check_pipelining(self, verb: str, pending: int, out: list[Event]) -> None:
        st = self.state
        kind = None
        if not st.pipelining:
            kind = "unadvertised"
        else:
            for waiting in self._pending:
                if waiting.verb in LAST_IN_GROUP:
                    kind = "after_" + waiting.verb.lower()
                    break
        if kind is not None:
            self._violation(kind, verb, pending, out)

    def _violation(self, kind: str, verb: str | None, pending: int, out: list[Event]) -> None:
        st = self.state
        st.pipelining_violations = _cap(st.pipelining_violations + 1)
        if st.pipelining_violations <= MAX_REPEAT_EVENTS:
            out.append(PipeliningViolation(kind=kind, verb=verb, pending=pending))

    def _push(self, verb: str, arg: bytes | None | bool = False, count: int = 1) -> None:
        """Queue a reply to match; ``arg`` False: the current command's text.

        Unparsed lines, and unknown lines once the client is taken for not
        SMTP, are one entry per run: a flood of them costs no memory.
        """
        st = self.state
        pending = self._pending
        if arg is False:
            arg = self._arg if verb != _DATA_END else None
        junk = verb == _UNSEEN or (verb == "UNKNOWN" and st.not_smtp)
        if junk and pending and pending[-1].junk and pending[-1].verb == verb:
            pending[-1].count = _cap(pending[-1].count + count)
        elif len(pending) < PENDING_CAP:
            pending.append(_Wait(verb, arg or None, count, junk))  # type: ignore[arg-type]
        else:
            st.pending_dropped = _cap(st.pending_dropped + 1)
        st.pending = len(pending)

    def _waiting(self) -> int:
        """Commands sent and not answered yet (the banner aside)."""
        pending = self._pending
        return len(pending) - (bool(pending) and pending[0].verb == _GREETING)

    def _pop(self) -> _Wait | None:
        pending = self._pending
        if not pending:
            return None
        head = pending[0]
        if head.count > 1:
            head.count -= 1
            return head
        del pending[0]
        return head

    def _not_smtp(self, out: list[Event]) -> None:
        """The client does not speak SMTP: stop making events of its junk.

        Lines and replies are still followed (one pending entry for the
        whole run), so a client that turns to real commands the server
        accepts is observed again: junk must never hide a queued message.
        """
        self.state.not_smtp = True
        out.append(NotSmtp(unknown_lines=self._unknown_run))

    # One method per verb: what the command does to the FIFO, stage and modes.

    def _cmd_helo(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("HELO")
        self._greeted = True
        self.state.stage = STAGE_EHLO

    def _cmd_ehlo(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("EHLO")
        self._greeted = True
        self.state.stage = STAGE_EHLO

    def _cmd_mail(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("MAIL")
        self.state.stage = STAGE_MAIL

    def _cmd_rcpt(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("RCPT")
        self.state.stage = STAGE_RCPT

    def _cmd_rset(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("RSET")
        self._body = None  # an unfinished BDAT message is dropped
        st = self.state
        st.stage = STAGE_EHLO if self._greeted else (
            STAGE_BANNER if self._banner_done else STAGE_CONNECT)

    def _cmd_quit(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("QUIT")
        self.state.quit_sent = True
        self.state.stage = STAGE_QUIT

    def _cmd_data(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("DATA")
        self.state.stage = STAGE_DATA
        self._start_hold("DATA")

    def _cmd_starttls(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("STARTTLS")
        self._stage_before = self.state.stage
        self.state.stage = STAGE_STARTTLS
        self._start_hold("STARTTLS")

    def _cmd_auth(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("AUTH")
        st = self.state
        mechanism = args.decode("ascii", "replace")
        st.auth_mechanism = mechanism
        st.auth_user = None
        st.auth_result = None
        st.auth_code = None
        from .auth import AuthExchange  # only sessions that AUTH pay for it

        self._auth = AuthExchange(mechanism)
        if initial:
            self._auth.client_response(initial)
        if st.stage != STAGE_AUTH:
            self._stage_before = st.stage
        st.stage = STAGE_AUTH

    def _cmd_bdat(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        size, last = parse_bdat(args)
        st = self.state
        if size is None or not st.chunking:
            # Refused (qmail-smtpd: 502): no chunk follows, the bytes after it
            # are commands.  RFC 3030: only a server that offered CHUNKING
            # reads a chunk.
            self._push("BDAT")
            return
        st.stage = STAGE_BDAT
        if self._body is None:
            self._new_message("bdat", dot_mode=False)
            out.append(DataStart(message=st.messages, method="bdat"))
        assert st.message is not None
        st.message.chunks = _cap(st.message.chunks + 1)
        self._bdat_left = size
        self._bdat_last = last
        if size:
            self._cmode = _BDAT
        else:
            self._end_bdat_chunk(out)

    # -- holding bytes behind DATA / STARTTLS ------------------------------

    def _start_hold(self, verb: str) -> None:
        self._cmode = _HOLD
        self._hold_for = verb
        self._reset_overflow()

    def _reset_overflow(self) -> None:
        self._over_bytes = 0  # held bytes past the bound: counted, not kept
        self._over_lines = 0  # ... and their LFs, should they be commands
        self._over_tail = False  # ... ending inside a line
        self._spec: BodyScanner | None = None  # ... scanned as the body a 354 would make
        self._spec_events: list[Event] = []
        self._spec_done = False  # the speculative body reached its end marker
        self._after_lines = 0  # LFs after that end marker (commands if 354)
        self._after_tail = False
        self._after_bytes = 0
        self._recent = b""  # the last _RECENT_BYTES held past the bound, parsed at release

    def _hold_data(self, data: bytes, out: list[Event]) -> None:
        hold = self._hold
        if not hold and not self._over_bytes and self._hold_for != "TLS":
            self._violation("after_" + (self._hold_for or "").lower(), None,
                            len(self._pending), out)
        if self._over_bytes:
            self._overflow(data)
            return
        room = self.max_line_bytes - len(hold)
        if len(data) <= room:
            hold += data
            return
        hold += data[:room]
        if self._hold_for == "DATA":
            # A client that streams its body before the 354: scan it as the
            # body it will be if the server says 354, from its first byte.
            st = self.state
            self._spec = BodyScanner(MessageStats(_cap(st.messages + 1), "data"), True)
            self._spec_feed(bytes(hold))
        self._overflow(data[room:])

    def _overflow(self, data: bytes) -> None:
        """Bytes held past the bound: counted both ways, kept neither."""
        self._over_bytes = _cap(self._over_bytes + len(data), BYTES_CAP)
        self._over_lines = _cap(self._over_lines + data.count(b"\n"))
        self._over_tail = data[-1:] != b"\n"
        recent = self._recent + data if len(data) < _RECENT_BYTES else data
        self._recent = recent[-_RECENT_BYTES:]
        if self._spec is not None:
            self._spec_feed(data)

    def _spec_feed(self, data: bytes) -> None:
        if not self._spec_done:
            assert self._spec is not None
            used, events, done = self._spec.feed(data)
            room = _MAX_SPEC_EVENTS - len(self._spec_events)
            if room > 0:
                self._spec_events += events[:room]
            if not done:
                return
            self._spec_done = True
            data = data[used:]
        if data:
            self._after_lines = _cap(self._after_lines + data.count(b"\n"))
            self._after_tail = data[-1:] != b"\n"
            self._after_bytes = _cap(self._after_bytes + len(data), BYTES_CAP)

    def _release_hold(self, out: list[Event]) -> None:
        """The held command was refused: the held bytes are commands again."""
        held = bytes(self._hold)
        over, lines, tail = self._over_bytes, self._over_lines, self._over_tail
        recent = self._recent
        self._hold.clear()
        self._hold_for = None
        self._reset_overflow()
        self._cmode = _CMD
        if held:
            self._client_data(held, out)
        if over:
            self._unseen(lines, tail, over, recent, over, out)

    def _unseen(self, lines: int, tail: bool, nbytes: int, recent: bytes, region: int,
                out: list[Event]) -> None:
        """Commands held past the bound: parse what was kept, keep the replies matched.

        ``lines`` LFs ended in the ``nbytes`` not kept whole, ``tail`` says one
        more line goes on in the next bytes.  ``recent`` ends where they end;
        its last ``region`` bytes belong to them.  The server answers every
        line: the ones we cannot read become one pending run.
        """
        st = self.state
        if self._cmode == _HOLD:  # the held bytes began another hold
            self._over_bytes = _cap(self._over_bytes + nbytes, BYTES_CAP)
            self._over_lines = _cap(self._over_lines + lines)
            self._over_tail = tail
            self._recent = recent
            return
        if self._cmode != _CMD:
            return  # a BDAT chunk began in what we kept: bytes only
        if region <= len(recent):
            parse = recent[len(recent) - region:]  # all of it was kept: no guess
        else:
            lf = recent.find(b"\n")
            parse = recent[lf + 1:] if lf >= 0 else b""
            unseen = lines - parse.count(b"\n")
            if unseen > 0:
                self._creader.clear()
                self._push(_UNSEEN, None, unseen)
                st.unseen_lines = _cap(st.unseen_lines + unseen)
            if lf < 0:
                self._creader.skip()  # the line in progress began out of sight
        if parse:
            self._client_data(parse, out)

    # -- bodies ------------------------------------------------------------

    def _new_message(self, method: str, dot_mode: bool) -> None:
        st = self.state
        st.messages = _cap(st.messages + 1)
        st.message = MessageStats(st.messages, method)
        self._body = BodyScanner(st.message, dot_mode)

    def _begin_body(self, out: list[Event]) -> None:
        """354: the held bytes are the body (scanned already past the bound)."""
        st = self.state
        spec = self._spec
        if spec is None:
            self._new_message("data", dot_mode=True)
        else:
            st.messages = spec.stats.message
            st.message = spec.stats
            self._body = spec
        out.append(DataStart(message=st.messages, method="data"))
        st.stage = STAGE_DATA_BODY
        held = bytes(self._hold)
        self._hold.clear()
        self._hold_for = None
        self._cmode = _BODY
        if spec is None:
            if held:
                self._client_data(held, out)
            return
        out += self._spec_events
        done, lines, tail = self._spec_done, self._after_lines, self._after_tail
        after, recent = self._after_bytes, self._recent
        self._reset_overflow()
        if done:
            self._end_data(out)
            if after:
                self._unseen(lines, tail, after, recent, after, out)

    def _data_end_event(self) -> DataEnd:
        m = self.state.message
        assert m is not None
        return DataEnd(**{key: getattr(m, key) for key in DataEnd.__slots__})

    def _end_data(self, out: list[Event]) -> None:
        out.append(self._data_end_event())
        self.state.stage = STAGE_DATA_END
        self._body = None
        self._cmode = _CMD
        self._push(_DATA_END)

    def _end_bdat_chunk(self, out: list[Event]) -> None:
        """The chunk is read: its reply is due now (pushed here, not at the command)."""
        self._cmode = _CMD
        self._push(_BDAT_LAST if self._bdat_last else "BDAT")
        if self._bdat_last:
            m = self.state.message
            assert m is not None
            m.complete = True
            out.append(self._data_end_event())
            self.state.stage = STAGE_DATA_END
            self._body = None

    # -- server side -----------------------------------------------------

    def feed_server(self, data: bytes) -> list[Event]:
        """Bytes from the server (``b""`` at EOF); returns completed events."""
        out: list[Event] = []
        st = self.state
        if st.server_closed:
            return out
        if not data:
            self._server_eof(out)
            return out
        base = st.server_bytes
        st.server_bytes = _cap(base + len(data), BYTES_CAP)
        if not self._server_seen:
            self._server_seen = True
            if self._hold_for == "TLS":
                self._implicit_tls(data[0] in _TLS_RECORD_TYPES, out)
        pos = 0
        n = len(data)
        while pos < n:
            if self._server_tls:
                chunk = data[pos:] if pos else data
                if not st.tls_active and chunk[0] in _TLS_RECORD_TYPES:
                    st.tls_active = True  # TLS only once the server speaks it
                out += self._tls.feed_server(chunk)
                break
            line, pos, cut_now, truncated = self._sreader.next_line(data, pos)
            if cut_now:
                self._line_too_long("server", out)
            if line is not None:
                self._reply_end = base + pos
                self._server_line(line, truncated, out)
        return out

    def _implicit_tls(self, tls: bool, out: list[Event]) -> None:
        """The client opened with 0x16: SMTPS if the server answers in TLS, else SMTP."""
        if tls:
            self._start_tls(out, implicit=True)
            return
        st = self.state
        st.early_talker = True
        out.append(EarlyTalker())
        self._release_hold(out)

    def _server_line(self, line: bytes, truncated: bool, out: list[Event]) -> None:
        parsed = parse_reply_line(line)
        if parsed is None:
            st = self.state
            st.malformed_replies = _cap(st.malformed_replies + 1)
            if st.malformed_replies <= MAX_REPEAT_EVENTS:
                text, cut = clip(line)
                out.append(MalformedReply(text=text, truncated=cut or truncated))
            return
        code, more, text = parsed
        reply = self._replies.add(code, more, text, truncated)
        if reply is not None:
            self._reply(reply, out)

    def _reply(self, r: CompleteReply, out: list[Event]) -> None:
        st = self.state
        stage = st.stage
        wait = self._pop()
        verb = wait.verb if wait is not None else None
        challenge = verb == "AUTH" and r.code == 334 and self._auth is not None
        if challenge:
            self._pending.insert(0, _Wait("AUTH", wait.arg, 1))  # type: ignore[union-attr]
        elif verb == _BDAT_LAST and r.code == 503:
            verb = "BDAT"  # out of sequence: the message never reached a queue
        st.pending = len(self._pending)
        st.last_reply_code = r.code
        st.last_reply_enhanced = r.enhanced
        st.last_reply_text = r.text
        st.last_reply_command = verb
        st.last_reply_stage = stage
        if verb == _GREETING:
            self._banner_done = True
            st.banner_code = r.code
            out.append(Banner(code=r.code, enhanced=r.enhanced, text=r.text,
                              truncated=r.truncated))
            if st.stage == STAGE_CONNECT:
                st.stage = STAGE_BANNER
            return
        junk = wait is not None and wait.junk
        if not junk:
            out.append(Reply(code=r.code, enhanced=r.enhanced, text=r.text, lines=r.lines,
                             command=verb, in_stage=stage, truncated=r.truncated))
        if challenge:
            return
        if verb is None and self._body is not None:
            st.unsolicited_replies = _cap(st.unsolicited_replies + 1)
            self._data_rejected(r, stage, out)
            return
        if r.code >= 400:
            self._reject(r, wait, stage, junk, out)
        if verb is None:
            st.unsolicited_replies = _cap(st.unsolicited_replies + 1)
            return
        if verb in _END_OF_MESSAGE:
            st.end_reply_offset = self._reply_end
        if verb == _UNSEEN:
            return
        if st.not_smtp and 200 <= r.code < 400 and (junk or verb in _SPEAKS_SMTP):
            st.not_smtp = False  # back to commands the server accepts
        bump(st.accepted if 200 <= r.code < 400 else st.rejected, verb)
        handler = getattr(self, "_reply_" + verb.lower(), None)
        if handler is not None:
            handler(r, out)

    def _reply_ehlo(self, r: CompleteReply, out: list[Event]) -> None:
        if r.code != 250:
            return
        st = self.state
        caps = capabilities(r)
        out.append(caps)
        st.ehlo_seen = True
        st.pipelining = bool(caps.pipelining)  # type: ignore[attr-defined]
        st.starttls_offered = bool(caps.starttls)  # type: ignore[attr-defined]
        st.chunking = bool(caps.chunking)  # type: ignore[attr-defined]
        st.size_limit = caps.size  # type: ignore[attr-defined]
        st.auth_offered = caps.auth  # type: ignore[attr-defined]

    def _reply_helo(self, r: CompleteReply, out: list[Event]) -> None:
        if r.code == 250:
            self.state.pipelining = False

    def _reject(self, r: CompleteReply, wait: _Wait | None, stage: str, junk: bool,
                out: list[Event]) -> None:
        """A 4xx/5xx reply: counted always, a Reject event for the first few."""
        st = self.state
        st.rejects = _cap(st.rejects + 1)
        if junk or st.rejects > MAX_REJECT_EVENTS:
            st.rejects_unlogged = _cap(st.rejects_unlogged + 1)
            return
        verb = wait.verb if wait is not None else None
        out.append(Reject(code=r.code, enhanced=r.enhanced, text=r.text,
                          command=None if verb == _GREETING else verb,
                          arg=wait.arg if wait is not None else None, in_stage=stage,
                          truncated=r.truncated))

    def _reply_data(self, r: CompleteReply, out: list[Event]) -> None:
        if self._hold_for != "DATA" or self._cmode != _HOLD:
            return  # nothing held for this DATA (replies out of step)
        if r.code == 354:
            self._begin_body(out)
        else:
            self._release_hold(out)

    def _reply_data_end(self, r: CompleteReply, out: list[Event]) -> None:
        if 200 <= r.code < 300:
            self.state.messages_queued = _cap(self.state.messages_queued + 1)

    _reply_bdat_last = _reply_data_end

    def _reply_quit(self, r: CompleteReply, out: list[Event]) -> None:
        self.state.quit_answered = True

    def _reply_starttls(self, r: CompleteReply, out: list[Event]) -> None:
        if r.code == 220:
            self._start_tls(out, implicit=False)
        else:
            self.state.stage = self._stage_before
            if self._cmode == _HOLD:
                self._release_hold(out)

    def _reply_auth(self, r: CompleteReply, out: list[Event]) -> None:
        auth = self._auth
        if auth is None:
            return
        self._auth = None
        st = self.state
        if auth.cancelled:
            result = "cancelled"
        elif 200 <= r.code < 300:
            result = "ok"
        else:
            result = "failed"
        st.auth_user = auth.user
        st.auth_result = result
        st.auth_code = r.code
        st.stage = self._stage_before
        out.append(AuthResult(
            mechanism=auth.mechanism, user=auth.user, user_truncated=auth.user_truncated,
            result=result, code=r.code, enhanced=r.enhanced,
        ))

    def _data_rejected(self, r: CompleteReply, stage: str, out: list[Event]) -> None:
        m = self.state.message
        assert m is not None
        event = DataRejected(
            code=r.code, enhanced=r.enhanced, text=r.text, truncated=r.truncated,
            in_stage=stage, message=m.message, body_bytes=m.wire_bytes,
            body_lines=m.lines, bare_lf_count=m.bare_lf_count,
            bare_lf_first_line=m.bare_lf_first_line, bare_cr_count=m.bare_cr_count,
            nul_count=m.nul_count,
        )
        self.state.data_rejected = event
        out.append(event)

    # -- TLS, EOF, limits --------------------------------------------------

    def _start_tls(self, out: list[Event], implicit: bool) -> None:
        st = self.state
        st.tls_implicit = implicit
        st.stage = STAGE_TLS
        out.append(StartTLS(implicit=implicit))
        self._tls = self._tls_factory()
        self._cmode = _TLS
        self._server_tls = True
        self._pending.clear()
        st.pending = 0
        self._auth = None
        self._body = None
        held = bytes(self._hold)
        dropped = self._over_bytes
        self._hold.clear()
        self._reset_overflow()
        if held or dropped:
            if held[:1] == bytes((_TLS_HANDSHAKE,)) and not dropped:
                out += self._tls.feed_client(held)  # an eager ClientHello
            elif not implicit:
                length = _cap(len(held) + dropped, BYTES_CAP)
                st.starttls_injection = length
                out.append(StartTLSInjection(length=length))
        self._hold_for = None

    def _line_too_long(self, direction: str, out: list[Event]) -> None:
        st = self.state
        st.lines_too_long = _cap(st.lines_too_long + 1)
        self._too_long[direction] += 1
        if self._too_long[direction] <= MAX_REPEAT_EVENTS:
            out.append(LineTooLong(direction=direction, limit=self.max_line_bytes))

    def _client_eof(self, out: list[Event]) -> None:
        st = self.state
        st.client_closed = True
        if self._cmode == _TLS:
            out += self._tls.feed_client(b"")
        partial = self._creader.clear() + len(self._hold) + self._over_bytes
        self._hold.clear()
        out.append(PeerClosed(peer="client", stage=st.stage, pending=self._waiting(),
                              partial_bytes=_cap(partial, BYTES_CAP)))

    def _server_eof(self, out: list[Event]) -> None:
        st = self.state
        st.server_closed = True
        if self._server_tls:
            out += self._tls.feed_server(b"")
        partial = self._sreader.clear()
        if self._hold_for == "TLS" and self._cmode == _HOLD:
            st.tls_unanswered = True  # a ClientHello the server closed on
        out.append(PeerClosed(peer="server", stage=st.stage, pending=self._waiting(),
                              partial_bytes=partial))

