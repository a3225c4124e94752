"""The Observer: one SMTP connection followed from both sides, sans-IO.

Bytes in, events out (h11 style).  The client side is read in one of a few
modes -- command lines, bytes held behind DATA/STARTTLS until their reply,
a DATA body, BDAT chunk bytes, opaque TLS -- and the server side as reply
lines until TLS starts.  Replies are matched to commands through a FIFO of
pending verbs, which is what makes pipelining (RFC 2920) visible.

Client bytes sent behind DATA or STARTTLS before the server answered are
held (bounded) rather than guessed at: after a 354 they are body, after a 220
they are TLS (or a CVE-2011-0411 style injection), after a refusal they are
commands -- exactly as the server will read them.

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
_OPAQUE = 5  # not SMTP: bytes are counted, not parsed

# Pseudo-verbs in the pending FIFO.
_GREETING = "GREETING"
_DATA_END = "DATA_END"
_BDAT_LAST = "BDAT_LAST"

_TLS_HANDSHAKE = 0x16


def _default_tls() -> Any:
    from supervise_smtp.tls import TLSStream  # only when TLS starts

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
        self._pending: list[str] = [_GREETING]
        self._cmode = _CMD
        self._server_tls = False
        self._hold = bytearray()
        self._hold_for: str | None = None
        self._hold_dropped = 0
        self._early_body = False  # hold overflowed: body begun before its 354
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
        return _DATA_END in self._pending or _BDAT_LAST in self._pending

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
                self._start_tls(out, implicit=True)
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
            elif mode == _OPAQUE:
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
            if self._unknown_run >= NOT_SMTP_LINES:
                self._not_smtp(out)
                return
        pending = len(self._pending) - (self._pending[:1] == [_GREETING])
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
        handler = getattr(self, "_cmd_" + verb.lower(), None)
        if handler is None:
            self._push(verb)  # NOOP, VRFY, HELP, UNKNOWN...: only a reply to match
        else:
            handler(args, initial, out)

    def _check_pipelining(self, verb: str, pending: int, out: list[Event]) -> None:
        st = self.state
        kind = None
        if not st.pipelining:
            kind = "unadvertised"
        else:
            for waiting in self._pending:
                if waiting in LAST_IN_GROUP:
                    kind = "after_" + waiting.lower()
                    break
        if kind is not None:
            self._violation(kind, verb, pending, out)

    def _violation(self, kind: str, verb: str | None, pending: int, out: list[Event]) -> None:
        st = self.state
        st.pipelining_violations = _cap(st.pipelining_violations + 1)
        if st.pipelining_violations <= MAX_REPEAT_EVENTS:
            out.append(PipeliningViolation(kind=kind, verb=verb, pending=pending))

    def _push(self, verb: str) -> None:
        st = self.state
        if len(self._pending) < PENDING_CAP:
            self._pending.append(verb)
        else:
            st.pending_dropped = _cap(st.pending_dropped + 1)
        st.pending = len(self._pending)

    def _not_smtp(self, out: list[Event]) -> None:
        """Stop parsing both directions: the client does not speak SMTP."""
        self.state.not_smtp = True
        self._cmode = _OPAQUE
        self._pending.clear()
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
        self._push(_BDAT_LAST if last else "BDAT")
        if size is None:
            return  # the server will refuse it; no chunk bytes are framed
        st = self.state
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
        self._hold_dropped = 0

    def _hold_data(self, data: bytes, out: list[Event]) -> None:
        hold = self._hold
        if not hold and not self._hold_dropped:
            pending = len(self._pending)
            self._violation("after_" + (self._hold_for or "").lower(), None, pending, out)
        room = self.max_line_bytes - len(hold)
        if len(data) <= room:
            hold += data
            return
        hold += data[:room]
        if self._hold_for == "DATA":
            # A client that streams its body without waiting: take it as body.
            self._early_body = True
            self._begin_body(out)
            self._client_data(data[room:], out)
        else:
            self._hold_dropped = _cap(self._hold_dropped + len(data) - room, BYTES_CAP)

    def _release_hold(self, out: list[Event]) -> None:
        """The held command was refused: the held bytes are commands again."""
        held = bytes(self._hold)
        self._hold.clear()
        self._hold_for = None
        self._cmode = _CMD
        if held:
            self._client_data(held, out)

    # -- bodies ------------------------------------------------------------

    def _new_message(self, method: str, dot_mode: bool) -> None:
        st = self.state
        st.messages = _cap(st.messages + 1)
        st.message = MessageStats(st.messages, method)
        self._body = BodyScanner(st.message, dot_mode)

    def _begin_body(self, out: list[Event]) -> None:
        st = self.state
        self._new_message("data", dot_mode=True)
        out.append(DataStart(message=st.messages, method="data"))
        st.stage = STAGE_DATA_BODY
        held = bytes(self._hold)
        self._hold.clear()
        self._hold_for = None
        self._cmode = _BODY
        if held:
            self._client_data(held, out)

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
        self._cmode = _CMD
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
        st.server_bytes = _cap(st.server_bytes + len(data), BYTES_CAP)
        self._server_seen = True
        pos = 0
        n = len(data)
        while pos < n:
            if self._server_tls:
                out += self._tls.feed_server(data[pos:] if pos else data)
                break
            if self._cmode == _OPAQUE:
                break
            line, pos, cut_now, truncated = self._sreader.next_line(data, pos)
            if cut_now:
                self._line_too_long("server", out)
            if line is not None:
                self._server_line(line, truncated, out)
        return out

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
        verb = self._pending.pop(0) if self._pending else None
        challenge = verb == "AUTH" and r.code == 334 and self._auth is not None
        if challenge:
            self._pending.insert(0, "AUTH")  # the final reply is still to come
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
        out.append(Reply(code=r.code, enhanced=r.enhanced, text=r.text, lines=r.lines,
                         command=verb, in_stage=stage, truncated=r.truncated))
        if challenge:
            return
        if verb is None:
            st.unsolicited_replies = _cap(st.unsolicited_replies + 1)
            if self._body is not None:
                self._data_rejected(r, stage, out)
            return
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

    def _reply_data(self, r: CompleteReply, out: list[Event]) -> None:
        if self._early_body:
            self._early_body = False
        elif r.code == 354:
            self._begin_body(out)
        elif self._cmode == _HOLD:
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
        st.tls_active = True
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
        self._hold.clear()
        if held or self._hold_dropped:
            if held[:1] == bytes((_TLS_HANDSHAKE,)) and not self._hold_dropped:
                out += self._tls.feed_client(held)  # an eager ClientHello
            else:
                length = _cap(len(held) + self._hold_dropped, BYTES_CAP)
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
        partial = self._creader.clear() + len(self._hold) + self._hold_dropped
        self._hold.clear()
        pending = len(self._pending) - (self._pending[:1] == [_GREETING])
        out.append(PeerClosed(peer="client", stage=st.stage, pending=pending,
                              partial_bytes=_cap(partial, BYTES_CAP)))

    def _server_eof(self, out: list[Event]) -> None:
        st = self.state
        st.server_closed = True
        if self._server_tls:
            out += self._tls.feed_server(b"")
        partial = self._sreader.clear()
        pending = len(self._pending) - (self._pending[:1] == [_GREETING])
        out.append(PeerClosed(peer="server", stage=st.stage, pending=pending,
                              partial_bytes=partial))

