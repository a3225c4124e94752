"""Bounded line splitting for command and reply lines.

A peer that never sends LF must not make us buffer without end: past
``limit`` bytes the line is cut, the caller is told once (so it can emit
``LineTooLong``), and the rest of that line is skipped until its LF.  The cut
head is still delivered at the LF, marked truncated, because the server will
answer that line too and replies must stay matched to commands.

Like qmail-smtpd, a line ends at LF; one CR before it is stripped.
"""

from __future__ import annotations

__all__ = ["LineReader"]


class LineReader:
    """Splits one direction's bytes into lines, holding at most ``limit`` bytes."""

    __slots__ = ("limit", "_buf", "_cut")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._cut = False  # the current line passed the limit

    @property
    def buffered(self) -> int:
        """Bytes of the unterminated line held now (never above ``limit``)."""
        return len(self._buf)

    def clear(self) -> int:
        """Drop the unterminated line; returns how many bytes it had."""
        n = len(self._buf)
        self._buf.clear()
        self._cut = False
        return n

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes of the unterminated line held now."""
        return bytes(self._buf[:n])

    def skip(self) -> None:
        """The rest of the current line went by unseen: deliver its head, cut, at its LF."""
        self._cut = True

    def next_line(self, data: bytes, pos: int) -> tuple[bytes | None, int, bool, bool]:
        """Take bytes from ``data[pos:]`` up to and including the next LF.

        Returns ``(line, new_pos, cut_now, truncated)``: ``line`` is None when
        ``data`` ran out first (the partial line stays buffered); ``cut_now``
        is True exactly once per line, when it first passes the limit.
        """
        buf = self._buf
        limit = self.limit
        end = data.find(b"\n", pos)
        cut_now = False
        if end < 0:
            if not self._cut:
                room = limit - len(buf)
                if len(data) - pos <= room:
                    buf += data[pos:]
                else:
                    buf += data[pos:pos + room]
                    self._cut = cut_now = True
            return None, len(data), cut_now, False
        if self._cut:
            line = bytes(buf)
            truncated = True
        else:
            room = limit - len(buf)
            if end - pos <= room:
                if buf:
                    buf += data[pos:end]
                    line = bytes(buf)
                else:
                    line = data[pos:end]
                truncated = False
            else:
                buf += data[pos:pos + room]
                line = bytes(buf)
                truncated = cut_now = True
        buf.clear()
        self._cut = False
        if line[-1:] == b"\r" and not truncated:
            line = line[:-1]
        return line, end + 1, cut_now, truncated
