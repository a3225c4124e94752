"""Server replies: multiline assembly, EHLO capabilities, and what each one answers.

A reply is complete at its first ``ddd `` (or bare ``ddd``) line.  Only a
bounded part of it is kept: the first MAX_REPLY_LINES line texts (each cut to
TEXT_CAP), enough for any real EHLO list, so a server that never ends a
multiline reply cannot grow memory.

Replies come in the order of what they answer, so a FIFO of the commands
still waiting (``Pending``) matches each reply to its command; that is what
makes pipelining (RFC 2920) visible.
"""

from __future__ import annotations

from .commands import LAST_IN_GROUP, enhanced_code
from .events import Capabilities
from .state import COUNT_CAP, PENDING_CAP, TEXT_CAP, SessionState, capped, clip

__all__ = [
    "BDAT_LAST",
    "DATA_END",
    "END_OF_MESSAGE",
    "GREETING",
    "UNSEEN",
    "CompleteReply",
    "Pending",
    "ReplyAssembler",
    "Wait",
    "capabilities",
]

# What a reply answers when no command line does.
GREETING = "GREETING"  # the banner
DATA_END = "DATA_END"  # the end of a DATA body
BDAT_LAST = "BDAT_LAST"  # the last BDAT chunk
UNSEEN = "UNSEEN"  # lines held past the hold bound: answered, never parsed
END_OF_MESSAGE = (DATA_END, BDAT_LAST)
# Commands whose reply changes more than the counts (the Observer's _reply_<verb>
# handlers, the banner, the end of a message): each keeps an entry of its own.
REPLY_MATTERS = frozenset({GREETING, "EHLO", "HELO", "DATA", DATA_END, BDAT_LAST, "QUIT",
                           "STARTTLS", "AUTH"})
# Past this many entries a command gets no entry of its own (see Pending.push);
# the rest, up to PENDING_CAP, is room for the ones in REPLY_MATTERS.
OWN_ENTRIES = PENDING_CAP - 100

MAX_REPLY_LINES = 64


class CompleteReply:
    """One whole reply: code, enhanced code, joined text, line texts."""

    __slots__ = ("code", "enhanced", "text", "truncated", "lines", "texts")

    def __init__(self, code: int, texts: list[bytes], lines: int, cut: bool) -> None:
        self.code = code
        self.texts = texts
        self.lines = lines
        joined = b"\n".join(texts)
        self.text, truncated = clip(joined)
        self.truncated = truncated or cut
        self.enhanced = enhanced_code(texts[0]) if texts else None


class ReplyAssembler:
    """Collects reply lines until the last one of a reply."""

    __slots__ = ("_code", "_texts", "_lines", "_cut")

    def __init__(self) -> None:
        self._code: int | None = None
        self._texts: list[bytes] = []
        self._lines = 0
        self._cut = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished multiline reply held (at most 64 x TEXT_CAP)."""
        return sum(map(len, self._texts))

    @property
    def open(self) -> bool:
        """A multiline reply has begun but not ended."""
        return self._code is not None

    def add(self, code: int, more: bool, text: bytes, truncated: bool) -> CompleteReply | None:
        """Add one parsed line; returns the reply when this line ends it."""
        if self._code is None:
            self._code = code
        if len(self._texts) < MAX_REPLY_LINES:
            part, cut = clip(text, TEXT_CAP)
            self._texts.append(part)
            self._cut = self._cut or cut or truncated
        else:
            self._cut = True
        if self._lines < COUNT_CAP:
            self._lines += 1
        if more:
            return None
        reply = CompleteReply(self._code, self._texts, self._lines, self._cut)
        self._code = None
        self._texts = []
        self._lines = 0
        self._cut = False
        return reply


def capabilities(reply: CompleteReply) -> Capabilities:
    """The EHLO keywords of a 250 reply (the first line is the greeting)."""
    pipelining = starttls = chunking = eightbit = utf8 = False
    size: int | None = None
    auth: list[bytes] = []
    seen: set[bytes] = set()
    keywords: list[bytes] = []
    for text in reply.texts[1:]:
        words = text.split()
        if not words:
            continue
        key = words[0].upper()
        keywords.append(key)
        if key == b"PIPELINING":
            pipelining = True
        elif key == b"STARTTLS":
            starttls = True
        elif key == b"CHUNKING":
            chunking = True
        elif key == b"8BITMIME":
            eightbit = True
        elif key == b"SMTPUTF8":
            utf8 = True
        elif key == b"SIZE":
            if len(words) > 1 and words[1].isdigit() and len(words[1]) < 16:
                size = int(words[1])
            else:
                size = 0
        elif key == b"AUTH" or key.startswith(b"AUTH="):
            mechs = words[1:] if key == b"AUTH" else [key[5:]] + words[1:]
            for mech in mechs:
                mech = mech.upper()
                if mech not in seen:
                    seen.add(mech)
                    auth.append(mech)
    kw, cut = clip(b" ".join(keywords))
    auth_text = clip(b" ".join(auth))[0] if auth else None
    return Capabilities(
        pipelining=pipelining, size=size, starttls=starttls, auth=auth_text,
        chunking=chunking, eightbitmime=eightbit, smtputf8=utf8, keywords=kw,
        truncated=cut or reply.truncated,
    )


class Wait:
    """A command waiting for its reply; ``count`` > 1 for a run of unparsed lines.

    ``arg`` is what a Reject line shows (an address, a mechanism, the line);
    ``junk``: unknown lines of a client taken for not SMTP (or never parsed):
    their replies make no events, only counts.
    """

    __slots__ = ("verb", "arg", "count", "junk")

    def __init__(self, verb: str, arg: bytes | None, count: int, junk: bool = False) -> None:
        self.verb = verb
        self.arg = arg
        self.count = count
        self.junk = junk


class Pending:
    """The commands sent and not answered yet, oldest first (``state.pending`` follows).

    It starts with the banner.  Unparsed lines, and unknown lines once the
    client is taken for not SMTP, are one entry per run: a flood of them
    costs no memory.  Past OWN_ENTRIES (a client that sends on without
    reading the replies) a command joins the last entry when it is the
    same command, else, when its reply only counts, a run of replies kept
    in step with but not attributed (UNSEEN): the replies that matter (the
    354 to DATA, the 250 to the end of data) still meet their command.
    Past PENDING_CAP entries the rest are only counted.
    """

    __slots__ = ("state", "_waits")

    def __init__(self, state: SessionState) -> None:
        self.state = state
        self._waits = [Wait(GREETING, None, 1)]

    def __len__(self) -> int:
        return len(self._waits)

    def push(self, verb: str, arg: bytes | None, count: int = 1) -> None:
        """Queue a reply to match, answering ``verb`` (a run of ``count`` lines)."""
        st = self.state
        waits = self._waits
        junk = verb == UNSEEN or (verb == "UNKNOWN" and st.not_smtp)
        if not junk and len(waits) >= OWN_ENTRIES:
            last = waits[-1]
            if not last.junk and last.verb == verb and last.arg == (arg or None):
                last.count = capped(last.count + count)
                return
            if verb not in REPLY_MATTERS:
                verb, arg, junk = UNSEEN, None, True
        if junk and waits and waits[-1].junk and waits[-1].verb == verb:
            waits[-1].count = capped(waits[-1].count + count)
        elif len(waits) < PENDING_CAP:
            waits.append(Wait(verb, arg or None, count, junk))
        else:
            st.pending_dropped = capped(st.pending_dropped + 1)
        st.pending = len(waits)

    def push_front(self, wait: Wait) -> None:
        """``wait`` answers the next reply too (AUTH after a 334 challenge)."""
        self._waits.insert(0, wait)
        self.state.pending = len(self._waits)

    def pop(self) -> Wait | None:
        """What the reply that just came answers; None if nothing was waiting."""
        waits = self._waits
        if not waits:
            return None
        head = waits[0]
        if head.count > 1:
            head.count -= 1
        else:
            del waits[0]
            self.state.pending = len(waits)
        return head

    def clear(self) -> None:
        """Nothing waits any more (TLS started: replies are encrypted)."""
        self._waits.clear()
        self.state.pending = 0

    def waiting(self) -> int:
        """Commands sent and not answered yet (the banner aside)."""
        waits = self._waits
        return len(waits) - (bool(waits) and waits[0].verb == GREETING)

    def group_end(self) -> str | None:
        """The first waiting verb that must end a pipelined group (RFC 2920 3.1)."""
        for wait in self._waits:
            if wait.verb in LAST_IN_GROUP:
                return wait.verb
        return None

    def end_of_message(self) -> bool:
        """The end of a message waits for its reply."""
        return any(w.verb in END_OF_MESSAGE for w in self._waits)
