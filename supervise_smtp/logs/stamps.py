"""The timestamps log services put in front of each line, turned into UTC.

Each logger stamps differently, and each meant something different:

- multilog ``t``, svlogd ``-t`` (and tai64n): ``@`` and a TAI64N label, 24
  hex digits.  daemontools and runit take the system clock for UTC and add
  10 s (TAI-UTC in 1970, never updated): the label is UNIX time + 10.
  ``tai64nlocal`` takes the 10 back off and calls localtime(), so under
  ``TZ=UTC`` it shows UTC: SCALE_DAEMONTOOLS.
- s6-log ``t`` (skalibs): the same label format, but true TAI, UTC plus the
  leap seconds so far (+37 s since 2017).  ``s6-tai64nlocal`` takes them back
  off with skalibs' leap-second table, showing the inserted second itself as
  ``23:59:60``: SCALE_S6.  Read with the wrong scale, an s6 log is 27 s
  late, a multilog one 27 s early.
- svlogd ``-tt``: ``YYYY-MM-DD_HH:MM:SS.xxxxx``, UTC; ``-ttt`` the same with
  a ``T`` between date and time.
- s6-log ``T``: ``YYYY-MM-DD HH:MM:SS.nnnnnnnnn`` and two spaces, the *local*
  time of the logger's TZ with no offset written: read here in the local
  time of the reader's TZ (the same TZ gives the same instant, as
  ``s6-tai64nlocal`` does), ambiguous in the hour a DST change repeats.
  That is why the shipped s6 log/run stamps with ``t``.
- An ISO 8601 stamp ending in ``Z`` or ``+HH:MM`` says its own offset.

Why no library: a PyPI package for TAI64N is either 2009-era and unaware of
the two scales (tai64n) or reads only TAI-UTC (leapseconddata: GPL-3.0-only,
which an MIT package cannot take, and its standard source fetches from the
network once the system's tzdata ``leap-seconds.list`` has expired, as the
Debian 12 one did in June 2026; a log report must never reach the network).
The conversion itself is a subtraction and a bisect.  The leap seconds are
skalibs' own table, built in as skalibs builds it in; entries that the
system's tzdata ``leap-seconds.list`` (kept current by the distribution)
adds after its last one are taken too.  No leap second has been announced
since 2017, and the CGPM has resolved to stop them by 2035.

Stamps are matched, never guessed: a line whose start is none of these is
unstamped (``KIND_NONE``); one that starts with ``@`` but carries no valid
label is malformed.
"""

from __future__ import annotations

import calendar
import re
import time
from bisect import bisect_right

__all__ = [
    "KIND_ISO",
    "KIND_LOCAL",
    "KIND_NONE",
    "KIND_SVLOGD",
    "KIND_TAI64N",
    "LEAP_SECONDS",
    "SCALES",
    "SCALE_DAEMONTOOLS",
    "SCALE_S6",
    "StampReader",
    "format_utc",
    "leap_table",
    "tai64n_to_unix",
]

SCALE_DAEMONTOOLS = "daemontools"  # multilog, tai64n, svlogd -t: UNIX time + 10 s
SCALE_S6 = "s6"  # s6-log t, s6-tai64n: TAI, UTC + leap seconds
SCALES = (SCALE_DAEMONTOOLS, SCALE_S6)

KIND_TAI64N = "tai64n"
KIND_SVLOGD = "svlogd"  # -tt / -ttt: UTC
KIND_LOCAL = "local"  # s6-log T: local time, no offset
KIND_ISO = "iso"  # ISO 8601 with Z or an offset
KIND_NONE = "none"

_TAI64_BASE = 2**62  # label of 1970-01-01 00:00:00 TAI
_TAI_UTC_1970 = 10  # TAI - UTC when both scales began to be compared

# The UTC midnights (UNIX time) just after each inserted leap second, 1972-2016,
# as skalibs' leapsecs_table holds them (IERS Bulletin C; TAI-UTC is 10 s before
# the first, one more after each).
LEAP_SECONDS = (
    78796800, 94694400, 126230400, 157766400, 189302400, 220924800, 252460800,
    283996800, 315532800, 362793600, 394329600, 425865600, 489024000, 567993600,
    631152000, 662688000, 709948800, 741484800, 773020800, 820454400, 867715200,
    915148800, 1136073600, 1230768000, 1341100800, 1435708800, 1483228800,
)

TZDATA_LEAP_LIST = "/usr/share/zoneinfo/leap-seconds.list"
_NTP_TO_UNIX = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def leap_table(path: str | None = TZDATA_LEAP_LIST) -> tuple[int, ...]:
    """The built-in leap seconds plus any later ones the tzdata list at ``path`` names.

    The list's lines are ``NTP-seconds TAI-UTC``; a line whose offset is one
    more than the line before marks a leap second inserted just before it.
    A missing or unreadable list leaves the built-in table as it is.
    """
    if path is None:
        return LEAP_SECONDS
    extra: list[int] = []
    try:
        with open(path, "rb") as fh:
            previous = None
            for raw in fh:
                fields = raw.split(b"#", 1)[0].split()
                if len(fields) < 2 or not fields[0].isdigit() or not fields[1].isdigit():
                    continue
                when, offset = int(fields[0]) - _NTP_TO_UNIX, int(fields[1])
                if previous is not None and offset == previous + 1 and when > LEAP_SECONDS[-1]:
                    extra.append(when)
                previous = offset
    except OSError:
        pass
    return LEAP_SECONDS + tuple(sorted(extra))


def _thresholds(leaps: tuple[int, ...]) -> list[int]:
    """TAI seconds (label - 2**62) at which each leap second's new offset applies.

    The k-th leap second (k from 1) comes just before UTC midnight M_k; from
    it on TAI-UTC is 10 + k.  The inserted second itself is TAI M_k + 10 + k - 1,
    shown as 23:59:60 of the day before: it belongs to the new offset.
    """
    return [m + _TAI_UTC_1970 + k - 1 for k, m in enumerate(leaps, start=1)]


def tai64n_to_unix(seconds: int, scale: str,
                   thresholds: list[int] | None = None) -> tuple[int, bool]:
    """(UNIX seconds, is the inserted leap second) of a TAI64 label's seconds.

    ``seconds`` is the label's first 16 hex digits as a number.  A leap
    second has the UNIX time of the second before it (POSIX repeats it),
    and True: ``s6-tai64nlocal`` shows it as ``:60``.
    """
    tai = seconds - _TAI64_BASE
    if scale != SCALE_S6:
        return tai - _TAI_UTC_1970, False
    table = _THRESHOLDS if thresholds is None else thresholds
    k = bisect_right(table, tai)
    hit = k > 0 and table[k - 1] == tai
    return tai - _TAI_UTC_1970 - k, hit


_THRESHOLDS = _thresholds(leap_table())


def format_utc(unix: int, nanos: int = 0, leap: bool = False, digits: int = 9,
               sep: str = " ") -> str:
    """``YYYY-MM-DD HH:MM:SS.nnnnnnnnn`` in UTC, as ``tai64nlocal`` prints under TZ=UTC.

    ``leap``: the second is shown as ``:60`` (``s6-tai64nlocal``'s leap second).
    """
    tm = time.gmtime(unix)
    sec = 60 if leap else tm.tm_sec
    text = (f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}{sep}"
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{sec:02d}")
    if digits:
        text += "." + f"{nanos:09d}"[:digits]
    return text


# One match at the start of the line: a TAI64N label, or a date and time
# (svlogd -tt "_", -ttt "T", s6-log T " " with two spaces after, ISO with an
# offset), then the space(s) before the logged text.
_STAMP = re.compile(
    r"@(?:([0-9a-fA-F]{16})([0-9a-fA-F]{8})(?: |$))?"
    r"|(\d{4}-\d\d-\d\d)([ _T])(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
    r"(Z|[+-]\d\d:?\d\d)?( {1,2}|$)"
)


class StampReader:
    """Splits a line into (kind, UTC time or None, the text after the stamp).

    ``kind`` is one of the KIND_* names, or None for a malformed stamp (an
    ``@`` with no valid TAI64N label, an impossible date).  Times are float
    UNIX seconds.  The date and local-time conversions are cached, bounded:
    lines come in time order, so one day (or one local minute) serves many.
    """

    __slots__ = ("scale", "_thresholds", "_days", "_local")

    _CACHE_MAX = 4096

    def __init__(self, scale: str = SCALE_DAEMONTOOLS, leaps: tuple[int, ...] | None = None
                 ) -> None:
        if scale not in SCALES:
            raise ValueError(f"unknown TAI64N scale {scale!r}")
        self.scale = scale
        self._thresholds = _THRESHOLDS if leaps is None else _thresholds(leaps)
        self._days: dict[str, int] = {}  # "YYYY-MM-DD" -> UNIX time of its 00:00 UTC
        self._local: dict[str, int] = {}  # "YYYY-MM-DD HH:MM" -> UNIX time of its :00

    def split(self, line: str) -> tuple[str | None, float | None, str]:
        """(kind, UNIX time, rest) of one line (without its newline)."""
        m = _STAMP.match(line)
        if m is None:
            return KIND_NONE, None, line
        hi = m.group(1)
        if hi is not None:
            unix, _leap = tai64n_to_unix(int(hi, 16), self.scale, self._thresholds)
            nanos = int(m.group(2), 16)
            if nanos > 999999999 or unix >= 2**62:
                return None, None, line
            return KIND_TAI64N, unix + nanos / 1e9, line[m.end():]
        if line[0] == "@":
            return None, None, line
        return self._date(m, line)

    def _date(self, m: re.Match[str], line: str) -> tuple[str | None, float | None, str]:
        date, sep, hh, mm, ss, frac, zone = m.group(3, 4, 5, 6, 7, 8, 9)
        hour, minute, sec = int(hh), int(mm), min(int(ss), 59)  # :60, a leap second
        if hour > 23 or minute > 59:
            return None, None, line
        fraction = int(frac) / 10 ** len(frac) if frac else 0.0
        rest = line[m.end():]
        if zone is None and sep == " ":  # s6-log T: local time, two spaces after
            base = self._local_minute(date, hour, minute)
            if base is None:
                return None, None, line
            return KIND_LOCAL, base + sec + fraction, rest
        day = self._day(date)
        if day is None:
            return None, None, line
        unix = day + hour * 3600 + minute * 60 + sec + fraction
        if zone is None:
            return KIND_SVLOGD, unix, rest
        if zone != "Z":
            offset = (int(zone[1:3]) * 60 + int(zone[-2:])) * 60
            unix -= offset if zone[0] == "+" else -offset
        return KIND_ISO, unix, rest

    def _day(self, date: str) -> int | None:
        days = self._days
        base = days.get(date)
        if base is None:
            y, mo, d = int(date[:4]), int(date[5:7]), int(date[8:10])
            if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1]):
                return None
            if len(days) >= self._CACHE_MAX:
                days.clear()
            base = days[date] = calendar.timegm((y, mo, d, 0, 0, 0, 0, 0, 0))
        return base

    def _local_minute(self, date: str, hour: int, minute: int) -> int | None:
        key = f"{date} {hour}:{minute}"
        cache = self._local
        base = cache.get(key)
        if base is None:
            if self._day(date) is None:
                return None
            y, mo, d = int(date[:4]), int(date[5:7]), int(date[8:10])
            try:
                base = int(time.mktime((y, mo, d, hour, minute, 0, 0, 0, -1)))
            except (OverflowError, ValueError):
                return None
            if len(cache) >= self._CACHE_MAX:
                cache.clear()
            cache[key] = base
        return base
