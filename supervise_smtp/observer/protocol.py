"""The Observer: one SMTP connection followed from both sides, sans-IO.

Bytes in, events out (h11 style).  The client's bytes are read by a
ClientReader (client.py: command lines, bytes held behind DATA/STARTTLS, a
DATA body, BDAT chunks, opaque TLS), the server's here, as reply lines until
TLS starts.  Replies are matched to commands through a FIFO of pending verbs
(replies.Pending), which is what makes pipelining (RFC 2920) visible, and
the stage moves by one table (state.TRANSITIONS).

What the client's bytes are is decided by the server's answer, never
guessed before it: bytes sent behind DATA or STARTTLS, or a first byte 0x16
before the banner, are held (bounded) until the reply.  After a 354 they are
body, after a 220 TLS (or a CVE-2011-0411 style injection), after a refusal
commands; a first 0x16 is SMTPS only once the server answers with TLS
records.  Beyond the bound the held bytes are only counted, while a
speculative body scan and a count of their lines keep both readings exact
enough to stay in step with the server's replies (hold.py).  BDAT bytes are
a chunk only when the server advertised CHUNKING.  A message is queued only
when the server's reply to its end accepted it.

We observe, we never enforce: peer misbehaviour is an event, and peer input
never raises.  Nothing here does I/O, reads a clock or logs.
"""

from __future__ import annotations

from .client import HOLD, ClientReader, line_too_long
from .commands import is_tls_record, opens_tls, parse_reply_line
from .events import (
    AuthResult,
    Banner,
    DataRejected,
    EarlyTalker,
    Event,
    MalformedReply,
    PeerClosed,
    Reject,
    Reply,
    StartTLS,
)
from .lines import LineReader
from .replies import (
    BDAT_LAST,
    END_OF_MESSAGE,
    GREETING,
    UNSEEN,
    CompleteReply,
    Pending,
    ReplyAssembler,
    Wait,
    capabilities,
)
from .state import (
    BYTES_CAP,
    EV_AUTH_DONE,
    EV_GREETING,
    EV_TLS,
    EV_TLS_REFUSED,
    MAX_REPEAT_EVENTS,
    SessionState,
    StageMachine,
    bump,
    capped,
    clip,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; only mypy reads this
    from collections.abc import Callable
    from typing import Any

__all__ = ["MAX_REJECT_EVENTS", "MAX_SMTP_LINE_BYTES", "Observer"]

# Longest command or reply line kept whole, and the bytes held behind
# DATA/STARTTLS before they are only counted.
MAX_SMTP_LINE_BYTES = 65536
# 4xx/5xx replies logged as Reject events per session; the rest only counted.
MAX_REJECT_EVENTS = 10
# Verbs that, once accepted, show a client taken for not SMTP speaks it after all.
_SPEAKS_SMTP = frozenset(("HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "STARTTLS", "AUTH"))


def _default_tls() -> Any:
    from .tls import TLSStream  # only when TLS starts

    return TLSStream()


class Observer:
    """Watches one SMTP connection; see the module docstring.

    ``feed_client`` / ``feed_server`` take the bytes the relay just moved and
    return the events they complete; ``b""`` is EOF for that direction.
    ``stage`` and ``state`` (a SessionState) are readable at any time.
    ``tls_factory`` builds the TLS record parser (tests inject a stand-in).
    """

    def __init__(
        self, max_line_bytes: int = MAX_SMTP_LINE_BYTES,
        tls_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.state = state = SessionState()
        self._stages = StageMachine(state)
        self._pending = Pending(state)
        self._client = ClientReader(state, self._stages, self._pending, max_line_bytes)
        self._tls_factory = tls_factory or _default_tls
        self._tls: Any = None
        self._sreader = LineReader(max_line_bytes)
        self._replies = ReplyAssembler()
        self._server_tls = False
        self._tls_first_byte = True  # the next server byte is the first after TLS began
        self._reply_end = 0  # server stream offset just past the current reply line
        self._last_reply_end = 0  # ... just past the last complete reply
        self._client_seen = False
        self._server_seen = False
        self._banner_done = False
        self._too_long = 0  # server lines cut

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
        return self._pending.end_of_message()

    @property
    def waiting(self) -> int:
        """Commands sent and not answered yet (the banner aside)."""
        return self._pending.waiting()

    @property
    def buffered(self) -> int:
        """Bytes held across feeds, all buffers together (bounded)."""
        return self._client.buffered + self._sreader.buffered + self._replies.buffered

    def close_client(self) -> list[Event]:
        """Client EOF; same as ``feed_client(b"")``."""
        return self.feed_client(b"")

    def close_server(self) -> list[Event]:
        """Server EOF; same as ``feed_server(b"")``."""
        return self.feed_server(b"")

    def feed_client(self, data: bytes) -> list[Event]:
        """Bytes from the client (``b""`` at EOF); returns completed events."""
        out: list[Event] = []
        st = self.state
        if st.client_closed:
            return out
        if not data:
            self._client.eof(out)
            return out
        st.client_bytes = capped(st.client_bytes + len(data), BYTES_CAP)
        if not self._client_seen:
            self._client_seen = True
            if opens_tls(data) and not self._server_seen:
                self._client.start_hold("TLS")  # SMTPS, or junk: the server's first byte says
            elif not self._banner_done:
                st.early_talker = True
                out.append(EarlyTalker())
        self._client.feed(data, out)
        return out

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
        st.server_bytes = capped(base + len(data), BYTES_CAP)
        if not self._server_seen:
            self._server_seen = True
            if self._client.hold.verb == "TLS":
                self._implicit_tls(is_tls_record(data), out)
        pos = 0
        n = len(data)
        while pos < n:
            if self._server_tls:
                chunk = data[pos:] if pos else data
                if self._tls_first_byte:
                    # TLS only once the server speaks it, judged on the first byte
                    # after the 220 (where the chunk starts is the network's choice)
                    self._tls_first_byte = False
                    st.tls_active = is_tls_record(chunk)
                out += self._tls.feed_server(chunk)
                break
            line, pos, cut_now, truncated = self._sreader.next_line(data, pos)
            if cut_now:
                self._too_long = line_too_long(st, self._too_long, "server",
                                               self.max_line_bytes, out)
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
        self._client.release_hold(out)

    def _server_line(self, line: bytes, truncated: bool, out: list[Event]) -> None:
        parsed = parse_reply_line(line)
        if parsed is None:
            st = self.state
            st.malformed_replies = capped(st.malformed_replies + 1)
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
        start, self._last_reply_end = self._last_reply_end, self._reply_end
        stage = st.stage
        wait = self._pending.pop()
        verb = wait.verb if wait is not None else None
        challenge = verb == "AUTH" and r.code == 334 and self._client.auth is not None
        if challenge:
            self._pending.push_front(Wait("AUTH", wait.arg, 1))  # type: ignore[union-attr]
            self._client.auth_asked()
        elif verb == BDAT_LAST and r.code == 503:
            verb = "BDAT"  # out of sequence: the message never reached a queue
        st.last_reply_code = r.code
        st.last_reply_enhanced = r.enhanced
        st.last_reply_text = r.text
        st.last_reply_command = verb
        st.last_reply_stage = stage
        if verb == GREETING:
            self._banner_done = True
            st.banner_code = r.code
            out.append(Banner(code=r.code, enhanced=r.enhanced, text=r.text,
                              truncated=r.truncated))
            self._stages.move(EV_GREETING)
            return
        junk = wait is not None and wait.junk
        if not junk:
            out.append(Reply(code=r.code, enhanced=r.enhanced, text=r.text, lines=r.lines,
                             command=verb, in_stage=stage, truncated=r.truncated))
        if challenge:
            return
        if verb is None and self._client.body is not None:
            st.unsolicited_replies = capped(st.unsolicited_replies + 1)
            self._data_rejected(r, stage, out)
            return
        if r.code >= 400:
            self._reject(r, wait, stage, junk, out)
        if verb is None:
            st.unsolicited_replies = capped(st.unsolicited_replies + 1)
            return
        if verb in END_OF_MESSAGE:
            st.end_reply_offset = self._reply_end
        elif verb == "QUIT":
            st.quit_reply_start = start
        if verb == UNSEEN:
            return
        if st.not_smtp and 200 <= r.code < 400 and (junk or verb in _SPEAKS_SMTP):
            st.not_smtp = False  # back to commands the server accepts
        bump(st.accepted if 200 <= r.code < 400 else st.rejected, verb)
        handler = getattr(self, "_reply_" + verb.lower(), None)
        if handler is not None:
            handler(r, out)

    def _reject(self, r: CompleteReply, wait: Wait | None, stage: str, junk: bool,
                out: list[Event]) -> None:
        """A 4xx/5xx reply: counted always, a Reject event for the first few."""
        st = self.state
        st.rejects = capped(st.rejects + 1)
        if junk or st.rejects > MAX_REJECT_EVENTS:
            st.rejects_unlogged = capped(st.rejects_unlogged + 1)
            return
        verb = wait.verb if wait is not None else None
        out.append(Reject(code=r.code, enhanced=r.enhanced, text=r.text,
                          command=None if verb == GREETING else verb,
                          arg=wait.arg if wait is not None else None, in_stage=stage,
                          truncated=r.truncated))

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

    # One method per verb whose reply changes more than the counts.

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
        client = self._client
        if client.hold.verb != "DATA" or client.mode != HOLD:
            return  # nothing held for this DATA (replies out of step)
        if r.code == 354:
            client.begin_body(out)
        else:
            client.release_hold(out)

    def _reply_data_end(self, r: CompleteReply, out: list[Event]) -> None:
        if 200 <= r.code < 300:
            self.state.messages_queued = capped(self.state.messages_queued + 1)

    _reply_bdat_last = _reply_data_end

    def _reply_quit(self, r: CompleteReply, out: list[Event]) -> None:
        self.state.quit_answered = True

    def _reply_starttls(self, r: CompleteReply, out: list[Event]) -> None:
        if r.code == 220:
            self._start_tls(out, implicit=False)
            return
        self._stages.move(EV_TLS_REFUSED)
        if self._client.mode == HOLD:
            self._client.release_hold(out)

    def _reply_auth(self, r: CompleteReply, out: list[Event]) -> None:
        auth = self._client.auth_done()
        if auth is None:
            return
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
        self._stages.move(EV_AUTH_DONE)
        out.append(AuthResult(
            mechanism=auth.mechanism, user=auth.user, user_truncated=auth.user_truncated,
            result=result, code=r.code, enhanced=r.enhanced,
        ))

    # -- TLS, EOF ----------------------------------------------------------

    def _start_tls(self, out: list[Event], implicit: bool) -> None:
        st = self.state
        st.tls_implicit = implicit
        self._stages.move(EV_TLS)
        out.append(StartTLS(implicit=implicit))
        self._tls = self._tls_factory()
        self._server_tls = True
        self._pending.clear()
        self._client.start_tls(self._tls, implicit, out)

    def _server_eof(self, out: list[Event]) -> None:
        st = self.state
        st.server_closed = True
        if self._server_tls:
            out += self._tls.feed_server(b"")
        partial = self._sreader.clear()
        client = self._client
        if client.hold.verb == "TLS" and client.mode == HOLD:
            st.tls_unanswered = True  # a ClientHello the server closed on
        out.append(PeerClosed(peer="server", stage=st.stage, pending=self._pending.waiting(),
                              partial_bytes=partial))
