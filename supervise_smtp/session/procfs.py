"""/proc lookups for the queue program under qmail-smtpd.

qmail-smtpd forks the queue program ($QMAILQUEUE: qmail-scanner, simscan,
qmail-queue) at DATA, before it answers 354; we look for it then.  We do not
become a subreaper (qmail-scanner detects its parent's death with
getppid() == 1, which a subreaper would hide), so we only watch: its pid, its
start time, and whether it is still alive once qmail-smtpd is gone.  A
vanished process is normal here, never an error: every OSError means "gone".
"""

from __future__ import annotations

import os

__all__ = ["QueueWatch", "alive", "children", "start_ticks"]


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    """The pids of pid's children (Linux /proc/PID/task/PID/children)."""
    data = _read(f"/proc/{pid}/task/{pid}/children")
    if data is None:
        return []
    return [int(p) for p in data.split() if p.isdigit()]


def start_ticks(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone.

    With the pid it identifies a process even if the pid is reused later.
    """
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, ticks: int | None) -> bool:
    """True while the same process (pid and start time) exists and is not a zombie."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return False
    rest = data[data.rfind(b")") + 2:].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return False
    return ticks is None or (len(rest) > 19 and rest[19] == str(ticks).encode())


class QueueWatch:
    """The queue program qmail-smtpd forks at DATA, watched from outside.

    ``at_data_start`` notes it (pid and start time: the pid may be reused),
    ``at_child_exit`` whether it outlived qmail-smtpd -- qmail-scanner then
    writes its "parent process died".  Only /proc is read; nothing is ever
    signalled or reaped here (see process.reap_pid for --subreaper).
    """

    __slots__ = ("child_pid", "seen", "outlived")

    def __init__(self, child_pid: int) -> None:
        self.child_pid = child_pid
        self.seen: list[tuple[int, int | None]] = []  # (pid, start ticks), the last few
        self.outlived: bool | None = None

    @property
    def pid(self) -> int | None:
        """The last message's queue program, if one was seen."""
        return self.seen[-1][0] if self.seen else None

    def at_data_start(self) -> None:
        for pid in children(self.child_pid):
            self.seen.append((pid, start_ticks(pid)))
            del self.seen[:-4]
            return

    def at_child_exit(self) -> None:
        if self.seen and self.outlived is None:
            self.outlived = alive(*self.seen[-1])
