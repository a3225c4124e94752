"""Bounded reassembly of the child's stderr into lines (sans-IO).

qmail-smtpd's descendants (qmail-scanner, simscan, qmail-queue) share its
stderr pipe, and one of them may write a line without end.  Memory stays
bounded either way: in ``truncate`` mode (for tagged events) a long line keeps
its first ``max_bytes`` and only the count of the rest; in ``split`` mode (for
``--stderr pass``, which must not lose a byte) it is cut into pieces of
``max_bytes``, each written as a line of its own.
"""

from __future__ import annotations

__all__ = ["LineSplitter"]


class LineSplitter:
    """feed(bytes) -> [(line, total_length, truncated)], newline stripped."""

    def __init__(self, max_bytes: int, split: bool = False) -> None:
        self.max_bytes = max_bytes
        self.split = split
        self._buf = bytearray()
        self._extra = 0  # bytes dropped from the current line (truncate mode)

    def feed(self, data: bytes) -> list[tuple[bytes, int, bool]]:
        """Complete lines in ``data``; b"" flushes a final unterminated line."""
        if not data:
            return self._flush()
        out: list[tuple[bytes, int, bool]] = []
        start = 0
        end = len(data)
        limit = self.max_bytes
        buf = self._buf
        while start < end:
            nl = data.find(b"\n", start)
            stop = end if nl < 0 else nl
            room = limit - len(buf)
            take = stop - start
            if take <= room:
                buf += data[start:stop]
            else:
                buf += data[start : start + room]
                if self.split:
                    # emit full pieces, keep going with the rest of this line
                    out.append((bytes(buf), len(buf), False))
                    buf.clear()
                    start += room
                    continue
                self._extra += take - room
            if nl < 0:
                break
            out.append((bytes(buf), len(buf) + self._extra, self._extra > 0))
            buf.clear()
            self._extra = 0
            start = nl + 1
        return out

    def _flush(self) -> list[tuple[bytes, int, bool]]:
        if not self._buf and not self._extra:
            return []
        line = (bytes(self._buf), len(self._buf) + self._extra, self._extra > 0)
        self._buf.clear()
        self._extra = 0
        return [line]
