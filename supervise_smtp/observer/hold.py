"""Client bytes held until the server's answer says what they are.

Bytes a client sends behind DATA or STARTTLS before the reply, or after a
first byte 0x16 before the server said anything, may be body, TLS or
commands: after a 354 they are the body, after a 220 TLS (or a CVE-2011-0411
style injection), after a refusal commands, and a first 0x16 is SMTPS only
if the server answers in TLS.  ``HeldBytes`` keeps them, bounded: past the
bound they are only counted (bytes, LFs, whether a line goes on), their last
RECENT_BYTES kept so that the commands a client sends after a long
pipelined body are still parsed, and behind DATA they are scanned as the
body a 354 would make, from its first byte, so both readings stay exact
enough to keep the replies in step.
"""

from __future__ import annotations

from .body import BodyScanner
from .state import BYTES_CAP, MessageStats, capped

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; only mypy reads this
    from .events import Event

__all__ = ["HeldBytes", "RECENT_BYTES"]

# The end of the bytes held past the bound is kept, so that the commands a
# client sends after a long pipelined body (RSET, QUIT) are still parsed.
RECENT_BYTES = 4096
# Body events kept from a speculative scan until the 354 that confirms it.
_MAX_SPEC_EVENTS = 64


class HeldBytes:
    """The bytes held behind ``verb`` ("DATA", "STARTTLS", or "TLS" for a first 0x16).

    ``buf`` holds up to ``limit`` bytes; ``over_*`` count what came past
    them, ``spec`` scans it as a body (DATA only) and ``after_*`` count what
    followed that body's end marker.  ``verb`` is None while nothing is held.
    """

    __slots__ = (
        "limit", "verb", "buf", "over_bytes", "over_lines", "over_tail", "recent", "spec",
        "spec_events", "spec_done", "after_lines", "after_tail", "after_bytes",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.verb: str | None = None
        self.buf = bytearray()
        self.reset_overflow()

    def start(self, verb: str) -> None:
        """Hold what comes next behind ``verb``."""
        self.verb = verb
        self.reset_overflow()

    def reset_overflow(self) -> None:
        """Forget what was counted past the bound."""
        self.over_bytes = 0  # held bytes past the bound: counted, not kept
        self.over_lines = 0  # ... and their LFs, should they be commands
        self.over_tail = False  # ... ending inside a line
        self.recent = b""  # the last RECENT_BYTES of them, parsed at release
        self.spec: BodyScanner | None = None  # ... scanned as the body a 354 would make
        self.spec_events: list[Event] = []
        self.spec_done = False  # the speculative body reached its end marker
        self.after_lines = 0  # LFs after that end marker (commands if 354)
        self.after_tail = False
        self.after_bytes = 0

    @property
    def empty(self) -> bool:
        """Nothing was held since the hold began."""
        return not self.buf and not self.over_bytes

    def add(self, data: bytes, next_message: int) -> None:
        """Hold ``data``; a DATA hold that passes the bound starts the speculative body."""
        buf = self.buf
        if self.over_bytes:
            self.overflow(data)
            return
        room = self.limit - len(buf)
        if len(data) <= room:
            buf += data
            return
        buf += data[:room]
        if self.verb == "DATA":
            # A client that streams its body before the 354: scan it as the
            # body it will be if the server says 354, from its first byte.
            self.spec = BodyScanner(MessageStats(next_message, "data"), True)
            self._spec_feed(bytes(buf))
        self.overflow(data[room:])

    def overflow(self, data: bytes) -> None:
        """Bytes held past the bound: counted both ways, kept neither."""
        self.over_bytes = capped(self.over_bytes + len(data), BYTES_CAP)
        self.over_lines = capped(self.over_lines + data.count(b"\n"))
        self.over_tail = data[-1:] != b"\n"
        recent = self.recent + data if len(data) < RECENT_BYTES else data
        self.recent = recent[-RECENT_BYTES:]
        if self.spec is not None:
            self._spec_feed(data)

    def count_unseen(self, lines: int, tail: bool, nbytes: int, recent: bytes) -> None:
        """Lines of an earlier hold, never parsed, that now stand behind this one."""
        self.over_bytes = capped(self.over_bytes + nbytes, BYTES_CAP)
        self.over_lines = capped(self.over_lines + lines)
        self.over_tail = tail
        self.recent = recent

    def _spec_feed(self, data: bytes) -> None:
        if not self.spec_done:
            assert self.spec is not None
            used, events, done = self.spec.feed(data)
            room = _MAX_SPEC_EVENTS - len(self.spec_events)
            if room > 0:
                self.spec_events += events[:room]
            if not done:
                return
            self.spec_done = True
            data = data[used:]
        if data:
            self.after_lines = capped(self.after_lines + data.count(b"\n"))
            self.after_tail = data[-1:] != b"\n"
            self.after_bytes = capped(self.after_bytes + len(data), BYTES_CAP)
