"""The serve parent's periodic ``event=serve_stats`` line (``--stats-interval S``).

    event=serve_stats accepted=N denied=N active=N rss_kb=N fds=N
        workers=N workers_uss_kb=N interval_s=S

accepted and denied count since start: accepted every connection taken off
the listening socket, denied every worker that ended with the rules' deny
status (exit 100, tcpserver's ``status 25600``).  rss_kb and fds are the
parent's own; active is the sessions running, workers the worker processes
(busy and idle), workers_uss_kb the sum of their USS (memory that is
theirs alone: what stopping them would free), read from their
/proc/PID/smaps_rollup by psutil.

psutil is a costly import (docs/performance.md): it is imported here, in the resident
parent, once it is listening and only when the interval is not 0, never by
the per-connection wrapper.  The timer is a deadline in the parent's poll
loop (the parent forks: no thread).  The line goes through serve/log.py, so it
never blocks; it is written unless -q.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ServeStats", "DENY_STATUS"]

DENY_STATUS = 100 << 8  # the raw wait status of a worker the rules denied


class ServeStats:
    """Counters of the parent and the deadline of the next line."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.accepted = 0
        self.denied = 0
        self.next_at: float | None = None  # monotonic deadline; None: no line, ever
        self._psutil: Any = None
        self._me: Any = None

    def start(self) -> str | None:
        """Import psutil and arm the timer; the reason when stats cannot be had."""
        if self.interval_s <= 0:
            return None
        try:
            import psutil
        except ImportError as err:
            return f"psutil: {err}"
        self._psutil = psutil
        self._me = psutil.Process()
        self.next_at = time.monotonic() + self.interval_s
        return None

    def ended(self, status: int) -> None:
        if status == DENY_STATUS:
            self.denied += 1

    def due(self, now: float) -> bool:
        return self.next_at is not None and now >= self.next_at

    def fields(self, active: int, workers: list[int]) -> dict[str, object]:
        """The line's fields now; the next deadline is one interval from now."""
        assert self._me is not None and self.next_at is not None
        self.next_at = time.monotonic() + self.interval_s
        uss = 0
        seen = 0
        for pid in workers:
            try:
                uss += self._psutil.Process(pid).memory_full_info().uss
                seen += 1
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied,
                    self._psutil.ZombieProcess):
                continue  # ended since: reaped at the next wake-up
        return {"accepted": self.accepted, "denied": self.denied, "active": active,
                "rss_kb": self._me.memory_info().rss // 1024,
                # psutil lists /proc/self/fd with a descriptor of ours: not counted
                "fds": self._me.num_fds() - 1,
                "workers": seen, "workers_uss_kb": uss // 1024,
                "interval_s": self.interval_s}
