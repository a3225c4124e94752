"""report over logs written by the real loggers: multilog, svlogd -t/-tt/-ttt, s6-log t/T.

The same lines go through each logger into its own directory; the report
must find the same counts in each, and put the lines at the wall-clock time
they were written (UTC), which proves each stamp is read as its logger meant
it: s6-log t's labels as TAI, multilog's and svlogd -t's as UNIX + 10 s,
svlogd -tt as UTC, s6-log T as the local time of the TZ both share.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import need
from helpers import wrapper_argv

from supervise_smtp.session.output import format_json, format_logfmt

pytestmark = pytest.mark.e2e

LINES = b"".join([
    b"tcpserver: status: 1/100\n",
    b"tcpserver: pid 4100 from 192.0.2.7\n",
    format_logfmt({"event": "bare_lf", "remote": "192.0.2.7", "pid": 4100, "line": 2}),
    format_logfmt({"event": "summary", "remote": "192.0.2.7", "pid": 4100, "verdict": "bare_lf",
                   "stage": "data_body", "helo_name": "mx.broken.example",
                   "mail_from_domain": "broken.example", "reason": "451 smtplf after 1 bare LF",
                   "last_reply": "451 See http://pobox.com/~djb/docs/smtplf.html.", "exit": 1}),
    b"tcpserver: end 4100 status 256\n",
    format_json({"event": "summary", "remote": "192.0.2.8", "pid": 4102, "verdict": "ok",
                 "stage": "quit", "tls": True, "tls_version": "TLSv1.3", "exit": 0}),
    b'event=summary remote=192.0.2.9 pid=4104 verdict=ok reason="cut by a crash\n',
    format_logfmt({"event": "summary", "remote": "192.0.2.10", "pid": 4106,
                   "verdict": "client_lost_after_data_end", "stage": "data_end",
                   "queued": "yes", "reply_delivered": "no", "exit": 1}),
])

# logger -> (argv before the directory, --tai64n, the stamp kind the report counts)
LOGGERS = {
    "multilog t": (["multilog", "t"], "daemontools", "tai64n"),
    "svlogd -t": (["svlogd", "-t"], "daemontools", "tai64n"),
    "svlogd -tt": (["svlogd", "-tt"], "daemontools", "svlogd"),
    "svlogd -ttt": (["svlogd", "-ttt"], "daemontools", "svlogd"),
    "s6-log t": (["s6-log", "t"], "s6", "tai64n"),
    "s6-log T": (["s6-log", "T"], "daemontools", "local"),
}
ENV = {**os.environ, "TZ": "Europe/Paris"}  # s6-log T's local time is not UTC here


def _write(logger: str, logdir: Path) -> tuple[float, float]:
    """Feed LINES through the logger into logdir; the wall-clock span it took."""
    argv, _, _ = LOGGERS[logger]
    need(argv[0])
    logdir.mkdir()  # svlogd does not make it
    before = time.time()
    subprocess.run([*argv, str(logdir)], input=LINES, env=ENV, timeout=30, check=True,
                   capture_output=True)
    return before, time.time()


def _report(*args: str) -> dict[str, object]:
    proc = subprocess.run([*wrapper_argv(), "report", "--json", *args], env=ENV,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [f"supervise-smtp report: note: {n}" for n in doc["input"]["notes"]] == (
        proc.stderr.splitlines())
    return doc


def _utc(iso: object) -> int:
    return calendar.timegm(time.strptime(str(iso), "%Y-%m-%dT%H:%M:%SZ"))


@pytest.mark.parametrize("logger", LOGGERS)
def test_report_reads_what_the_real_logger_wrote(logger, tmp_path):
    """Exact counts, and the lines placed at the UTC second they were logged."""
    logdir = tmp_path / "main"
    before, after = _write(logger, logdir)
    _, scale, kind = LOGGERS[logger]
    doc = _report("--tai64n", scale, str(logdir))
    assert doc["input"] == {
        "files": 1, "lines": 8, "summaries": 3, "events": 1, "foreign": 3, "malformed": 1,
        "out_of_window": 0, "filtered": 0, "read_errors": [], "notes": [],
        "stamps": {kind: 8}, "unstamped": 0}
    assert doc["verdicts"] == {"bare_lf": 1, "client_lost_after_data_end": 1, "ok": 1}
    [row] = doc["top_remotes"]["bare_lf"]["top"]
    assert (row["remote"], row["helo_name"], row["mail_from_domain"]) == (
        "192.0.2.7", "mx.broken.example", "broken.example")
    assert doc["tls"]["versions"] == {"TLSv1.3": 1}
    assert doc["duplicate_risk"]["queued_yes_reply_not_delivered"] == 1
    first, last = _utc(doc["first_seen"]), _utc(doc["last_seen"])
    assert int(before) <= first <= last <= int(after) + 1, (before, first, last, after)


def test_report_s6_labels_read_with_the_wrong_scale_are_27_seconds_late(tmp_path):
    """The same s6-log t directory read as daemontools' labels: TAI-UTC (37) minus 10."""
    logdir = tmp_path / "main"
    _write("s6-log t", logdir)
    right = _report("--tai64n", "s6", str(logdir))
    wrong = _report(str(logdir))  # the default scale: daemontools
    assert _utc(wrong["first_seen"]) - _utc(right["first_seen"]) == 27
    # the file's mtime gives the clock away: a note, not a decision
    [note] = wrong["input"]["notes"]
    assert note.startswith(f"{logdir / 'current'}: its last label reads 27 s from the file's "
                           "mtime: written by s6-log t? try --tai64n s6"), note
    assert right["input"]["notes"] == []


def test_report_multilog_read_as_s6_gets_the_opposite_note(tmp_path):
    """multilog's labels read as TAI: 27 s early, and the note names the other scale."""
    logdir = tmp_path / "main"
    _write("multilog t", logdir)
    [note] = _report("--tai64n", "s6", str(logdir))["input"]["notes"]
    assert note.endswith("written by multilog or svlogd? try --tai64n daemontools"), note
