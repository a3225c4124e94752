"""The resident parent's own lines on fd 2: never blocking, never a thread.

The parent accepts every connection: one blocking write to a log pipe that
stopped being read would stop the mail of the whole server.  The session's
answer (output.Output: a writer thread and a backlog) is no good here: a
thread in a process that forks is unsafe (a lock held by it at fork time
stays held forever in the worker), and the workers would inherit its
backlog.  So each line is written at once, synchronously, or dropped and
counted:

- fd 2 a pipe (the usual log service): the parent opens its own open file
  description of it (/proc/self/fd/2) with O_NONBLOCK.  fd 2's description,
  shared with every worker and the children, stays blocking (STYLE.md:
  never set O_NONBLOCK on fd 2); ours gets EAGAIN instead of waiting, and a
  line (< 4000 bytes, under PIPE_BUF) goes in whole or not at all.
- fd 2 a socket (a journal stream): send with MSG_DONTWAIT; the end of a
  line the socket did not take goes out before the next line.
- anything else (a tty, a file): poll for POLLOUT with no wait, then write.

A dropped line is counted; the next line written carries
``log_dropped=N``.  Format and escaping are output.py's, so the parent's
lines read like every other line (logfmt or --format json).
"""

from __future__ import annotations

import os
import select
import socket
import stat

from supervise_smtp.session.output import format_json, format_logfmt

__all__ = ["ParentLog"]


class ParentLog:
    """Lines of the serve parent; ``verbosity`` is tcpserver's -q (0), -Q (1), -v (2)."""

    def __init__(self, fmt: str, verbosity: int, fd: int = 2) -> None:
        self.format = format_json if fmt == "json" else format_logfmt
        self.verbosity = verbosity
        self.fd = fd
        self.dropped = 0
        self.broken = False
        self.own_fd: int | None = None  # our O_NONBLOCK description of a pipe
        self.sock: socket.socket | None = None
        self._pending = b""  # the end of a line a socket did not take whole
        self._poller: select.poll | None = None
        if verbosity:
            self._open()

    def _open(self) -> None:
        try:
            mode = os.fstat(self.fd).st_mode
        except OSError:
            self.broken = True
            return
        if stat.S_ISFIFO(mode):
            try:
                self.own_fd = os.open(f"/proc/self/fd/{self.fd}",
                                      os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                return
            except OSError:
                pass  # no /proc, or no reader: fall back to the poll guard
        elif stat.S_ISSOCK(mode):
            try:
                self.sock = socket.socket(fileno=os.dup(self.fd))
                return
            except OSError:
                pass
        self._poller = select.poll()
        self._poller.register(self.fd, select.POLLOUT)

    def close(self) -> None:
        """In a worker: drop our descriptors (the session writes fd 2 itself)."""
        if self.own_fd is not None:
            os.close(self.own_fd)
            self.own_fd = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.broken = True

    def status(self, event: str, **fields: object) -> None:
        """A status line: written under -v only, as tcpserver's status messages."""
        if self.verbosity >= 2:
            self._emit(event, fields)

    def info(self, event: str, **fields: object) -> None:
        """A periodic report (event=serve_stats): written unless -q, as errors are."""
        if self.verbosity >= 1:
            self._emit(event, fields)

    def error(self, event: str, **fields: object) -> None:
        """An error or warning: written unless -q, as tcpserver's."""
        if self.verbosity >= 1:
            self._emit(event, fields)

    def _emit(self, event: str, fields: dict[str, object]) -> None:
        if self.broken:
            return
        line: dict[str, object] = {"event": event}
        line.update(fields)
        if self.dropped:
            line["log_dropped"] = self.dropped
        if self._write(self.format(line)):
            self.dropped = 0
        else:
            self.dropped += 1

    def _write(self, data: bytes) -> bool:
        """One whole line now, or False; never waits."""
        try:
            if self.own_fd is not None:
                return os.write(self.own_fd, data) == len(data)
            if self.sock is not None:
                return self._send(data)
            if self._poller is not None and self._poller.poll(0):
                return os.write(self.fd, data) == len(data)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.broken = True
        return False

    def _send(self, data: bytes) -> bool:
        """A stream socket may take part of a line: the rest goes first, next time."""
        assert self.sock is not None
        if self._pending:
            sent = self.sock.send(self._pending, socket.MSG_DONTWAIT)
            self._pending = self._pending[sent:]
            if self._pending:
                return False
        sent = self.sock.send(data, socket.MSG_DONTWAIT)
        self._pending = data[sent:]
        return True
