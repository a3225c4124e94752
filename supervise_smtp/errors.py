"""Typed failures, the exit codes they map to (mapped in cli.main only), and how a
message about them is said.

Exit codes follow daemontools: 100 for a usage error, before any side effect;
111 for a temporary failure before the child runs.  Once the child has run,
its own status is passed through instead (see cli.main).
"""

from __future__ import annotations

import os

__all__ = ["EXIT_USAGE", "EXIT_TEMP", "UsageError", "TempError", "say"]

EXIT_USAGE = 100
EXIT_TEMP = 111


class UsageError(Exception):
    """Bad command line: exit 100, nothing started."""

    exit_code = EXIT_USAGE


class TempError(Exception):
    """Could not start the child (EMFILE, ENOENT, EACCES...): exit 111."""

    exit_code = EXIT_TEMP

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def say(text: str, fd: int = 2, wait_ms: int = 1000) -> None:
    """One message on ``fd``, written only if it takes it within ``wait_ms``.

    fd 2 is the log service's pipe, shared with tcpserver (or the
    supervisor's, for collect): a stuck logger must not hold a wrapper, a
    worker (and its -c slot) or the log stage forever on its way out.  The
    only way this program says a line of its own outside the event lines.
    """
    data = text.encode("utf-8", "surrogateescape")
    try:
        if fd == 2:
            import select

            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if not poller.poll(wait_ms):
                return
        os.write(fd, data)
    except OSError:
        pass
