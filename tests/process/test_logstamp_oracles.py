"""TAI64N to UTC checked against the real converters: daemontools' tai64nlocal, s6-tai64nlocal.

Both run with TZ=UTC, so their "local" time is UTC.  Labels: every leap
second of the table and the seconds around it, the epochs of both scales,
now, and a fixed random spread over 1970-2100 with random nanoseconds.
"""

from __future__ import annotations

import calendar
import os
import random
import subprocess
import time

import pytest
from conftest import need

from supervise_smtp.logs.stamps import (
    LEAP_SECONDS,
    SCALE_DAEMONTOOLS,
    SCALE_S6,
    StampReader,
    format_utc,
    tai64n_to_unix,
)

YEAR_2100 = 4102444800


def _labels(offset_now: int) -> list[tuple[int, int]]:
    """(label seconds, nanoseconds) to convert."""
    rng = random.Random(13)
    tai = [10, 11, 12]  # 1970-01-01 00:00:00 UTC on; s6-tai64nlocal leaves earlier ones as they are
    for k, midnight in enumerate(LEAP_SECONDS):
        around = midnight + 10 + k + 1
        tai += [around + d for d in (-3, -2, -1, 0, 1, 2)]
    tai.append(int(time.time()) + offset_now)
    tai += [rng.randrange(10, YEAR_2100) for _ in range(300)]
    return [(2**62 + t, rng.randrange(0, 10**9)) for t in tai]


def _oracle(program: str, labels: list[tuple[int, int]]) -> list[str]:
    """The program's rendering of each label, in UTC."""
    text = "".join(f"@{s:016x}{n:08x} line {i}\n" for i, (s, n) in enumerate(labels))
    proc = subprocess.run([need(program)], input=text, capture_output=True, text=True,
                          timeout=30, check=True, env={**os.environ, "TZ": "UTC"})
    lines = proc.stdout.splitlines()
    assert len(lines) == len(labels), proc.stdout[-500:]
    out = []
    for i, line in enumerate(lines):
        stamp, _, rest = line.rpartition(" line ")
        assert rest == str(i), line
        out.append(stamp)
    return out


@pytest.mark.parametrize("program, scale, offset", [
    ("tai64nlocal", SCALE_DAEMONTOOLS, 10),
    ("s6-tai64nlocal", SCALE_S6, 37),
])
def test_logstamp_matches_the_real_converter(program, scale, offset):
    """Each label converts to the very second (and nanosecond) the logger's own tool prints."""
    labels = _labels(offset)
    want = _oracle(program, labels)
    got = []
    for seconds, nanos in labels:
        unix, leap = tai64n_to_unix(seconds, scale)
        got.append(format_utc(unix, nanos, leap))
    mismatches = [(f"{s:016x}", w, g) for (s, _), w, g in zip(labels, want, got, strict=True)
                  if w != g]
    assert not mismatches, mismatches[:5]
    if scale == SCALE_S6:
        assert sum(":60." in w for w in want) == len(LEAP_SECONDS)  # the oracle saw them


@pytest.mark.parametrize("program, scale", [("tai64nlocal", SCALE_DAEMONTOOLS),
                                            ("s6-tai64nlocal", SCALE_S6)])
def test_logstamp_reader_agrees_with_the_converter_to_the_microsecond(program, scale):
    """StampReader.split (a float of UNIX seconds) gives the oracle's instant."""
    labels = [(s, n) for s, n in _labels(37) if s - 2**62 > 86400 * 365]
    want = _oracle(program, labels)
    reader = StampReader(scale)
    for (seconds, nanos), text in zip(labels, want, strict=True):
        kind, when, rest = reader.split(f"@{seconds:016x}{nanos:08x} event=x")
        assert rest == "event=x" and when is not None
        date, clock = text.split(" ")
        hh, mm, ss = clock.split(":")
        whole, fraction = ss.split(".")
        sec = min(int(whole), 59)  # :60 is the second before it for POSIX
        base = time.strptime(f"{date} {hh}:{mm}:{sec:02d}", "%Y-%m-%d %H:%M:%S")
        expected = calendar.timegm(base) + int(fraction) / 1e9
        assert when == pytest.approx(expected, abs=2e-6), (text, when)
