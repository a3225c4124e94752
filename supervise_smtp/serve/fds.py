"""Room in RLIMIT_NOFILE for serve's -c: the parent holds a descriptor per worker.

tcpserver keeps no descriptor for a running connection (it forks and
closes), so ``tcpserver -c 2000`` runs under the usual 1024 soft limit.
serve's parent keeps one end of each worker's control socket, busy or idle:
up to -c plus --spare-workers of them, with its own few (listening socket,
wakeup pipe, log, /metrics) and, for a moment, the connection being handed
over and a new worker's socketpair.  Under a soft limit below that, the
accepts past it were dropped (``event=drop where=fork ... errno=24``) while
clients waited that -c would have let in.

So the parent raises its soft limit to what -c needs (never above the hard
limit, which only root could raise), and each worker puts the soft limit
back as it was before the session runs, so that the session's child
(qmail-smtpd, whose select() cannot watch descriptors past 1023) starts
with the limit it would have had under tcpserver.  When the hard limit is
too low, ``make_room`` says how many descriptors are missing and the
caller logs it once.
"""

from __future__ import annotations

import resource

__all__ = ["HANDOVER_FDS", "OWN_FDS", "needed", "make_room", "restore", "room"]

OWN_FDS = 64  # the parent's own descriptors, with a margin
# For a moment, on the way to a session: the accepted connection, a new
# worker's socketpair, and one to spare.
HANDOVER_FDS = 4

_original: tuple[int, int] | None = None  # the limits before make_room raised them


def needed(limit: int, spare: int) -> int:
    """Descriptors the parent needs for ``limit`` sessions and ``spare`` idle workers."""
    return limit + spare + OWN_FDS


def make_room(limit: int, spare: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``needed`` if it is below; the shortfall (0: none)."""
    global _original
    want = needed(limit, spare)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return 0
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (OSError, ValueError):
            return want - soft
        if _original is None:
            _original = (soft, hard)
    return want - new


def room(spare: int, extra: int = 0) -> int:
    """Sessions the soft limit leaves room for, beside the descriptors open now.

    When ``make_room`` could not give -c its descriptors, -c is capped at
    this: a session past it could only be accepted and then closed, where
    tcpserver would have left it waiting in the backlog.  ``extra``:
    descriptors the parent may open later (the /metrics endpoint's clients).
    """
    import os

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    used = len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor
    return max(1, soft - used - spare - HANDOVER_FDS - extra)


def restore() -> None:
    """In a worker: the soft limit as it was before ``make_room`` (no-op if untouched)."""
    if _original is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, _original)
        except (OSError, ValueError):
            pass
