"""Typed failures and the exit codes they map to (mapped in cli.main only).

Exit codes follow daemontools: 100 for a usage error, before any side effect;
111 for a temporary failure before the child runs.  Once the child has run,
its own status is passed through instead (see cli.main).
"""

from __future__ import annotations

__all__ = ["EXIT_USAGE", "EXIT_TEMP", "UsageError", "TempError"]

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
