"""The client's side of the Observer: command lines, held bytes, bodies, TLS.

The client's bytes are read in one of a few modes: command lines (CMD),
bytes held behind DATA/STARTTLS until their reply (HOLD, see hold.py), a DATA
body (BODY), BDAT chunk bytes (BDAT), opaque TLS (TLS).  The server's replies
switch the mode (``begin_body``, ``release_hold``, ``start_tls``), the
client's own bytes switch it back (end of data, end of a chunk).

Command lines are read the way qmail-smtpd's commands.c reads them: up to
LF, one CR dropped, a C string (cut at the first NUL), the verb up to the
first space, case-insensitive.  One method per verb says what the command
does besides moving the stage (TRANSITIONS) and waiting for its reply.
"""

from __future__ import annotations

from .body import BodyScanner
from .commands import NOT_SMTP_LINES, junk_lines, opens_tls, parse_bdat, parse_path, split_command
from .events import (
    Command,
    DataEnd,
    DataStart,
    LineTooLong,
    NotSmtp,
    PeerClosed,
    PipeliningViolation,
    StartTLSInjection,
)
from .hold import HeldBytes
from .lines import LineReader
from .replies import BDAT_LAST, DATA_END, UNSEEN, Pending
from .state import (
    BYTES_CAP,
    EV_CHUNK,
    EV_END_OF_DATA,
    EV_GO_AHEAD,
    MAX_REPEAT_EVENTS,
    USER_CAP,
    MessageStats,
    SessionState,
    StageMachine,
    bump,
    capped,
    clip,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; only mypy reads this
    from typing import Any

    from .auth import AuthExchange
    from .events import Event

__all__ = ["BDAT", "BODY", "CMD", "HOLD", "TLS", "ClientReader", "line_too_long"]

# Client-side modes.
CMD = 0
HOLD = 1
BODY = 2
BDAT = 3
TLS = 4

_MAX_MECHANISM = 32
# An unknown command is shown by its first word only, cut to this: enough for
# "GET" or "X-EXPS", never the rest of a line a client may have put a secret in.
UNKNOWN_WORD_BYTES = 32


def _unknown_shown(line: bytes, after_auth: bool) -> tuple[bytes | None, int | None]:
    """What an unknown command line may show: its first word, or after AUTH its length."""
    if after_auth:
        return None, capped(len(line), BYTES_CAP)
    word = line.split(b" ", 1)[0].split(b"\0", 1)[0]
    return word[:UNKNOWN_WORD_BYTES], None


def line_too_long(st: SessionState, seen: int, direction: str, limit: int,
                  out: list[Event]) -> int:
    """Count a line cut at ``limit`` bytes; an event for the first few. Returns ``seen`` + 1."""
    st.lines_too_long = capped(st.lines_too_long + 1)
    seen += 1
    if seen <= MAX_REPEAT_EVENTS:
        out.append(LineTooLong(direction=direction, limit=limit))
    return seen


class ClientReader:
    """Reads the client's bytes for the Observer, which owns the server side.

    ``mode`` is one of CMD, HOLD, BODY, BDAT, TLS; ``hold``, ``body`` and
    ``auth`` are what the server's replies decide about.
    """

    def __init__(self, state: SessionState, stages: StageMachine, pending: Pending,
                 limit: int) -> None:
        self.state = state
        self.limit = limit
        self.mode = CMD
        self.hold = HeldBytes(limit)
        self.body: BodyScanner | None = None
        self.auth: AuthExchange | None = None
        self.tls: Any = None
        self._stages = stages
        self._pending = pending
        self._reader = LineReader(limit)
        self._arg: bytes | None = None  # the current command's Reject text
        self._bdat_left = 0
        self._bdat_last = False
        self._unknown_run = 0
        self._too_long = 0
        # From an AUTH command to the next known verb: lines there may be
        # credentials (a server without AUTH answers each 502), never shown.
        self._after_auth = False
        self._auth_ahead = 0  # lines the exchange took, less the 334s that asked for one

    @property
    def buffered(self) -> int:
        """Bytes held across feeds (bounded)."""
        n = self._reader.buffered + len(self.hold.buf)
        if self.body is not None:
            n += self.body.buffered
        return n

    def feed(self, data: bytes, out: list[Event]) -> None:
        """Read ``data`` in whatever modes it takes; events go to ``out``."""
        pos = 0
        n = len(data)
        while pos < n:
            mode = self.mode
            if mode == CMD:
                if self.state.not_smtp and self.auth is None:
                    pos, command = self._junk(data, pos)
                    if not command:
                        continue
                line, pos, cut_now, truncated = self._reader.next_line(data, pos)
                if cut_now:
                    self._too_long = line_too_long(self.state, self._too_long, "client",
                                                   self.limit, out)
                if line is not None:
                    self._line(line, truncated, out)
            elif mode == BODY:
                assert self.body is not None
                used, events, done = self.body.feed(data[pos:] if pos else data)
                out += events
                pos += used
                if done:
                    self._end_data(out)
            elif mode == BDAT:
                assert self.body is not None
                take = min(self._bdat_left, n - pos)
                _, events, _ = self.body.feed(data[pos:pos + take])
                out += events
                pos += take
                self._bdat_left -= take
                if not self._bdat_left:
                    self._end_bdat_chunk(out)
            elif mode == HOLD:
                self._hold_data(data[pos:] if pos else data, out)
                pos = n
            else:  # TLS
                out += self.tls.feed_client(data[pos:] if pos else data)
                pos = n

    def eof(self, out: list[Event]) -> None:
        """The client closed: what it left unfinished."""
        st = self.state
        st.client_closed = True
        if self.mode == TLS:
            out += self.tls.feed_client(b"")
        hold = self.hold
        partial = self._reader.clear() + len(hold.buf) + hold.over_bytes
        hold.buf.clear()
        out.append(PeerClosed(peer="client", stage=st.stage, pending=self._pending.waiting(),
                              partial_bytes=capped(partial, BYTES_CAP)))

    # -- command lines -----------------------------------------------------

    def _line(self, line: bytes, truncated: bool, out: list[Event]) -> None:
        if self.auth is not None:
            # A credential: the exchange takes the user name, the line dies here.
            self.auth.client_response(line)
            self._auth_ahead += 1
            return
        st = self.state
        verb, args = split_command(line)
        bump(st.sent, verb)
        shown: bytes | None = args
        line_bytes = None
        if verb != "UNKNOWN":
            self._unknown_run = 0
            self._after_auth = verb == "AUTH"
        else:
            shown, line_bytes = _unknown_shown(args, self._after_auth)
            self._unknown_run += 1
            if st.not_smtp or self._unknown_run >= NOT_SMTP_LINES:
                if not st.not_smtp:
                    self._not_smtp(out)
                self._push("UNKNOWN", None)  # one entry for the whole run
                return
        pending = self._pending.waiting()
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
            shown = args = mech[:_MAX_MECHANISM].upper()
        text, cut = clip(shown) if shown is not None else (None, False)
        out.append(Command(
            verb=verb, args=text, address=address, params=params,
            pipelined=pending > 0, truncated=truncated or cut, line_bytes=line_bytes,
        ))
        arg = address if address is not None else text
        self._arg = clip(arg, USER_CAP)[0] if arg is not None else None
        if verb == "QUIT":
            st.quit_from = st.stage
        self._stages.move(verb)
        handler = getattr(self, "_cmd_" + verb.lower(), None)
        if handler is None:
            self._push(verb)  # HELO, MAIL, NOOP, UNKNOWN...: only a reply to match
        else:
            handler(args, initial, out)

    def _junk(self, data: bytes, pos: int) -> tuple[int, bool]:
        """A client taken for not SMTP: its lines counted at C speed, not parsed.

        Only a line that starts with a verb that could bring it back to SMTP
        is read as a command (``True``: parse one line at the returned
        position); the lines before it become one pending run for their
        replies, so a binary stream stays cheap to relay.
        """
        st = self.state
        reader = self._reader
        seg = data[pos:] if pos else data
        end, command = junk_lines(reader.head(4), seg)
        if end:
            lines = seg.count(b"\n", 0, end)
            reader.clear()
            st.sent["UNKNOWN"] = capped(st.sent.get("UNKNOWN", 0) + lines)
            self._unknown_run = capped(self._unknown_run + lines)
            self._push("UNKNOWN", None, lines)
        if command:
            return pos + end, True
        reader.next_line(seg[end:] if end else seg, 0)  # the next line's start, held
        return len(data), False

    def _check_pipelining(self, verb: str, pending: int, out: list[Event]) -> None:
        if not self.state.pipelining:
            self._violation("unadvertised", verb, pending, out)
            return
        group_end = self._pending.group_end()
        if group_end is not None:
            self._violation("after_" + group_end.lower(), verb, pending, out)

    def _violation(self, kind: str, verb: str | None, pending: int, out: list[Event]) -> None:
        st = self.state
        st.pipelining_violations = capped(st.pipelining_violations + 1)
        if st.pipelining_violations <= MAX_REPEAT_EVENTS:
            out.append(PipeliningViolation(kind=kind, verb=verb, pending=pending))

    def _push(self, verb: str, arg: bytes | None | bool = False, count: int = 1) -> None:
        """Queue a reply to match; ``arg`` False: the current command's text."""
        if arg is False:
            arg = self._arg if verb != DATA_END else None
        self._pending.push(verb, arg, count)  # type: ignore[arg-type]

    def _not_smtp(self, out: list[Event]) -> None:
        """The client does not speak SMTP: stop making events of its junk.

        Lines and replies are still followed (one pending entry for the
        whole run), so a client that turns to real commands the server
        accepts is observed again: junk must never hide a queued message.
        """
        self.state.not_smtp = True
        out.append(NotSmtp(unknown_lines=self._unknown_run))

    # One method per verb that does more than move the stage and wait for a reply.

    def _cmd_rset(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("RSET")
        self.body = None  # an unfinished BDAT message is dropped

    def _cmd_quit(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("QUIT")
        self.state.quit_sent = True

    def _cmd_data(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("DATA")
        self.start_hold("DATA")

    def _cmd_starttls(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("STARTTLS")
        self.start_hold("STARTTLS")

    def _cmd_auth(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        self._push("AUTH")
        st = self.state
        mechanism = args.decode("ascii", "replace")
        st.auth_mechanism = mechanism
        st.auth_user = None
        st.auth_result = None
        st.auth_code = None
        from .auth import AuthExchange  # only sessions that AUTH pay for it

        self.auth = AuthExchange(mechanism)
        if initial:
            self.auth.client_response(initial)

    def auth_asked(self) -> None:
        """A 334: the server asks for the next line of the exchange."""
        self._auth_ahead -= 1  # the line it asks for may not have come yet

    def auth_done(self) -> AuthExchange | None:
        """The exchange's final reply: it ends here.

        Lines sent ahead of a 334 that never came (a server without AUTH
        answers 502 at once) were commands to the server, each answered:
        they wait for their replies as unknown lines, never shown.
        """
        auth, self.auth = self.auth, None
        ahead, self._auth_ahead = self._auth_ahead, 0
        if ahead > 0:
            st = self.state
            st.sent["UNKNOWN"] = capped(st.sent.get("UNKNOWN", 0) + ahead)
            self._push("UNKNOWN", None, ahead)
        return auth

    def _cmd_bdat(self, args: bytes, initial: bytes | None, out: list[Event]) -> None:
        size, last = parse_bdat(args)
        st = self.state
        if size is None or not st.chunking:
            # Refused (qmail-smtpd: 502): no chunk follows, the bytes after it
            # are commands.  RFC 3030: only a server that offered CHUNKING
            # reads a chunk.
            self._push("BDAT")
            return
        self._stages.move(EV_CHUNK)
        if self.body is None:
            self._new_message("bdat", dot_mode=False)
            out.append(DataStart(message=st.messages, method="bdat"))
        assert st.message is not None
        st.message.chunks = capped(st.message.chunks + 1)
        self._bdat_left = size
        self._bdat_last = last
        if size:
            self.mode = BDAT
        else:
            self._end_bdat_chunk(out)

    # -- holding bytes until the server's answer ---------------------------

    def start_hold(self, verb: str) -> None:
        """Hold what the client sends next, until the answer to ``verb``."""
        self.mode = HOLD
        self.hold.start(verb)

    def _hold_data(self, data: bytes, out: list[Event]) -> None:
        hold = self.hold
        if hold.empty and hold.verb != "TLS":
            self._violation("after_" + (hold.verb or "").lower(), None, len(self._pending), out)
        hold.add(data, capped(self.state.messages + 1))

    def release_hold(self, out: list[Event]) -> None:
        """The held command was refused: the held bytes are commands again."""
        hold = self.hold
        held = bytes(hold.buf)
        over, lines, tail, recent = hold.over_bytes, hold.over_lines, hold.over_tail, hold.recent
        hold.buf.clear()
        hold.verb = None
        hold.reset_overflow()
        self.mode = CMD
        if held:
            self.feed(held, out)
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
        if self.mode == HOLD:  # the held bytes began another hold
            self.hold.count_unseen(lines, tail, nbytes, recent)
            return
        if self.mode != CMD:
            return  # a BDAT chunk began in what we kept: bytes only
        if region <= len(recent):
            parse = recent[len(recent) - region:]  # all of it was kept: no guess
        else:
            lf = recent.find(b"\n")
            parse = recent[lf + 1:] if lf >= 0 else b""
            unseen = lines - parse.count(b"\n")
            if unseen > 0:
                self._reader.clear()
                self._push(UNSEEN, None, unseen)
                st.unseen_lines = capped(st.unseen_lines + unseen)
            if lf < 0:
                self._reader.skip()  # the line in progress began out of sight
        if parse:
            self.feed(parse, out)

    def start_tls(self, tls: Any, implicit: bool, out: list[Event]) -> None:
        """From here on the client's bytes go to ``tls``; what was held too, if a hello."""
        st = self.state
        self.tls = tls
        self.mode = TLS
        self.auth = None
        self._auth_ahead = 0
        self.body = None
        hold = self.hold
        held = bytes(hold.buf)
        dropped = hold.over_bytes
        hold.buf.clear()
        hold.reset_overflow()
        if held or dropped:
            if opens_tls(held) and not dropped:
                out += tls.feed_client(held)  # an eager ClientHello
            elif not implicit:
                length = capped(len(held) + dropped, BYTES_CAP)
                st.starttls_injection = length
                out.append(StartTLSInjection(length=length))
        hold.verb = None

    # -- bodies ------------------------------------------------------------

    def _new_message(self, method: str, dot_mode: bool) -> None:
        st = self.state
        st.messages = capped(st.messages + 1)
        st.message = MessageStats(st.messages, method)
        self.body = BodyScanner(st.message, dot_mode)

    def begin_body(self, out: list[Event]) -> None:
        """354: the held bytes are the body (scanned already past the bound)."""
        st = self.state
        hold = self.hold
        spec = hold.spec
        if spec is None:
            self._new_message("data", dot_mode=True)
        else:
            st.messages = spec.stats.message
            st.message = spec.stats
            self.body = spec
        out.append(DataStart(message=st.messages, method="data"))
        self._stages.move(EV_GO_AHEAD)
        held = bytes(hold.buf)
        hold.buf.clear()
        hold.verb = None
        self.mode = BODY
        if spec is None:
            # Bytes carried past the bound from a refused DATA's pipeline were
            # never kept: they are gone from this body too, not still pending.
            hold.reset_overflow()
            if held:
                self.feed(held, out)
            return
        out += hold.spec_events
        done, lines, tail = hold.spec_done, hold.after_lines, hold.after_tail
        after, recent = hold.after_bytes, hold.recent
        hold.reset_overflow()
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
        self._stages.move(EV_END_OF_DATA)
        self.body = None
        self.mode = CMD
        self._push(DATA_END)

    def _end_bdat_chunk(self, out: list[Event]) -> None:
        """The chunk is read: its reply is due now (pushed here, not at the command)."""
        self.mode = CMD
        self._push(BDAT_LAST if self._bdat_last else "BDAT")
        if self._bdat_last:
            m = self.state.message
            assert m is not None
            m.complete = True
            out.append(self._data_end_event())
            self._stages.move(EV_END_OF_DATA)
            self.body = None
