"""Bounded reassembly of the child's stderr lines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervise_smtp.session.linesplit import LineSplitter


def _feed_all(splitter: LineSplitter, chunks: list[bytes]) -> list[tuple[bytes, int, bool]]:
    out = []
    for chunk in chunks:
        if chunk:
            out += splitter.feed(chunk)
    return out + splitter.feed(b"")


def test_lines_truncate_keeps_prefix_and_length():
    """A long line keeps its first bytes and its true length; the next line survives."""
    s = LineSplitter(4)
    assert _feed_all(s, [b"ab\n", b"cdefgh", b"ij\nk"]) == [
        (b"ab", 2, False),
        (b"cdef", 8, True),
        (b"k", 1, False),
    ]


def test_lines_split_loses_nothing():
    """In split mode every byte comes out, in pieces of at most max_bytes."""
    s = LineSplitter(4, split=True)
    assert _feed_all(s, [b"abcdefghij\nxy\n"]) == [
        (b"abcd", 4, False),
        (b"efgh", 4, False),
        (b"ij", 2, False),
        (b"xy", 2, False),
    ]


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10))
def test_lines_split_any_chunking_property(data, cuts):
    """However the pipe splits the bytes, split mode gives back exactly the input."""
    points = sorted(set(c for c in cuts if c <= len(data)))
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]
    s = LineSplitter(16, split=True)
    pieces = _feed_all(s, chunks)
    assert all(len(p) <= 16 for p, _, _ in pieces)
    # joining pieces of one line needs the line structure: compare against one-shot
    whole = LineSplitter(16, split=True)
    assert pieces == _feed_all(whole, [data])
    assert b"".join(p for p, _, _ in pieces) == data.replace(b"\n", b"")


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10))
def test_lines_truncate_any_chunking_property(data, cuts):
    """Truncate mode gives the same lines for any chunking and true lengths."""
    points = sorted(set(c for c in cuts if c <= len(data)))
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]
    got = _feed_all(LineSplitter(8), chunks)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    assert [(line[:8], len(line), len(line) > 8) for line in lines] == got
