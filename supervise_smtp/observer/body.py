"""The DATA body scanner: counters at C speed, never the content.

A body can be 100 MB in relay-sized chunks, so every pass is a ``bytes`` method
and the only Python loops run per ~500 bytes (the long-line blocks), per
line-start dot, per 8 KiB block with 8-bit bytes, or per anomaly -- never
per byte.  A clean chunk costs one ``splitlines`` (its terminator count and
removed bytes prove every CR and LF a CRLF pair, and give the line count;
the parts' lengths bound the lines), memchr skips to line-start dots
(stuffing and the end marker; a 3-byte ``find`` only past other dots),
``isascii`` and a NUL ``in`` (throughput: docs/performance.md).  ``count``
of LFs, the exact long-line walk and the smuggling look only run for chunks
with an anomaly, or when a cheap bound fails.  No ``re``: its import would
cost every connection's start-up.

Chunk boundaries: each chunk is scanned as ``carry + data``, where ``carry``
is the last few bytes already counted (6 bytes: enough to see a CR LF NUL
before a dot) plus, at most, a held ``.`` or ``.\\r`` that may yet become
the end marker.  A count of a pattern of length k starts k-1 bytes before the
new region, so each occurrence is counted once whatever the split.  The body
begins with a virtual ``\\r\\n`` in the carry, so a dot on the first line is
a line-start dot, as in qmail-smtpd's ``blast()``.

Events inside a body are sorted by the offset of the byte that decided them,
so the same bytes split anywhere give the same events in the same order.
"""

from __future__ import annotations

from itertools import repeat

from .events import BareCR, BareLF, Event, LongLine, NulByte, Smuggling
from .state import BYTES_CAP, COUNT_CAP, MessageStats

__all__ = ["BodyScanner", "MAX_BODY_LINE"]

# RFC 5321 4.5.3.1.6: 1000 octets with the CRLF.
MAX_BODY_LINE = 998
# Smuggling events reported per message; the rest are only counted.
MAX_SMUGGLING_EVENTS = 16
_CARRY = 6
_LF = 10
_CR = 13
# 8-bit bytes are counted per block of this size, and only in blocks that
# have some (the encoder drops them in C, faster than bytes.translate).
_HIGH_BLOCK = 8192
# Maps ASCII to 0 and 8-bit bytes to 1, to find the first 8-bit byte.
_HIGH_MAP = bytes(128) + b"\x01" * 128
# Dots met one by one (memchr) before the look-alike search turns to 2-byte
# finds, which cost more per byte but nothing per dot.
_DOTS_ONE_BY_ONE = 32
# With an LF in every block of this size, no two LFs are MAX_BODY_LINE + 2
# bytes apart.
_BLOCK = (MAX_BODY_LINE + 2) // 2
# Events decided by the same byte sort in this order: BareLF 0, BareCR 1,
# NulByte 2, LongLine 3, Smuggling 4 (the second item of each sort key).


def _add(value: int, n: int, cap: int = COUNT_CAP) -> int:
    value += n
    return value if value < cap else cap


def _line_at(buf: bytes, n0: int, i: int, lines0: int) -> int:
    """Body line number of ``buf[i]``: lines before this chunk + LFs before i."""
    n = lines0 + buf.count(b"\n", n0, i) + 1 if i > n0 else lines0 + 1
    return n if n < COUNT_CAP else COUNT_CAP


def _no_long_line(buf: bytes, n0: int, end: int, ip: int) -> bool:
    """True if no line of ``buf[n0:end]`` (the first began at ``ip``) is long yet.

    Every LF within MAX_BODY_LINE + 1 bytes of its line's start, and the
    last line still short enough to be undecided.  False only means "look".
    """
    q = buf.find(b"\n", n0, end)
    if q < 0:
        return end - ip <= MAX_BODY_LINE + 1
    if q - ip > MAX_BODY_LINE:
        return False
    return -1 not in map(buf.find, repeat(b"\n"), range(n0, end - _BLOCK + 1, _BLOCK),
                         range(n0 + _BLOCK, end + 1, _BLOCK))


def _lookalike_dots(buf: bytes, lo: int, end: int) -> list[int]:
    """Indexes of the dots in ``buf[lo:end]`` just after a CR, LF or NUL, in order."""
    find = buf.find
    dots: list[int] = []
    k = find(b".", lo, end)
    n = 0
    while k >= 0:
        if n == _DOTS_ONE_BY_ONE:
            # Many dots (prose): one C pass per pattern for the rest, none
            # for NUL when memchr finds none.
            rest: list[int] = []
            pats = (b"\n.", b"\r.", b"\x00.") if find(b"\x00", k - 1, end) >= 0 else (
                b"\n.", b"\r.")
            for pat in pats:
                i = find(pat, k - 1, end)
                while i >= 0:
                    rest.append(i + 1)
                    i = find(pat, i + 1, end)
            rest.sort()
            return dots + rest
        c = buf[k - 1]
        if c == _LF or c == _CR or c == 0:
            dots.append(k)
        n += 1
        k = find(b".", k + 1, end)
    return dots


def _count_high(seg: bytes) -> int:
    """The 8-bit bytes in ``seg``: ASCII-only blocks are skipped (isascii)."""
    if len(seg) <= _HIGH_BLOCK:
        return len(seg) - len(seg.decode("latin-1").encode("ascii", "ignore"))
    high = 0
    for i in range(0, len(seg), _HIGH_BLOCK):
        block = seg[i:i + _HIGH_BLOCK]
        if not block.isascii():
            high += len(block) - len(block.decode("latin-1").encode("ascii", "ignore"))
    return high


def _sort_key(item: tuple[int, int, Event]) -> tuple[int, int]:
    return item[0], item[1]


class BodyScanner:
    """Counts one message body until its end marker (or, for BDAT, its bytes).

    ``dot_mode`` is True for DATA (dot-unstuffing, ``CRLF.CRLF`` ends it) and
    False for BDAT chunks (binary-clean, length-delimited).
    """

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
            # Line-start dots (dot-stuffing, or the end marker).  A 1-byte find
            # is memchr, much faster than the 3-byte one: skip to the next dot,
            # and search "\r\n." only from a dot that is not at a line start.
            find = buf.find
            j = n0 - 2 if n0 > 2 else 0
            while True:
                k = find(b".", j + 2)  # the dot of any "\r\n." at or after j
                if k < 0:
                    break
                if buf[k - 1] == _LF and buf[k - 2] == _CR:
                    i = k - 2
                else:
                    i = find(b"\r\n.", k - 1)
                    if i < 0:
                        break
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
        """Count ``buf[n0:end]``: line ends, NUL and 8-bit bytes, long lines, look-alikes.

        Longer than most functions here: every count reads the same chunk
        locals, and this runs once per chunk on the hot path, so the cheap
        proofs and the exact walks they guard stay side by side.
        """
        st = self.stats
        msg = st.message
        lines0 = st.lines
        seg = data if (n0 == len(buf) - len(data) and end == len(buf)) else buf[n0:end]
        # splitlines() is one C pass that breaks at CRLF, CR and LF alike: with
        # T terminators and R bytes removed, CRLFs are R - T and lone CRs and
        # LFs together 2T - R.  Two lone ones are expected at the edges: an LF
        # first that pairs with a CR counted last time, and a CR last whose
        # LF is yet to come (it is left to the next chunk).  Any other lone
        # terminator is a bare CR or LF, and one count(b"\n") tells which.
        parts = seg.splitlines()
        lens = list(map(len, parts))
        last = seg[-1]
        end_cr = last == _CR
        terms = len(parts) if (last == _LF or end_cr) else len(parts) - 1
        pairs = len(seg) - sum(lens) - terms  # CRLF inside seg
        lone = terms - pairs
        prev_cr = buf[n0 - 1] == _CR
        joined = prev_cr and seg[0] == _LF  # a CRLF cut by the chunk boundary
        if lone == joined + end_cr and prev_cr == joined:
            lf = crlf = pairs + joined
            bare_lf = bare_cr = 0
        else:
            lf = seg.count(b"\n")
            crlf = pairs + joined
            bare_lf = lf - crlf
            bare_cr = lone - (lf - pairs) - end_cr + (prev_cr and not joined)
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
            high = _count_high(seg)
            if st.eight_bit_first_line is None:
                i = n0 + seg.translate(_HIGH_MAP).find(b"\x01")
                st.eight_bit_first_line = _line_at(buf, n0, i, lines0)
            st.eight_bit_count = _add(st.eight_bit_count, high)
        # Long lines: a quick proof that none is decided in this chunk, else
        # the exact walk.  Clean: a line's LF lies within MAX_BODY_LINE + 1
        # bytes of its start (the CR before it), so the parts' lengths tell.
        # Otherwise an LF in every 500-byte block bounds the gaps (memchr).
        ip = self._line_start - base
        if self._line_long:
            quick = False
        elif not (bare_lf or bare_cr):
            quick = n0 - ip + lens[0] <= MAX_BODY_LINE and max(lens) <= MAX_BODY_LINE
        else:
            quick = _no_long_line(buf, n0, end, ip)
        if quick:
            q = buf.rfind(b"\n", n0, end)
            if q >= 0:
                self._line_start = base + q + 1
        else:
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
        nxt = base + end
        deferred = False
        for d in _lookalike_dots(buf, lo, end):
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
