"""Log stamps to UTC (supervise_smtp/logs/stamps.py): every logger's format, both TAI64N scales."""

from __future__ import annotations

import calendar
import time

import pytest

from supervise_smtp.logs.stamps import (
    KIND_ISO,
    KIND_LOCAL,
    KIND_NONE,
    KIND_SVLOGD,
    KIND_TAI64N,
    LEAP_SECONDS,
    SCALE_DAEMONTOOLS,
    SCALE_S6,
    StampReader,
    format_utc,
    leap_table,
    tai64n_to_unix,
)

T = calendar.timegm((2026, 11, 29, 17, 26, 8, 0, 0, 0))  # 1795973168


def label(unix: int, offset: int, nanos: int = 0) -> str:
    """A TAI64N label for ``unix`` written by a clock ``offset`` seconds ahead of UTC."""
    return f"@{2**62 + unix + offset:016x}{nanos:08x}"


def test_stamp_multilog_label_is_unix_plus_10():
    """multilog/svlogd -t labels (daemontools) are UNIX time + 10 s, nanoseconds kept."""
    kind, when, rest = StampReader().split(label(T, 10, 500_000_000) + " event=summary x=1")
    assert (kind, rest) == (KIND_TAI64N, "event=summary x=1")
    assert when == pytest.approx(T + 0.5, abs=1e-6)


def test_stamp_s6_label_is_tai_with_37_leap_seconds_now():
    """s6-log t labels are TAI: UTC + 37 s since 2017; daemontools' reading is 27 s late."""
    line = label(T, 37) + " event=summary"
    assert StampReader(SCALE_S6).split(line)[1] == T
    assert StampReader(SCALE_DAEMONTOOLS).split(line)[1] == T + 27


@pytest.mark.parametrize("k", range(len(LEAP_SECONDS)))
def test_stamp_s6_every_leap_second(k):
    """Around each leap second: the second before, the leap (shown :60), the midnight after."""
    midnight = LEAP_SECONDS[k]
    offset_after = 10 + k + 1
    tai = midnight + offset_after  # label seconds - 2**62 at the midnight after
    assert tai64n_to_unix(2**62 + tai, SCALE_S6) == (midnight, False)
    assert tai64n_to_unix(2**62 + tai - 1, SCALE_S6) == (midnight - 1, True)
    assert tai64n_to_unix(2**62 + tai - 2, SCALE_S6) == (midnight - 1, False)
    assert format_utc(midnight - 1, 0, True).endswith("23:59:60.000000000")


def test_stamp_s6_before_the_first_leap_second_is_10():
    """Before 1972-07-01, TAI-UTC is 10 s: both scales agree."""
    for unix in (0, 63072000, 78796799):
        assert tai64n_to_unix(2**62 + unix + 10, SCALE_S6) == (unix, False)
        assert tai64n_to_unix(2**62 + unix + 10, SCALE_DAEMONTOOLS) == (unix, False)


@pytest.mark.parametrize("line, kind, when, rest", [
    ("2026-11-29_17:26:08.23891 event=summary", KIND_SVLOGD, T + 0.23891, "event=summary"),
    ("2026-11-29T17:26:08.24018 event=summary", KIND_SVLOGD, T + 0.24018, "event=summary"),
    ("2026-11-29T17:26:08Z event=x", KIND_ISO, T, "event=x"),
    ("2026-11-29T18:26:08.5+01:00 event=x", KIND_ISO, T + 0.5, "event=x"),
    ("2026-11-29T12:26:08-0500 event=x", KIND_ISO, T, "event=x"),
    ("event=summary verdict=ok", KIND_NONE, None, "event=summary verdict=ok"),
    ("tcpserver: end 2508 status 256", KIND_NONE, None, "tcpserver: end 2508 status 256"),
    ("", KIND_NONE, None, ""),
])
def test_stamp_date_forms(line, kind, when, rest):
    """svlogd -tt and -ttt are UTC; an ISO stamp with an offset says its own; none is none."""
    got_kind, got_when, got_rest = StampReader().split(line)
    assert (got_kind, got_rest) == (kind, rest)
    if when is None:
        assert got_when is None
    else:
        assert got_when == pytest.approx(when, abs=1e-6)


def test_stamp_s6_log_T_is_local_time(monkeypatch):
    """s6-log T writes local time with no offset: read in the reader's TZ, DST included."""
    line = "2026-07-01 19:26:08.237381925  event=summary"
    summer = calendar.timegm((2026, 7, 1, 17, 26, 8, 0, 0, 0))
    for tz, offset in (("Europe/Paris", 2 * 3600), ("UTC", 0), ("America/New_York", -4 * 3600)):
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        kind, when, rest = StampReader().split(line)
        assert (kind, rest) == (KIND_LOCAL, "event=summary")
        assert when == pytest.approx(summer + 2 * 3600 - offset + 0.237381925, abs=1e-6)
    monkeypatch.delenv("TZ")
    time.tzset()


@pytest.mark.parametrize("line", [
    "@400000006b0c603a0e65a9 event=x",  # 22 hex digits
    "@400000006b0c603a0e65a94g event=x",  # not hex
    "@400000006b0c603a0e65a94cevent=x",  # no space after the label
    "@4000000000000000ffffffff event=x",  # nanoseconds over 999,999,999
    "@c00000000000000000000000 event=x",  # label in the reserved range (>= 2**63)
    "@ event=x",
    "2026-02-30_10:00:00.00000 event=x",  # no such day
    "2026-11-29_24:00:00.00000 event=x",  # no such hour
])
def test_stamp_malformed_is_none_kind(line):
    """A broken label or an impossible date is malformed (kind None), never a guess."""
    kind, when, rest = StampReader().split(line)
    assert (kind, when, rest) == (None, None, line)


def test_stamp_leap_table_takes_later_entries_from_tzdata(tmp_path):
    """Leap seconds the system list adds after the built-in table are used; junk is skipped."""
    future = calendar.timegm((2030, 1, 1, 0, 0, 0, 0, 0, 0))
    ntp = 2208988800
    listing = tmp_path / "leap-seconds.list"
    listing.write_text("#@\t4000000000\n# a comment\n"
                       f"{LEAP_SECONDS[-2] + ntp}\t36\t# 1 Jul 2015\n"
                       f"{LEAP_SECONDS[-1] + ntp}\t37\t# 1 Jan 2017\n"
                       "garbage line\n"
                       f"{future + ntp}\t38\t# 1 Jan 2030\n")
    table = leap_table(str(listing))
    assert table == LEAP_SECONDS + (future,)
    assert leap_table(str(tmp_path / "missing")) == LEAP_SECONDS
    reader = StampReader(SCALE_S6, table)
    assert reader.split(label(future, 38) + " x")[1] == future
    assert reader.split(label(future - 1, 37) + " x")[1] == future - 1


def test_stamp_caches_stay_bounded():
    """A log spanning many days or local minutes never grows the caches past their cap."""
    reader = StampReader()
    day0 = calendar.timegm((2000, 1, 1, 0, 0, 0, 0, 0, 0))
    for i in range(StampReader._CACHE_MAX + 50):
        stamp = time.strftime("%Y-%m-%d", time.gmtime(day0 + i * 86400))
        assert reader.split(f"{stamp}_00:00:00.00000 x")[1] == day0 + i * 86400
        reader.split(f"{stamp} 01:{i % 60:02d}:00.000000000  x")
    assert len(reader._days) <= StampReader._CACHE_MAX
    assert len(reader._local) <= StampReader._CACHE_MAX


def test_stamp_unknown_scale_is_refused():
    """Only the two scales exist."""
    with pytest.raises(ValueError):
        StampReader("tai")
