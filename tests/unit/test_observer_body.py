"""The DATA body scanner: counts, first lines, smuggling look-alikes, sizes."""

from __future__ import annotations

import pytest
from helpers import bytewise, cut_at, feed, smtp_session

from supervise_smtp.observer.body import BodyScanner
from supervise_smtp.observer.events import BareCR, BareLF, DataEnd, LongLine, NulByte, Smuggling
from supervise_smtp.observer.state import MessageStats


def scan(body: bytes, pieces: list[bytes] | None = None):
    """Feed ``body`` (ending with its marker) to a scanner; (stats, events, bytes left)."""
    stats = MessageStats(1, "data")
    scanner = BodyScanner(stats)
    events = []
    left = b""
    for piece in pieces if pieces is not None else [body]:
        if stats.complete:
            left += piece
            continue
        used, evs, done = scanner.feed(piece)
        events += evs
        if done:
            left += piece[used:]
    return stats, events, left


def end_of(body: bytes) -> DataEnd:
    return [e for e in feed(smtp_session(body, end=b"")) if isinstance(e, DataEnd)][0]


@pytest.mark.parametrize(("body", "field", "value", "first_line"), [
    (b"a\r\nb\nc\r\n.\r\n", "bare_lf_count", 1, 2),
    (b"a\nb\nc\r\n.\r\n", "bare_lf_count", 2, 1),
    (b"\n\r\n.\r\n", "bare_lf_count", 1, 1),
    (b"a\rb\r\n.\r\n", "bare_cr_count", 1, 1),
    (b"a\r\nb\r\r\n.\r\n", "bare_cr_count", 1, 2),
    (b"a\r\nb\x00c\x00\r\n.\r\n", "nul_count", 2, 2),
    (b"caf\xc3\xa9\r\n.\r\n", "eight_bit_count", 2, 1),
    (b"x\r\n" + b"y" * 999 + b"\r\n.\r\n", "long_line_count", 1, 2),
], ids=["bare-lf", "two-bare-lf", "bare-lf-first", "bare-cr", "cr-cr-lf", "nul", "8bit",
        "long-line"])
def test_body_anomaly_counted_with_first_line(body, field, value, first_line):
    """Each anomaly is counted per message with the first body line where it occurs."""
    stats, _, _ = scan(body)
    assert getattr(stats, field) == value
    assert getattr(stats, field.replace("_count", "_first_line")) == first_line
    assert stats.complete


@pytest.mark.parametrize(("line", "long"), [
    (b"x" * 998 + b"\r\n", False),
    (b"x" * 999 + b"\r\n", True),
    (b"x" * 997 + b"\r\r\n", False),
    (b"x" * 5000 + b"\r\n", True),
], ids=["998", "999", "997+bare-cr", "5000"])
def test_body_long_line_limit_is_998_octets(line, long):
    """A line is over the limit when its text (without CRLF) passes 998 octets."""
    stats, _, _ = scan(b"a\r\n" + line + b"b\r\n.\r\n")
    assert stats.long_line_count == (1 if long else 0)


def test_body_sizes_dot_stuffing_and_leftover():
    """Wire bytes, SIZE-style size and qmail's queued size; bytes after the marker are left."""
    stats, events, left = scan(b"..a\r\n.b\r\nc\r\n.\r\nQUIT\r\n")
    assert events == []
    assert (stats.wire_bytes, stats.dot_stuffed, stats.size, stats.qmail_size) == (15, 2, 10, 7)
    assert (stats.lines, left) == (3, b"QUIT\r\n")


def test_body_empty_message():
    """A body that is only the end marker has no lines and size 0."""
    stats, _, left = scan(b".\r\nNOOP\r\n")
    assert (stats.lines, stats.size, stats.wire_bytes, left) == (0, 0, 3, b"NOOP\r\n")


@pytest.mark.parametrize(("body", "variant"), [
    (b"a\n.\nb", "\\n.\\n"),
    (b"a\n.\r\nb", "\\n.\\r\\n"),
    (b"a\r.\rb", "\\r.\\r"),
    (b"a\r\n.\nb", "\\r\\n.\\n"),
    (b"a\r.\r\nb", "\\r.\\r\\n"),
    (b"a\r\n.\rb", "\\r\\n.\\r"),
    (b"a\n.\rb", "\\n.\\r"),
    (b"a\r.\nb", "\\r.\\n"),
    (b"a\r\n.\x00\r\nb", "\\r\\n.\\0\\r\\n"),
    (b"a\r\n\x00.\r\nb", "\\r\\n\\0.\\r\\n"),
], ids=["lf.lf", "lf.crlf", "cr.cr", "crlf.lf", "cr.crlf", "crlf.cr", "lf.cr", "cr.lf",
        "dot-nul", "nul-dot"])
def test_body_smuggling_variant_flagged(body, variant):
    """Each end-of-data look-alike is one Smuggling event with its line and offset."""
    full = b"x\r\n" + body + b"\r\n.\r\n"
    stats, events, _ = scan(full)
    found = [e for e in events if isinstance(e, Smuggling)]
    dot = full.index(b".")
    assert [(e.variant, e.line, e.offset) for e in found] == [
        (variant, full.count(b"\n", 0, dot) + 1, dot)]
    assert stats.smuggling_count == 1


def test_body_real_end_and_stuffed_dots_are_not_smuggling():
    """Dot-stuffed lines and the true CRLF.CRLF end are never flagged."""
    _, events, _ = scan(b"..\r\n...\r\n.x\r\n\r\n.\r\n")
    assert events == []


def test_body_events_sorted_by_position():
    """Body events come out in the order of the bytes that decided them."""
    body = b"a\x00\r\nb\rc\r\nd\ne\n.\nf\r\n" + b"z" * 1200 + b"\r\n.\r\n"
    _, events, _ = scan(body)
    assert [type(e) for e in events] == [NulByte, BareCR, BareLF, Smuggling, LongLine]


MESSAGES = [
    b"Subject: hi\r\n\r\nplain text\r\n..stuffed\r\n.\r\nNEXT",
    b"a\nb\rc\x00d\xff\r\n.\n.\r\n\r.\r" + b"L" * 2100 + b"\r\n.\r\n",
    b".\r\n",
    b"x\r\n.\r\r\n.\r\n",
    b"\r\n\r\n.\r\n",
]


@pytest.mark.parametrize("body", MESSAGES, ids=range(len(MESSAGES)))
def test_body_split_anywhere_same_result(body):
    """Byte-by-byte and every two-piece split give the same counters and events."""
    ref = scan(body)
    assert _same(scan(body, bytewise(body)), ref)
    for cut in range(1, len(body)):
        assert _same(scan(body, cut_at(body, [cut])), ref), cut


def _same(a, b) -> bool:
    return repr(a[0]) == repr(b[0]) and a[1] == b[1] and a[2] == b[2]


def test_body_through_observer_bare_lf_event_once():
    """Through the observer, BareLF is emitted once per message, at the first bare LF."""
    events = feed(smtp_session(b"a\r\nb\nc\nd\r\n"))
    lf = [e for e in events if isinstance(e, BareLF)]
    assert lf == [BareLF(message=1, line=2, offset=4)]
    assert end_of(b"a\r\nb\nc\nd\r\n.\r\n").bare_lf_count == 2


def test_body_bare_cr_event():
    """A bare CR gives one BareCR event with its line and offset."""
    events = feed(smtp_session(b"ab\rc\r\n"))
    assert [e for e in events if isinstance(e, BareCR)] == [BareCR(message=1, line=1, offset=2)]
