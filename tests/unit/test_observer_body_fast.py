"""The DATA body scanner agrees with a byte-at-a-time reference written from the rules.

``ByteScanner`` below reads a body one byte at a time and decides each
finding at the byte that decides it, straight from the definitions:

- RFC 5321 4.5.2: the body ends at the first ``CRLF.CRLF`` (the body begins
  at a line start, so ``.CRLF`` first is an empty body); any other line that
  begins with a dot after a CRLF lost that dot to dot-stuffing;
- a bare LF is an LF without a CR before it, a bare CR a CR without an LF
  after it (decided by the next byte); NUL bytes; 8-bit bytes (counted,
  first line only);
- a line is long (RFC 5321 4.5.3.1.6: 998 octets and CRLF) at its 1000th
  byte, unless that byte is the LF of a CRLF;
- an SMTP smuggling look-alike is a dot between a line end (``\\r\\n``,
  ``\\n`` or ``\\r``) and another (``\\n``, ``\\r\\n`` or ``\\r`` and a byte
  that is not LF), a NUL allowed on either side of the dot, other than the
  real end marker; it is decided by its last byte.

Lines are numbered from 1, one per LF; offsets are wire offsets into the body.
Events decided by the same byte come in the order BareLF, BareCR, NulByte,
LongLine, Smuggling.  The scanner's fast paths (splitlines arithmetic, memchr
dot skipping, long-line bounds, block-wise 8-bit counts) must give exactly the
same (used, events, done, counters) at every feed, whatever the pieces.
"""

from __future__ import annotations

from helpers import cut_at
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from supervise_smtp.observer.body import MAX_SMUGGLING_EVENTS, BodyScanner
from supervise_smtp.observer.events import BareCR, BareLF, Event, LongLine, NulByte, Smuggling
from supervise_smtp.observer.state import MessageStats

CR, LF, NUL, DOT = 13, 10, 0, 46
LONG_AT = 1000  # a line's 1000th byte decides that it is long (998 octets + CRLF)
_SPELL = {CR: "\\r", LF: "\\n", NUL: "\\0", DOT: "."}


class ByteScanner:
    """The reference: one byte at a time, every finding at the byte that decides it."""

    def __init__(self, stats: MessageStats, dot_mode: bool = True) -> None:
        self.stats = stats
        self.dot_mode = dot_mode
        self.body = bytearray(b"\r\n")  # every body byte, after a virtual line end
        self.line_start = 2  # index in ``body`` of the current line's first byte
        self.pending = 0  # ".", ".\r" after a CRLF: dot-stuffing or the end, not yet known
        self.crlf = 0
        self.done = False

    def feed(self, data: bytes) -> tuple[int, list[Event], bool]:
        events: list[Event] = []
        used = 0
        for byte in data:
            if self.done:
                break
            used += 1
            self._byte(byte, events)
        st = self.stats
        st.wire_bytes += used
        st.size = len(self.body) - 2 - self.pending - st.dot_stuffed
        st.qmail_size = st.size - self.crlf
        st.complete = self.done
        return used, events, self.done

    def _byte(self, b: int, events: list[Event]) -> None:
        body, st = self.body, self.stats
        if self.dot_mode and self.pending == 2 and b == LF:
            del body[-2:]  # ".\r\n" after a CRLF: the end marker, not body
            self.pending = 0
            self.done = True
            return
        p = len(body)
        body.append(b)
        prev = body[p - 1]
        line = st.lines + 1  # the line this byte is on
        if self.dot_mode:
            if self.pending and not (self.pending == 1 and b == CR):
                st.dot_stuffed += 1  # the pending dot began a text line
                self.pending = 0
            if body[-3:] == b"\r\n.":
                self.pending = 1
            elif self.pending:
                self.pending = 2
        if b == LF and prev != CR:
            st.bare_lf_count += 1
            if st.bare_lf_first_line is None:
                st.bare_lf_first_line = line
                events.append(BareLF(message=st.message, line=line, offset=p - 2))
        if prev == CR and b != LF:
            st.bare_cr_count += 1
            if st.bare_cr_first_line is None:
                st.bare_cr_first_line = line
                events.append(BareCR(message=st.message, line=line, offset=p - 3))
        if b == NUL:
            st.nul_count += 1
            if st.nul_first_line is None:
                st.nul_first_line = line
                events.append(NulByte(message=st.message, line=line, offset=p - 2))
        if p - self.line_start + 1 == LONG_AT and not (b == LF and prev == CR):
            st.long_line_count += 1
            if st.long_line_first_line is None:
                st.long_line_first_line = line
                events.append(LongLine(message=st.message, line=line,
                                       offset=self.line_start - 2))
        if self.dot_mode:
            self._smuggling(p, events)
        if b >= 128:
            st.eight_bit_count += 1
            if st.eight_bit_first_line is None:
                st.eight_bit_first_line = line
        if b == LF:
            st.lines += 1
            self.line_start = p + 1
            self.crlf += prev == CR

    def _smuggling(self, p: int, events: list[Event]) -> None:
        """A look-alike ``<line end>[NUL].[NUL]<line end>`` whose last byte is ``body[p]``."""
        body, st = self.body, self.stats
        if body[p] == LF:
            k = p - 1 if body[p - 1] == CR else p  # first byte of the line end after the dot
        elif body[p - 1] == CR:
            k = p - 1  # a CR, decided by a next byte that is not LF
        else:
            return
        d = k - 1 - (body[k - 1] == NUL)
        if body[d] != DOT:
            return
        j = d - 1 - (body[d - 1] == NUL)
        if body[j] not in (CR, LF):
            return
        if body[j] == LF and body[j - 1] == CR:
            j -= 1
        # Not the end marker CRLF.CRLF: _byte ended the body before it got here.
        shape = body[j:p + 1] if body[p] == LF else body[j:p]
        st.smuggling_count += 1
        if st.smuggling_count <= MAX_SMUGGLING_EVENTS:
            variant = "".join(_SPELL[c] for c in shape)
            events.append(Smuggling(message=st.message, variant=variant, line=st.lines + 1,
                                    offset=d - 2))


# ---------------------------------------------------------------------------
# The reference on hand-checked bodies
# ---------------------------------------------------------------------------


def _scan(cls, body: bytes, dot_mode: bool = True):
    stats = MessageStats(1, "data" if dot_mode else "bdat")
    used, events, done = cls(stats, dot_mode).feed(body)
    return used, events, done, stats


def test_byte_scanner_reads_the_rules():
    """The reference itself, on bodies whose findings are written out by hand."""
    used, events, done, st = _scan(ByteScanner, b"a\nb\rc\x00\r\n..d\r\n.\r\nQUIT\r\n")
    assert (used, done) == (16, True)
    assert events == [BareLF(message=1, line=1, offset=1), BareCR(message=1, line=2, offset=3),
                      NulByte(message=1, line=2, offset=5)]
    assert (st.lines, st.dot_stuffed, st.size, st.qmail_size) == (3, 1, 12, 10)
    used, events, done, st = _scan(ByteScanner, b"x\n.\ny\r.\rz\r\n\x00.\r\n.\r\n")
    assert [(e.variant, e.line, e.offset) for e in events if type(e) is Smuggling] == [
        ("\\n.\\n", 2, 2), ("\\r.\\r", 3, 6), ("\\r\\n\\0.\\r\\n", 4, 12)]
    _, events, _, st = _scan(ByteScanner, b"q" * 998 + b"\r\n" + b"w" * 999 + b"\n", False)
    assert events == [BareLF(message=1, line=2, offset=1999),
                      LongLine(message=1, line=2, offset=1000)]
    assert st.long_line_count == 1


# ---------------------------------------------------------------------------
# The scanner against the reference
# ---------------------------------------------------------------------------

PIECES = [b"a", b"text ", b"\r", b"\n", b".", b"..", b"\x00", b"\xe9", b"\xc3\xa9", b"\r\n",
          b"\r\n.\r\n", b"\r\n..", b"\n.\n", b"\r.\r", b"\x00.\x00", b"\r\n.\r",
          b"x" * 996, b"y" * 997, b"z" * 998, b"w" * 999, b"v" * 1000, b"u" * 1500,
          b"line of text\r\n" * 40, b"\xe9" * 300, b"." * 20]

bodies = st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join)
# Mostly clean bodies, so the fast paths run over many chunks.
clean_bodies = st.lists(st.sampled_from([
    b"a" * n + b"\r\n" for n in (0, 1, 70, 500, 996, 997, 998, 999, 1000, 1800)
] + [b"..stuffed\r\n", b"\xe9t\xe9\r\n", b"\r\n.\r\n", b"\x00\r\n"]), max_size=25).map(b"".join)


def _run(cls, pieces: list[bytes], dot_mode: bool = True):
    """Per-feed (used, events, done, counters) until the body ends."""
    stats = MessageStats(1, "data" if dot_mode else "bdat")
    scanner = cls(stats, dot_mode)
    trace = []
    for piece in pieces:
        used, events, done = scanner.feed(piece)
        trace.append((used, events, done, repr(stats)))
        if done:
            break
        if cls is BodyScanner:
            assert scanner.buffered <= 8  # the carry and a held ".\r", never more
    return trace


def _same(pieces: list[bytes], dot_mode: bool = True) -> None:
    assert _run(BodyScanner, pieces, dot_mode) == _run(ByteScanner, pieces, dot_mode)


def _check(body: bytes, cuts: list[int], dot_mode: bool = True) -> None:
    """Whole, cut and bytewise feeds: each as the reference's at every feed."""
    for split in ([body] if body else [], cut_at(body, cuts) if body else [],
                  [body[i:i + 1] for i in range(len(body))]):
        _same(split, dot_mode)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, cuts=st.lists(st.integers(1, 40000), max_size=12))
@example(body=b"a\r\nb\r\n.\r\n", cuts=[2, 3, 5, 6, 7, 8])
@example(body=b"w" * 999 + b"\n" + b"x" * 998 + b"\r\n", cuts=[999, 1000, 1001])
@example(body=b"\r\n" + b"z" * 998 + b"\r\nab\r", cuts=[1, 3, 1001, 1002])
def test_body_scanner_matches_reference(body, cuts):
    """Any body, any cuts: the same feeds as the reference scanner, DATA and BDAT."""
    _check(body, cuts)
    _check(body, cuts, dot_mode=False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=clean_bodies, cuts=st.lists(st.integers(1, 40000), max_size=12))
def test_body_scanner_clean_bodies_match_reference(body, cuts):
    """Mostly clean bodies (the fast path), long and 998-octet lines, cut anywhere."""
    _check(body + b"\r\n.\r\nQUIT\r\n", cuts)


def test_body_scanner_large_chunks_match_reference():
    """Chunks over the 8-bit and long-line block sizes, with anomalies deep inside."""
    line = b"The quick brown fox jumps over the lazy dog, 0123456789\r\n"
    block = line * 300 + b"..dot\r\n"
    body = (block * 3 + b"caf\xc3\xa9\r\n" + block * 2 + b"bare\nlf\rcr\x00\r\n" + block
            + b"q" * 2500 + b"\r\n" + block + b"\r\n.\r\nNOOP\r\n")
    for size in (65536, 4099, 997):
        pieces = [body[i:i + size] for i in range(0, len(body), size)]
        _same(pieces)
        _same(pieces, False)


def _dirty_lines(first: bytes, long_at: int, length: int) -> bytes:
    """Short lines, one of ``length`` octets (+ CRLF) starting near ``long_at``."""
    line = b"0123456789" * 7 + b"\r\n"
    head = (line * (long_at // len(line) + 1))[:long_at] + b"\r\n"
    return first + head + b"L" * length + b"\r\n" + line * 3


def test_body_scanner_long_line_bounds_in_dirty_chunks():
    """A 998-, 999- or 1000-octet line anywhere in a chunk with a bare LF or CR."""
    for first in (b"bare\nlf\r\n", b"bare\rcr\r\n", b"nul\x00\r\n"):
        for length in (997, 998, 999, 1000):
            for long_at in range(0, 1100, 73):
                body = _dirty_lines(first, long_at, length)
                for pieces in ([body], [body[:600], body[600:]], [body[:1500], body[1500:]]):
                    _same(pieces)
            for lf_end in (b"\n", b"\r\n"):
                # A bare LF as the 1000th octet: long, as qmail-smtpd counts.
                _same([first + b"M" * (length - 1) + lf_end + b"tail\r\n"])


def test_body_scanner_many_dots_then_lookalikes():
    """Look-alikes after any number of plain dots (dot-by-dot, then 2-byte finds)."""
    for n in range(0, 45):
        for variant in (b"\n.\n", b"\r.\r", b"\x00.\x00", b"\r\n.\n", b"\n.\r\n",
                        b"\r\n\x00.\r\n", b"\n\x00.\x00\r"):
            body = b"bare\nlf " + b"x." * n + variant + b"y." * 5 + variant + b"\r\n"
            _same([body])
            _same([body, b"\r\n.\r\n"])


def test_body_scanner_long_line_block_alignment():
    """A 999-octet line whose LFs fall on the edges of the 500-byte blocks."""
    for first in (b"bare\nlf\r\n", b"nul\x00\r\n"):
        for long_at in range(0, 520, 3):
            _same([_dirty_lines(first, long_at, 999)])


def test_body_scanner_eight_bit_counts_at_block_edges():
    """8-bit bytes first, last and at the 8 KiB block edges of chunks of any size."""
    for size in (8191, 8192, 8193, 16385):
        for spots in ([0], [size - 1], [8191], [8192], [8191, 8192, 16383, 16384], []):
            chunk = bytearray((b"abcdefgh\r\n" * (size // 10 + 1))[:size])
            for i in spots:
                if i < size:
                    chunk[i] = 0xE9
            _same([b"x\r\n", bytes(chunk), b"\r\n.\r\n"])
