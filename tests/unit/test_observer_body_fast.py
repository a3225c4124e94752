"""The DATA body scanner's fast paths agree with the exact ones.

``RefScanner`` below is the scanner as it was before the clean-chunk fast
paths (splitlines terminator arithmetic, memchr dot skipping, the long-line
bounds, block-wise 8-bit counts), kept verbatim as an oracle.  The same body
fed whole, in random pieces and one byte at a time must give the same
(used, events, done) per feed and the same counters as the reference fed the
same pieces.
"""

from __future__ import annotations

from helpers import cut_at
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from supervise_smtp.observer.body import BodyScanner
from supervise_smtp.observer.events import BareCR, BareLF, Event, LongLine, NulByte, Smuggling
from supervise_smtp.observer.state import BYTES_CAP, COUNT_CAP, MessageStats

# ---------------------------------------------------------------------------
# Reference: supervise_smtp/observer/body.py before the fast paths, verbatim.
# ---------------------------------------------------------------------------

# RFC 5321 4.5.3.1.6: 1000 octets with the CRLF.
MAX_BODY_LINE = 998
# Smuggling events reported per message; the rest are only counted.
MAX_SMUGGLING_EVENTS = 16
_CARRY = 6
_LF = 10
_CR = 13
_HIGH = bytes(range(128, 256))
# Maps ASCII to 0 and 8-bit bytes to 1, to find the first 8-bit byte.
_HIGH_MAP = bytes(128) + b"\x01" * 128
# Events decided by the same byte sort in this order: BareLF 0, BareCR 1,
# NulByte 2, LongLine 3, Smuggling 4 (the second item of each sort key).


def _add(value: int, n: int, cap: int = COUNT_CAP) -> int:
    value += n
    return value if value < cap else cap


def _line_at(buf: bytes, n0: int, i: int, lines0: int) -> int:
    """Body line number of ``buf[i]``: lines before this chunk + LFs before i."""
    n = lines0 + buf.count(b"\n", n0, i) + 1 if i > n0 else lines0 + 1
    return n if n < COUNT_CAP else COUNT_CAP


def _sort_key(item: tuple[int, int, Event]) -> tuple[int, int]:
    return item[0], item[1]


class RefScanner:
    """The scanner as it was before the fast paths (reference only)."""

    __slots__ = (
        "stats", "dot_mode", "_carry", "_held", "_pos", "_line_start", "_line_long",
        "_dot_next", "_slow_next", "_crlf",
    )

    def __init__(self, stats: MessageStats, dot_mode: bool = True) -> None:
        self.stats = stats
        self.dot_mode = dot_mode
        self._carry = b"\r\n"  # virtual: the body starts at a line start
        self._held = 0  # trailing carry bytes not counted yet (".", ".\r")
        self._pos = 0  # body offset of the first uncounted byte
        self._line_start = 0  # body offset where the current line starts
        self._line_long = False  # the current line was already reported
        self._dot_next = 0  # body offset of the first dot not yet examined
        self._slow_next = False  # look for smuggling in the next chunk too
        self._crlf = 0

    @property
    def buffered(self) -> int:
        """Bytes held across feeds (bounded by the carry size)."""
        return len(self._carry)

    def feed(self, data: bytes) -> tuple[int, list[Event], bool]:
        """Scan ``data``; returns (bytes of data used, events, body ended).

        When the end marker is found, the bytes after it are not used: they
        are the next commands.
        """
        carry = self._carry
        buf = carry + data
        n0 = len(carry) - self._held  # first uncounted index
        base = self._pos - n0  # body offset of buf[0]
        size = len(buf)
        done = False
        end = size
        used = len(data)
        if self.dot_mode:
            dots = 0
            # One pass finds line-start dots: dot-stuffing, or the end marker.
            i = buf.find(b"\r\n.", n0 - 2 if n0 > 2 else 0)
            while i >= 0:
                j = i + 3
                if j + 2 <= size:
                    if buf[j] == _CR and buf[j + 1] == _LF:
                        end = i + 2
                        used = i + 5 - len(carry)
                        done = True
                        break
                elif j == size or buf[j] == _CR:
                    end = i + 2  # "\r\n." or "\r\n.\r" at the end: wait and see
                    break
                dots += 1
                i = buf.find(b"\r\n.", j)
            if dots:
                self.stats.dot_stuffed = _add(self.stats.dot_stuffed, dots, BYTES_CAP)
        events: list[tuple[int, int, Event]] = []
        if end > n0:
            self._count(buf, data, n0, end, base, done, events)
            self._pos = base + end
        # Next carry: the last counted bytes (for look-behind) + the held tail.
        self._carry = buf[end - _CARRY if end > _CARRY else 0:]
        self._held = size - end
        st = self.stats
        st.wire_bytes = _add(st.wire_bytes, used, BYTES_CAP)
        st.size = size = self._pos - st.dot_stuffed
        st.qmail_size = size - self._crlf
        st.complete = done
        if not events:
            return used, [], done
        events.sort(key=_sort_key)
        return used, [item[2] for item in events], done

    # -- counting --------------------------------------------------------

    def _count(
        self, buf: bytes, data: bytes, n0: int, end: int, base: int, done: bool,
        events: list[tuple[int, int, Event]],
    ) -> None:
        st = self.stats
        msg = st.message
        lines0 = st.lines
        seg = data if (n0 == len(buf) - len(data) and end == len(buf)) else buf[n0:end]
        # Fast path: splitlines() is one C pass that breaks at CRLF, CR and
        # LF alike; the chunk is clean (every CR and LF paired as CRLF) when
        # the terminators removed are exactly two bytes per break.  The exact
        # counts below run only for a bare CR or LF, or a CRLF cut by the
        # chunk boundary.
        parts = seg.splitlines()
        last = seg[-1]
        breaks = len(parts) if last == _LF else len(parts) - 1
        kept = len(b"".join(parts)) if len(parts) > 1 else len(parts[0])
        clean = (last != _CR and buf[n0 - 1] != _CR
                 and len(seg) - kept == 2 * breaks)
        if clean:
            lf = crlf = breaks
            bare_lf = bare_cr = 0
        else:
            lf = seg.count(b"\n")
            crlf = buf.count(b"\r\n", n0 - 1, end)
            bare_lf = lf - crlf
            bare_cr = buf.count(b"\r", n0 - 1, end - 1) - crlf
        nul = seg.count(b"\x00") if b"\x00" in seg else 0
        self._crlf = _add(self._crlf, crlf, BYTES_CAP)

        if bare_lf:
            if st.bare_lf_first_line is None:
                i = buf.find(b"\n", n0, end)
                while buf[i - 1] == _CR:
                    i = buf.find(b"\n", i + 1, end)
                line = _line_at(buf, n0, i, lines0)
                st.bare_lf_first_line = line
                events.append((base + i, 0, BareLF(message=msg, line=line, offset=base + i)))
            st.bare_lf_count = _add(st.bare_lf_count, bare_lf)
        if bare_cr:
            if st.bare_cr_first_line is None:
                i = buf.find(b"\r", n0 - 1, end - 1)
                while buf[i + 1] == _LF:
                    i = buf.find(b"\r", i + 1, end - 1)
                line = _line_at(buf, n0, i, lines0)
                st.bare_cr_first_line = line
                events.append((base + i + 1, 1, BareCR(message=msg, line=line, offset=base + i)))
            st.bare_cr_count = _add(st.bare_cr_count, bare_cr)
        if nul:
            if st.nul_first_line is None:
                i = buf.find(b"\x00", n0, end)
                line = _line_at(buf, n0, i, lines0)
                st.nul_first_line = line
                events.append((base + i, 2, NulByte(message=msg, line=line, offset=base + i)))
            st.nul_count = _add(st.nul_count, nul)
        if not seg.isascii():
            high = len(seg) - len(seg.translate(None, _HIGH))
            if st.eight_bit_first_line is None:
                i = n0 + seg.translate(_HIGH_MAP).find(b"\x01")
                st.eight_bit_first_line = _line_at(buf, n0, i, lines0)
            st.eight_bit_count = _add(st.eight_bit_count, high)
        self._long_lines(buf, n0, end, base, lines0, events)
        if self.dot_mode:
            # Every look-alike holds a bare CR, a bare LF or a NUL: a clean
            # chunk after a clean chunk needs no dot-by-dot look.
            anomaly = bool(bare_lf or bare_cr or nul)
            deferred = False
            if anomaly or self._slow_next:
                deferred = self._smuggling(buf, n0, end, base, done, lines0, events)
            else:
                nxt = base + end - 3
                if nxt > self._dot_next:
                    self._dot_next = nxt
            self._slow_next = anomaly or deferred
        st.lines = _add(lines0, lf)

    def _long_lines(
        self, buf: bytes, n0: int, end: int, base: int, lines0: int,
        events: list[tuple[int, int, Event]],
    ) -> None:
        """Find lines over MAX_BODY_LINE octets, jumping ~1000 bytes per step."""
        st = self.stats
        ip = self._line_start - base  # index of the current line's start
        long_now = self._line_long
        span = MAX_BODY_LINE + 2  # content, CR, LF
        while True:
            lo = ip if ip > n0 else n0
            if long_now:
                q = buf.find(b"\n", lo, end)
                if q < 0:
                    break
                ip = q + 1
                long_now = False
                continue
            limit = ip + span
            if limit > end:
                q = buf.rfind(b"\n", lo, end)
                if q >= 0:
                    ip = q + 1
                break
            q = buf.rfind(b"\n", lo, limit)
            # Long: no LF in the 1000 bytes from the line start, or the first
            # LF is the 1000th byte and no CR precedes it.
            if q >= 0 and not (
                    q == limit - 1 and buf[q - 1] != _CR and buf.find(b"\n", lo, q) < 0):
                ip = q + 1
                continue
            decided = limit - 1
            if st.long_line_first_line is None:
                n = lines0 + (buf.count(b"\n", n0, ip) if ip > n0 else 0) + 1
                st.long_line_first_line = n if n < COUNT_CAP else COUNT_CAP
                events.append((base + decided, 3, LongLine(
                    message=st.message, line=st.long_line_first_line, offset=base + ip)))
            st.long_line_count = _add(st.long_line_count, 1)
            if q == limit - 1:
                ip = q + 1
            else:
                long_now = True
        self._line_start = base + ip
        self._line_long = long_now

    def _smuggling(
        self, buf: bytes, n0: int, end: int, base: int, done: bool, lines0: int,
        events: list[tuple[int, int, Event]],
    ) -> bool:
        """Classify dots next to CR, LF or NUL that look like an end marker."""
        st = self.stats
        lo = self._dot_next - base
        if lo < 1:
            lo = 1
        lim = len(buf) if done else end  # bytes we may look at
        dots: list[int] = []
        for pat in (b"\n.", b"\r.", b"\x00."):
            i = buf.find(pat, lo - 1, end)
            while i >= 0:
                dots.append(i + 1)
                i = buf.find(pat, i + 1, end)
        dots.sort()
        nxt = base + end
        deferred = False
        for d in dots:
            found = _classify(buf, d, lim)
            if found is None:
                continue
            if found is _MORE:
                nxt = base + d  # needs bytes we do not have yet
                deferred = True
                break
            variant, decided = found
            st.smuggling_count = _add(st.smuggling_count, 1)
            if st.smuggling_count <= MAX_SMUGGLING_EVENTS:
                n = lines0 + (buf.count(b"\n", n0, d) if d > n0 else 0) + 1
                events.append((base + decided, 4, Smuggling(
                    message=st.message, variant=variant,
                    line=n if n < COUNT_CAP else COUNT_CAP, offset=base + d)))
        self._dot_next = nxt
        return deferred


_MORE = ("", -1)


def _classify(buf: bytes, d: int, lim: int) -> tuple[str, int] | None:
    """The smuggling variant around the dot at ``buf[d]``.

    Returns (variant, index of the deciding byte), None if this dot is not an
    end-marker look-alike, or _MORE if bytes up to ``lim`` cannot tell yet.
    """
    j = d - 1
    pre_nul = buf[j] == 0
    if pre_nul:
        j -= 1
    if j < 0:
        return None
    b = buf[j]
    if b == _LF:
        prefix = "\\r\\n" if j > 0 and buf[j - 1] == _CR else "\\n"
    elif b == _CR:
        prefix = "\\r"
    else:
        return None
    k = d + 1
    if k >= lim:
        return _MORE
    post_nul = buf[k] == 0
    if post_nul:
        k += 1
        if k >= lim:
            return _MORE
    c = buf[k]
    if c == _LF:
        suffix = "\\n"
        decided = k
    elif c == _CR:
        if k + 1 >= lim:
            return _MORE
        suffix = "\\r\\n" if buf[k + 1] == _LF else "\\r"
        decided = k + 1
    else:
        return None
    if prefix == "\\r\\n" and suffix == "\\r\\n" and not (pre_nul or post_nul):
        return None
    variant = prefix + ("\\0" if pre_nul else "") + "." + ("\\0" if post_nul else "") + suffix
    return variant, decided


# ---------------------------------------------------------------------------
# Properties
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
    """Per-feed (used, events, done, buffered, stats) until the body ends."""
    stats = MessageStats(1, "data" if dot_mode else "bdat")
    scanner = cls(stats, dot_mode)
    trace = []
    for piece in pieces:
        used, events, done = scanner.feed(piece)
        trace.append((used, events, done, scanner.buffered, repr(stats)))
        if done:
            break
    return trace


def _total(trace):
    """What a whole run amounts to, whatever the pieces: events, counters, bytes used."""
    events = [e for _, evs, _, _, _ in trace for e in evs]
    return events, trace[-1][4] if trace else None, sum(t[0] for t in trace)


def _check(body: bytes, cuts: list[int], dot_mode: bool = True) -> None:
    """Whole, cut and bytewise feeds: each as the reference's, and all alike in total."""
    totals = []
    for split in ([body] if body else [], cut_at(body, cuts) if body else [],
                  [body[i:i + 1] for i in range(len(body))]):
        trace = _run(BodyScanner, split, dot_mode)
        assert trace == _run(RefScanner, split, dot_mode)
        totals.append(_total(trace))
    assert totals[1] == totals[0] and totals[2] == totals[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, cuts=st.lists(st.integers(1, 40000), max_size=12))
@example(body=b"a\r\nb\r\n.\r\n", cuts=[2, 3, 5, 6, 7, 8])
@example(body=b"w" * 999 + b"\n" + b"x" * 998 + b"\r\n", cuts=[999, 1000, 1001])
@example(body=b"\r\n" + b"z" * 998 + b"\r\nab\r", cuts=[1, 3, 1001, 1002])
def test_body_fast_paths_match_reference(body, cuts):
    """Any body, any cuts: the same feeds as the reference scanner, DATA and BDAT."""
    _check(body, cuts)
    _check(body, cuts, dot_mode=False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=clean_bodies, cuts=st.lists(st.integers(1, 40000), max_size=12))
def test_clean_body_fast_paths_match_reference(body, cuts):
    """Mostly clean bodies (the fast path), long and 998-octet lines, cut anywhere."""
    _check(body + b"\r\n.\r\nQUIT\r\n", cuts)


def test_large_chunks_match_reference():
    """Chunks over the 8-bit and long-line block sizes, with anomalies deep inside."""
    line = b"The quick brown fox jumps over the lazy dog, 0123456789\r\n"
    block = line * 300 + b"..dot\r\n"
    body = (block * 3 + b"caf\xc3\xa9\r\n" + block * 2 + b"bare\nlf\rcr\x00\r\n" + block
            + b"q" * 2500 + b"\r\n" + block + b"\r\n.\r\nNOOP\r\n")
    for size in (65536, 16384, 4099, 1000, 997):
        pieces = [body[i:i + size] for i in range(0, len(body), size)]
        assert _run(BodyScanner, pieces) == _run(RefScanner, pieces)
        assert _run(BodyScanner, pieces, False) == _run(RefScanner, pieces, False)


def _dirty_lines(first: bytes, long_at: int, length: int) -> bytes:
    """Short lines, one of ``length`` octets (+ CRLF) starting near ``long_at``."""
    line = b"0123456789" * 7 + b"\r\n"
    head = (line * (long_at // len(line) + 1))[:long_at] + b"\r\n"
    return first + head + b"L" * length + b"\r\n" + line * 30


def test_long_line_bounds_in_dirty_chunks():
    """A 998-, 999- or 1000-octet line anywhere in a chunk with a bare LF or CR."""
    for first in (b"bare\nlf\r\n", b"bare\rcr\r\n", b"nul\x00\r\n"):
        for length in (997, 998, 999, 1000):
            for long_at in range(0, 1100, 37):
                body = _dirty_lines(first, long_at, length)
                for pieces in ([body], [body[:600], body[600:]], [body[:1500], body[1500:]]):
                    assert _run(BodyScanner, pieces) == _run(RefScanner, pieces)
                for lf_end in (b"\n", b"\r\n"):
                    # A bare LF as the 1000th octet: long, as qmail-smtpd counts.
                    odd = first + b"M" * (length - 1) + lf_end + b"tail\r\n"
                    assert _run(BodyScanner, [odd]) == _run(RefScanner, [odd])


def test_many_dots_then_lookalikes():
    """Look-alikes after any number of plain dots (dot-by-dot, then 2-byte finds)."""
    for n in range(0, 45):
        for variant in (b"\n.\n", b"\r.\r", b"\x00.\x00", b"\r\n.\n", b"\n.\r\n"):
            body = b"bare\nlf " + b"x." * n + variant + b"y." * 5 + variant + b"\r\n"
            assert _run(BodyScanner, [body]) == _run(RefScanner, [body])
            assert _run(BodyScanner, [body, b"\r\n.\r\n"]) == _run(
                RefScanner, [body, b"\r\n.\r\n"])


def test_long_line_block_alignment():
    """A 999-octet line whose LFs fall on the edges of the 500-byte blocks."""
    for first in (b"bare\nlf\r\n", b"nul\x00\r\n"):
        for long_at in range(0, 520):
            body = _dirty_lines(first, long_at, 999)
            assert _run(BodyScanner, [body]) == _run(RefScanner, [body])


def test_eight_bit_counts_at_block_edges():
    """8-bit bytes first, last and at the 8 KiB block edges of chunks of any size."""
    for size in (8191, 8192, 8193, 16384, 16385, 24577):
        for spots in ([0], [size - 1], [8191], [8192], [8191, 8192, 16383, 16384], []):
            chunk = bytearray((b"abcdefgh\r\n" * (size // 10 + 1))[:size])
            for i in spots:
                if i < size:
                    chunk[i] = 0xE9
            pieces = [b"x\r\n", bytes(chunk), b"\r\n.\r\n"]
            assert _run(BodyScanner, pieces) == _run(RefScanner, pieces)
