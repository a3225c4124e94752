"""``supervise-smtp report [FILES...]``: what the summary lines say, pflogsumm-style.

Reads log files as multilog, svlogd, s6-log or a plain redirect wrote them
(stdin when no FILES; a log directory is read as its archives in time order,
then ``current``; gzip'd files are read through gzip), takes each line's
timestamp to UTC (logs/stamps.py: ``--tai64n daemontools|s6`` says which clock
made the ``@`` labels), and tallies the ``event=summary`` lines (and the
``event=reject`` codes): totals per verdict, stage and reply code, the remotes
behind each abnormal verdict, queue failures per hour, TLS versions and
ciphers, the messages that may arrive twice, children killed by signals and
qmail-scanner's parent deaths.  Lines that are not ours (tcpserver's,
qmail's) and lines that do not parse are counted and skipped, never fatal.

Bounded whatever the log holds: per-remote tables are TopK sketches
(topk.py), every other table is capped; a million distinct remotes cost the
same memory as a thousand.  Output: report_text.py renders the same tables
that ``--json`` prints as one object (``tables()``).

Filters: ``--since``/``--until`` (UTC; a line without a timestamp is then
left out), ``--remote`` (addresses or networks), ``--verdict`` (names, or a
prefix with ``*``).  With ``--verdict``, lines other than summaries are left
out (a reject line does not know the verdict its connection will get).

Exit codes: 0 report written, 100 usage (or an input that does not exist),
111 an input could not be read.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime

from supervise_smtp.errors import EXIT_TEMP, UsageError
from supervise_smtp.logs.inputs import Inputs, expand
from supervise_smtp.logs.parse import FOREIGN, MALFORMED, parse_event
from supervise_smtp.logs.stamps import (
    KIND_NONE,
    KIND_TAI64N,
    SCALE_DAEMONTOOLS,
    SCALE_S6,
    SCALES,
    StampReader,
)
from supervise_smtp.logs.tally import CHILD_SIGNALS, OTHER, duplicate_risk, tally
from supervise_smtp.logs.topk import Capped, TopK
from supervise_smtp.session.diagnose import VERDICTS

__all__ = ["ABNORMAL", "Filters", "Tally", "main", "parse_args", "parse_time"]

USAGE = ("usage: supervise-smtp report [--since T] [--until T] [--remote ADDR[/LEN]] "
         "[--verdict NAME] [--tai64n daemontools|s6] [--top N] [--json] [FILES...]")

# The verdicts that get a table of remotes, most telling first: bare_lf is the
# broken mailer to contact.  ok and stopped (an operator's signal) get none.
ABNORMAL = ("bare_lf", "server_crashed", "timeout", "tls_failed", "queue_perm_fail",
            "queue_temp_fail", *(v for v in VERDICTS if v.startswith("client_lost_after_")),
            "rejected", "wrapper_error", "unknown")
_ABNORMAL = frozenset(ABNORMAL)
# The senders whose messages --bare-lf fix rewrote (notes=bare_lf_fixed on the
# summary): delivered, yet exactly the partners to contact, next to bare_lf.
BARE_LF_FIXED = "bare_lf_fixed"
REMOTE_TABLES = (ABNORMAL[0], BARE_LF_FIXED, *ABNORMAL[1:])
QUEUE_FAILURES = ("queue_temp_fail", "queue_perm_fail")
_REPLY_CODE = re.compile(r"[2-5]\d\d")
_TOP_CAPACITY = 500  # remotes tracked exactly per verdict before the sketch drops any
_RELATIVE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """UNIX time of ``--since``/``--until``: ISO 8601 (UTC unless it says), or ``N[smhd]`` ago."""
    rel = _RELATIVE.fullmatch(text)
    if rel:
        return (time.time() if now is None else now) - int(rel.group(1)) * _UNITS[rel.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("_", "T"))
    except ValueError:
        raise UsageError(f"bad time {text!r}: give 2026-11-29, 2026-11-29T17:00, "
                         "2026-11-29T17:00:00+01:00 or 24h, 7d (ago)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class Filters:
    """Which lines count: a time window, remote addresses or networks, verdicts."""

    def __init__(self, since: float | None = None, until: float | None = None,
                 remotes: list[str] | None = None, verdicts: list[str] | None = None) -> None:
        self.since = since
        self.until = until
        self.networks = [ipaddress.ip_network(r, strict=False) for r in remotes or ()]
        self.verdicts = frozenset(v for v in verdicts or () if not v.endswith("*"))
        self.prefixes = tuple(v[:-1] for v in verdicts or () if v.endswith("*"))
        self._remote_cache: dict[str, bool] = {}

    @property
    def timed(self) -> bool:
        return self.since is not None or self.until is not None

    def in_window(self, when: float | None) -> bool:
        if when is None:
            return not self.timed
        return ((self.since is None or when >= self.since)
                and (self.until is None or when < self.until))

    def remote_ok(self, remote: str | None) -> bool:
        if not self.networks:
            return True
        if remote is None:
            return False
        cache = self._remote_cache
        hit = cache.get(remote)
        if hit is None:
            try:
                addr = ipaddress.ip_address(remote)
            except ValueError:
                hit = False
            else:
                hit = any(addr.version == n.version and addr in n for n in self.networks)
            if len(cache) >= 4096:
                cache.clear()
            cache[remote] = hit
        return hit

    def verdict_ok(self, verdict: str) -> bool:
        if not self.verdicts and not self.prefixes:
            return True
        return verdict in self.verdicts or verdict.startswith(self.prefixes or ("\0",))


class Tally:
    """Every count of the report; ``feed`` lines in, ``tables()`` out."""

    def __init__(self, filters: Filters | None = None, scale: str = SCALE_DAEMONTOOLS,
                 top: int = 10) -> None:
        self.filters = filters or Filters()
        self.stamps = StampReader(scale)
        self.scale = scale
        self.top = top
        self.lines = 0
        self.summaries = 0
        self.events = Capped(64)  # our other lines, by event name
        self.foreign = 0
        self.malformed = 0
        self.out_of_window = 0
        self.filtered = 0
        self.stamp_kinds: dict[str, int] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.verdicts = Capped(128)
        self.stages = Capped(64)
        self.reply_codes = Capped(64)
        self.refusal_codes = Capped(64)
        capacity = max(_TOP_CAPACITY, 50 * top)
        self.remotes = {v: TopK(capacity) for v in REMOTE_TABLES}
        self.queue_hours: dict[int | None, list[int]] = {}
        self.queue_meanings = Capped(64)
        self.tls = 0
        self.tls_versions = Capped(32)
        self.tls_ciphers = Capped(128)
        self.duplicates = {"yes": 0, "unknown": 0}
        self.duplicate_rows: deque[dict[str, object]] = deque(maxlen=max(top, 1))
        self.signals = Capped(64)
        self.cores = 0
        self.exits = Capped(64)
        self.parent_died = Capped(64)  # by verdict
        self.queue_signals = Capped(64)
        self.log_dropped = 0

    # -- reading ------------------------------------------------------------

    def feed(self, lines: Iterable[str]) -> None:
        """Tally each line of an iterable of text lines (no line ends)."""
        split = self.stamps.split
        filters = self.filters
        timed = filters.timed
        in_window = filters.in_window
        kinds = self.stamp_kinds
        for line in lines:
            self.lines += 1
            kind, when, text = split(line)
            if kind is None:
                self.malformed += 1
                continue
            kinds[kind] = kinds.get(kind, 0) + 1
            if timed and not in_window(when):
                self.out_of_window += 1
                continue
            fields = parse_event(text)
            if fields is FOREIGN:
                self.foreign += 1
                continue
            if fields is MALFORMED or not isinstance(fields, dict):
                self.malformed += 1
                continue
            if self._event(fields, when):
                if when is not None:
                    if self.first is None or when < self.first:
                        self.first = when
                    if self.last is None or when > self.last:
                        self.last = when

    def _event(self, f: dict[str, str], when: float | None) -> bool:
        """Count one of our lines; False when a filter leaves it out or it is malformed."""
        filters = self.filters
        event = f["event"]
        if event == "summary":
            verdict = f.get("verdict")
            if not verdict:
                self.malformed += 1
                return False
            if not filters.verdict_ok(verdict) or not filters.remote_ok(f.get("remote")):
                self.filtered += 1
                return False
            self._summary(f, verdict, when)
            return True
        if filters.verdicts or filters.prefixes or not filters.remote_ok(f.get("remote")):
            self.filtered += 1
            return False
        self.events.add(event)
        if event == "reject":
            code = f.get("code", "")
            if _REPLY_CODE.fullmatch(code):
                self.refusal_codes.add(code)
        return True

    def _summary(self, f: dict[str, str], verdict: str, when: float | None) -> None:
        get = f.get
        self.summaries += 1
        self.verdicts.add(verdict)
        self.stages.add(get("stage") or "(none)")
        last_reply = get("last_reply")
        code = last_reply[:3] if last_reply else ""
        self.reply_codes.add(code if _REPLY_CODE.fullmatch(code) else "(none)")
        remote = get("remote") or "(none)"
        helo, domain = get("helo_name"), get("mail_from_domain")
        tables = [verdict] if verdict in _ABNORMAL else []
        if BARE_LF_FIXED in (get("notes") or "").split(","):
            tables.append(BARE_LF_FIXED)  # delivered, but only because we rewrote it
        if tables:
            details = {}
            if helo:
                details["helo_name"] = helo
            if domain:
                details["mail_from_domain"] = domain
            for table in tables:
                self.remotes[table].add(remote, when, details)
        if verdict in QUEUE_FAILURES:
            hour = None if when is None else int(when // 3600)
            row = self.queue_hours.get(hour)
            if row is None:
                row = self.queue_hours[hour] = [0, 0]
            row[QUEUE_FAILURES.index(verdict)] += 1
            self.queue_meanings.add(get("queue") or "(none)")
        if get("tls") == "true":
            self.tls += 1
            self.tls_versions.add(get("tls_version") or "(none)")
            self.tls_ciphers.add(get("tls_cipher") or "(none)")
        queued = duplicate_risk(f)
        if queued is not None:
            self.duplicates[queued] += 1
            self.duplicate_rows.append({
                "time": when, "remote": remote, "pid": get("pid"), "verdict": verdict,
                "queued": queued, "queue_pid": get("queue_pid"), "helo_name": helo,
                "mail_from_domain": domain})
        counted = tally(f)  # what the metrics count of this line: one reading for both
        child = counted.child  # qmail-smtpd's signal name or exit code, as a label
        if child in CHILD_SIGNALS or (child == OTHER and get("signal")):
            self.signals.add(child)
            if get("core") == "true":
                self.cores += 1
        elif child is not None and child != "0":
            self.exits.add(child)
        if counted.parent_died:
            self.parent_died.add(verdict)
        queue_signal = get("queue_signal")
        if queue_signal:
            self.queue_signals.add(queue_signal)
        self.log_dropped += counted.log_dropped

    # -- the tables ---------------------------------------------------------

    def tables(self, files: int = 0, read_errors: list[str] | None = None,
               notes: list[str] | None = None) -> dict[str, object]:
        """Every table, as plain data: what --json prints and the text is made of."""
        top = self.top
        remotes: dict[str, object] = {}
        for verdict in REMOTE_TABLES:
            sketch = self.remotes[verdict]
            if not sketch.total:
                continue
            remotes[verdict] = {
                "connections": sketch.total,
                "exact": sketch.exact,
                "top": [{"remote": key, "count": e.count, "error": e.error,
                         "first_seen": iso(e.first), "last_seen": iso(e.last),
                         "helo_name": e.details.get("helo_name"),
                         "mail_from_domain": e.details.get("mail_from_domain")}
                        for key, e in sketch.top(top)],
            }
        hours = []
        for hour in sorted(self.queue_hours, key=lambda h: (h is None, h or 0)):
            temp, perm = self.queue_hours[hour]
            hours.append({"hour": None if hour is None else iso(hour * 3600.0, "%Y-%m-%dT%H:00Z"),
                          "queue_temp_fail": temp, "queue_perm_fail": perm})
        return {
            "input": {
                "files": files, "lines": self.lines, "summaries": self.summaries,
                "events": self.events.total(), "foreign": self.foreign,
                "malformed": self.malformed, "out_of_window": self.out_of_window,
                "filtered": self.filtered, "read_errors": list(read_errors or ()),
                "notes": list(notes or ()),
                "stamps": dict(sorted(self.stamp_kinds.items())),
                "unstamped": self.stamp_kinds.get(KIND_NONE, 0),
            },
            "tai64n": self.scale,
            "first_seen": iso(self.first),
            "last_seen": iso(self.last),
            "verdicts": dict(self.verdicts.most_common()),
            "stages": dict(self.stages.most_common()),
            "reply_codes": dict(self.reply_codes.most_common()),
            "refusal_codes": dict(self.refusal_codes.most_common()),
            "events": dict(self.events.most_common()),
            "top_remotes": remotes,
            "queue_failures_per_hour": hours,
            "queue_failure_meanings": dict(self.queue_meanings.most_common()),
            "tls": {"connections": self.tls,
                    "versions": dict(self.tls_versions.most_common()),
                    "ciphers": dict(self.tls_ciphers.most_common())},
            "duplicate_risk": {
                "queued_yes_reply_not_delivered": self.duplicates["yes"],
                "queued_unknown": self.duplicates["unknown"],
                "recent": [{**row, "time": iso(row["time"])}  # type: ignore[arg-type]
                           for row in self.duplicate_rows],
            },
            "child": {"signals": dict(self.signals.most_common()), "cores": self.cores,
                      "exits": dict(self.exits.most_common()),
                      "parent_died": self.parent_died.total(),
                      "parent_died_by_verdict": dict(self.parent_died.most_common()),
                      "queue_signals": dict(self.queue_signals.most_common())},
            "log_dropped": self.log_dropped,
        }


# A log service writes each line the moment it stamps it, so a file's
# modification time is its last label's instant.  A label read with the other
# scale is off by TAI-UTC - 10 (27 s since 2017): a hint, never a decision.
_SCALE_HINT_S = (20.0, 35.0)


def scale_notes(tails: list[tuple[str, float, str]], scale: str) -> list[str]:
    """A note for each file whose last TAI64N label, read with ``scale``, looks
    like the other logger's clock next to the file's modification time."""
    reader = StampReader(scale)
    other = SCALE_S6 if scale == SCALE_DAEMONTOOLS else SCALE_DAEMONTOOLS
    low, high = _SCALE_HINT_S
    notes = []
    for path, mtime, line in tails:
        kind, when, _ = reader.split(line)
        if kind != KIND_TAI64N or when is None:
            continue
        ahead = when - mtime if scale == SCALE_DAEMONTOOLS else mtime - when
        if low <= ahead <= high:
            writer = "s6-log t" if other == SCALE_S6 else "multilog or svlogd"
            notes.append(f"{path}: its last label reads {abs(when - mtime):.0f} s from the "
                         f"file's mtime: written by {writer}? try --tai64n {other}")
    return notes


def iso(when: float | None, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str | None:
    """UTC ISO 8601 text of a UNIX time, or None."""
    if when is None:
        return None
    return time.strftime(fmt, time.gmtime(when))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} ({USAGE})")


def _split(values: list[str] | None) -> list[str]:
    return [v for value in values or () for v in value.split(",") if v]


def parse_args(args: list[str]) -> argparse.Namespace:
    """The command line, checked: UsageError (exit 100) for anything wrong."""
    p = _Parser(prog="supervise-smtp report", add_help=False, allow_abbrev=False)
    p.add_argument("files", nargs="*")
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--remote", action="append")
    p.add_argument("--verdict", action="append")
    p.add_argument("--tai64n", choices=SCALES, default=SCALE_DAEMONTOOLS)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(args)
    if ns.help:
        return ns
    if not 1 <= ns.top <= 1000:
        raise UsageError(f"--top must be 1 to 1000 ({USAGE})")
    ns.remote = _split(ns.remote)
    for remote in ns.remote:
        try:
            ipaddress.ip_network(remote, strict=False)
        except ValueError:
            raise UsageError(f"--remote {remote!r} is not an address or network") from None
    ns.verdict = _split(ns.verdict)
    for verdict in ns.verdict:
        known = (any(v.startswith(verdict[:-1]) for v in VERDICTS) if verdict.endswith("*")
                 else verdict in VERDICTS)
        if not known:
            raise UsageError(f"--verdict {verdict!r}: no such verdict (see docs/verdicts.md)")
    ns.since_t = parse_time(ns.since) if ns.since else None
    ns.until_t = parse_time(ns.until) if ns.until else None
    return ns


HELP = f"""{USAGE}

Reads supervise-smtp's log (multilog, svlogd, s6-log or plain lines; stdin
when no FILES; a log directory in time order, archives then current; .gz
read as gzip) and prints totals per verdict, stage and reply code, the
remotes behind each abnormal verdict (bare_lf first), queue failures per
hour, TLS versions and ciphers, the messages that may arrive twice, child
signals and qmail-scanner parent deaths.  Other programs' lines and broken
lines are counted and skipped.

  --since T, --until T   only lines stamped in [since, until): ISO 8601, UTC
                         unless an offset is given (2026-11-29T17:00), or
                         N[smhd] ago (24h); lines without a stamp are left out
  --remote A[/LEN]       only these addresses or networks (repeat, or a,b)
  --verdict NAME         only these verdicts; client_lost_after_* for a prefix
  --tai64n daemontools|s6
                         the clock of @tai64n labels: multilog, svlogd -t and
                         tai64n write UNIX time + 10 s (daemontools, the
                         default); s6-log t writes TAI (UTC + 37 s): give s6
  --top N                rows per table of remotes (default 10)
  --json                 one JSON object with the same tables

exit: 0 report written, 100 usage or no such file, 111 an input unreadable.
"""


def main(args: list[str]) -> int:
    """``supervise-smtp report``: 0; 111 when an input could not be read (after the
    report of the others); UsageError (100)."""
    ns = parse_args(args)
    if ns.help:
        sys.stdout.write(HELP)
        return 0
    paths = expand(ns.files)
    filters = Filters(ns.since_t, ns.until_t, ns.remote, ns.verdict)
    tally = Tally(filters, ns.tai64n, ns.top)
    inputs = Inputs(paths)
    tally.feed(inputs.lines())
    for error in inputs.read_errors:
        sys.stderr.write(f"supervise-smtp report: unable to read {error}\n")
    notes = scale_notes(inputs.tails, ns.tai64n)
    for note in notes:
        sys.stderr.write(f"supervise-smtp report: note: {note}\n")
    tables = tally.tables(inputs.files, inputs.read_errors, notes)
    if ns.json:
        sys.stdout.write(json.dumps(tables, indent=1) + "\n")
    else:
        from supervise_smtp.logs.report_text import render

        sys.stdout.write(render(tables))
    return EXIT_TEMP if inputs.read_errors else 0  # what could be read is reported
