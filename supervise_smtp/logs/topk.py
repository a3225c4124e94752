"""Bounded tallies for the report: heavy hitters and capped counters.

A log of a million connections may come from a million addresses (a botnet,
a scan of the whole IPv4 space); the report's memory must not grow with it.

``TopK`` is the space-saving heavy-hitters sketch (Metwally, Agrawal and El
Abbadi, 2005) with lazy eviction: up to 2 x ``capacity`` keys are counted
exactly; past that the smallest are dropped in one sort down to
``capacity``, and a key seen afterwards starts from the largest count
dropped so far plus one, with that count as its ``error``.  So every count
is an upper bound and ``count - error`` a lower bound of the true one, a key
seen more than about N / capacity times is never lost, and when no more
than 2 x ``capacity`` keys were ever seen (the usual case) everything is
exact, ``error`` 0.  Each key carries a small record (first and last time
seen, the last HELO name...) updated with it.

``Capped`` is a counter of at most ``limit`` keys; later keys count under
OTHER.  For values that are few by nature (verdicts, reply codes, TLS
versions) but come from a log anyone could have written into.
"""

from __future__ import annotations

__all__ = ["OTHER", "Capped", "TopK", "Entry"]

OTHER = "(other)"


class Entry:
    """One tracked key: its counts, when it was seen, and the last details."""

    __slots__ = ("count", "error", "first", "last", "details")

    def __init__(self, count: int, error: int, when: float | None) -> None:
        self.count = count
        self.error = error
        self.first = when
        self.last = when
        self.details: dict[str, str] = {}


class TopK:
    """The space-saving sketch described above; ``add`` is O(1) amortized."""

    __slots__ = ("capacity", "entries", "floor", "total")

    def __init__(self, capacity: int = 500) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.entries: dict[str, Entry] = {}
        self.floor = 0  # the largest count dropped so far
        self.total = 0

    def add(self, key: str, when: float | None = None,
            details: dict[str, str] | None = None) -> None:
        """Count ``key`` once, seen at ``when``; ``details`` overwrite its last ones."""
        self.total += 1
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= 2 * self.capacity:
                self._prune()
            entry = self.entries[key] = Entry(self.floor + 1, self.floor, when)
        else:
            entry.count += 1
            if when is not None:
                if entry.first is None or when < entry.first:
                    entry.first = when
                if entry.last is None or when > entry.last:
                    entry.last = when
        if details:
            entry.details.update(details)

    def _prune(self) -> None:
        ranked = sorted(self.entries.items(), key=lambda kv: kv[1].count, reverse=True)
        for _key, entry in ranked[self.capacity:]:
            if entry.count > self.floor:
                self.floor = entry.count
        self.entries = dict(ranked[:self.capacity])

    @property
    def exact(self) -> bool:
        """True while nothing was ever dropped: every count is the true one."""
        return self.floor == 0

    def top(self, n: int) -> list[tuple[str, Entry]]:
        """The ``n`` largest, by count, then by key (a stable order for ties)."""
        return sorted(self.entries.items(), key=lambda kv: (-kv[1].count, kv[0]))[:n]

    def __len__(self) -> int:
        return len(self.entries)


class Capped:
    """A counter of at most ``limit`` distinct keys; the rest count under OTHER."""

    __slots__ = ("limit", "counts")

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
        elif len(counts) < self.limit:
            counts[key] = n
        else:
            counts[OTHER] = counts.get(OTHER, 0) + n

    def most_common(self) -> list[tuple[str, int]]:
        """Every key, largest count first, then by key."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return bool(self.counts)
