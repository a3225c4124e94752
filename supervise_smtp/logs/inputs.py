"""The report's inputs: files, log directories, gzip, stdin, as lines of text.

A log directory of multilog, svlogd or s6-log holds ``current`` and the
archived files it rotated, named ``@<tai64n>.s`` (or ``.u`` when the logger
was killed mid-file), which is the time they were closed: sorted by name
they are in time order, and ``current`` comes last.  A file that starts with
gzip's magic bytes is read through gzip whatever its name (a log processor
or logrotate may have compressed the archives).  A gzip file cut short (still
being written) or corrupt gives what it has and counts one read error.

Every read error (an input that cannot be opened, listed or read: EIO, a
bad gzip stream) is kept as one line naming the input, and the other inputs
are still read: the report says what it could, and exits 111 after it.

Lines are read as bytes and decoded as Latin-1, which never fails and keeps
one character per byte: an event line of ours is printable ASCII, anything
else is the parser's business.
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from supervise_smtp.errors import UsageError

__all__ = ["Inputs", "expand", "STDIN"]

STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"
_ARCHIVE_SUFFIXES = (".s", ".u", ".s.gz", ".u.gz")


class Unlistable(str):
    """A log directory that could not be listed: read, it is one read error."""

    __slots__ = ("reason",)
    reason: str


def _archives(directory: str) -> list[str]:
    """A log directory's files in time order: ``@...s``/``@...u`` by name, then current."""
    try:
        names = os.listdir(directory)
    except OSError as err:
        gone = Unlistable(directory)
        gone.reason = err.strerror or str(err)
        return [gone]
    files = sorted(n for n in names if n.startswith("@") and n.endswith(_ARCHIVE_SUFFIXES))
    if "current" in names:
        files.append("current")
    return [os.path.join(directory, n) for n in files]


def expand(paths: list[str]) -> list[str]:
    """The files to read, in order: each argument, a directory as its log files.

    UsageError for a path that does not exist (nothing read yet).
    """
    out: list[str] = []
    for path in paths or [STDIN]:
        if path == STDIN:
            out.append(path)
        elif os.path.isdir(path):
            out.extend(_archives(path))
        elif os.path.exists(path):
            out.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory")
    return out


class Inputs:
    """Iterates over the lines of every input in turn; counts files and read errors."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.files = 0
        self.read_errors: list[str] = []
        self.current: str | None = None
        # (path, modification time, last line) of each regular file read
        self.tails: list[tuple[str, float, str]] = []

    def _open(self, path: str) -> tuple[BinaryIO, BinaryIO]:
        """(the stream to read lines from, the file under it); OSError if it cannot be."""
        raw: BinaryIO = sys.stdin.buffer if path == STDIN else open(path, "rb")  # noqa: SIM115
        try:
            peek = getattr(raw, "peek", None)
            head = peek(2)[:2] if peek is not None else b""
        except OSError:
            if path != STDIN:
                raw.close()
            raise
        if head == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
        return raw, raw

    def lines(self) -> Iterator[str]:
        """Each line of each input, without its line end, as Latin-1 text."""
        for path in self.paths:
            self.current = path
            if isinstance(path, Unlistable):
                self.read_errors.append(f"{path}: {path.reason}")
                continue
            try:
                stream, raw = self._open(path)
            except OSError as err:
                self.read_errors.append(f"{path}: {_reason(err)}")
                continue
            self.files += 1
            last = None
            try:
                for line in stream:
                    last = line.rstrip(b"\r\n").decode("latin-1")
                    yield last
                if last is not None and path != STDIN:
                    self.tails.append((path, os.fstat(raw.fileno()).st_mtime, last))
            except (OSError, EOFError, zlib.error) as err:
                self.read_errors.append(f"{path}: {_reason(err)}")
            finally:
                if path != STDIN:
                    stream.close()
                    raw.close()


def _reason(err: BaseException) -> str:
    """An error as one short line: the system's words for an OSError, else the message."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, EOFError):
        return "cut short (compressed stream ended before its end marker)"
    return str(err) or type(err).__name__
