"""metrics.py and metrics_record.py: summaries and records to exact counters.

Every check reads the exposition back with prometheus-client's own parser
(``text_string_to_metric_families``), as a Prometheus server would read it,
never the Metrics object's internals.  Summary lines are made by output.py
and read back by logparse.py, as collect does; records go through
``record`` -> bytes -> ``observe_record``, as serve's worker and parent do.
"""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from supervise_smtp.logs.metrics import DURATION_BUCKETS_S, Metrics
from supervise_smtp.logs.parse import parse_event
from supervise_smtp.logs.tally import (
    CHILD_SIGNALS,
    MAX_RECORD_BYTES,
    QUEUE_CLASSES,
    REPLY_CODES,
    parse_record,
    record,
    tally,
)
from supervise_smtp.session.diagnose import STAGES, VERDICTS
from supervise_smtp.session.output import format_json, format_logfmt

BARE_LF = {  # docs/verdicts.md's field-report example, as the session builds it
    "event": "summary", "remote": "10.0.0.7", "pid": 17617, "verdict": "bare_lf",
    "child_pid": 17618, "stage": "data_body", "reason": "451 smtplf after 5 bare LF",
    "ehlo": "1", "mail": "1", "rcpt": "1", "data": "0/1", "commands": "3/4",
    "bytes_in": 148, "bytes_out": 151, "tls": False, "queued": "no", "bare_lf": 5,
    "bare_lf_line": 1, "queue": "parent_died", "queue_pid": 17659,
    "last_reply": b"451 See http://pobox.com/~djb/docs/smtplf.html.", "duration_ms": 111,
    "exit": 1,
}
QUEUED = {
    "event": "summary", "remote": "10.0.0.8", "pid": 4242, "verdict": "ok", "stage": "quit",
    "bytes_in": 1000, "bytes_out": 300, "queued": "yes", "reply_delivered": "yes",
    "queue_pid": 5678, "queue_exit": 0, "rejects": 2, "last_reply": b"221 fake.example",
    "log_dropped": 3, "duration_ms": 2600, "exit": 0,
}
CRASHED = {
    "event": "summary", "verdict": "server_crashed", "stage": "mail", "bytes_in": 40,
    "bytes_out": 90, "last_reply": b"250 ok", "duration_ms": 0, "signal": "SIGSEGV",
    "core": False,
}


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the exposition, read by prometheus-client."""
    text = metrics.exposition().decode("utf-8")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def nonzero(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples that are not 0, without the histogram's buckets."""
    return {k: v for k, v in samples(metrics).items()
            if v and not k[0].endswith("_bucket")}


def line_fields(fields: dict[str, object], fmt=format_logfmt) -> dict[str, str]:
    """The fields as collect sees them: written by output.py, read by logparse.py."""
    parsed = parse_event(fmt(fields).decode("ascii").rstrip("\n"))
    assert isinstance(parsed, dict)
    return parsed


def test_metrics_observe_counts_each_field_exactly():
    """Three summary lines give exactly these counters, and nothing else moves."""
    m = Metrics()
    for fields in (BARE_LF, QUEUED, CRASHED):
        m.observe(line_fields(fields))
    assert nonzero(m) == {
        ("supervise_smtp_connections_total", (("stage", "data_body"), ("verdict", "bare_lf"))): 1,
        ("supervise_smtp_connections_total", (("stage", "quit"), ("verdict", "ok"))): 1,
        ("supervise_smtp_connections_total",
         (("stage", "mail"), ("verdict", "server_crashed"))): 1,
        ("supervise_smtp_replies_total", (("code", "451"),)): 1,
        ("supervise_smtp_replies_total", (("code", "2xx"),)): 2,
        ("supervise_smtp_rejects_total", ()): 2,
        ("supervise_smtp_bare_lf_total", ()): 1,
        ("supervise_smtp_queue_exit_total", (("class", "success"),)): 1,
        ("supervise_smtp_child_exit_total", (("status", "1"),)): 1,
        ("supervise_smtp_child_exit_total", (("status", "0"),)): 1,
        ("supervise_smtp_child_exit_total", (("status", "SIGSEGV"),)): 1,
        ("supervise_smtp_scanner_parent_died_total", (("verdict", "bare_lf"),)): 1,
        ("supervise_smtp_bytes_total", (("direction", "in"),)): 1188,
        ("supervise_smtp_bytes_total", (("direction", "out"),)): 541,
        ("supervise_smtp_session_duration_seconds_count", ()): 3,
        ("supervise_smtp_session_duration_seconds_sum", ()): pytest.approx(2.711),
        ("supervise_smtp_log_dropped_total", ()): 3,
    }
    buckets = {dict(k[1])["le"]: v for k, v in samples(m).items()
               if k[0] == "supervise_smtp_session_duration_seconds_bucket"}
    assert buckets["0.025"] == 1 and buckets["0.1"] == 1 and buckets["0.25"] == 2
    assert buckets["2.5"] == 2 and buckets["5.0"] == 3 and buckets["+Inf"] == 3
    assert len(buckets) == len(DURATION_BUCKETS_S) + 1


def test_metrics_json_lines_count_as_logfmt_lines():
    """A --format json summary counts exactly as the same summary in logfmt."""
    a, b = Metrics(), Metrics()
    for fields in (BARE_LF, QUEUED, CRASHED):
        a.observe(line_fields(fields))
        b.observe(line_fields(fields, format_json))
    assert samples(a) == samples(b)


def test_metrics_alerted_series_exist_at_zero_before_any_line():
    """The series the alert rules watch are there at 0 from the start (an increase
    from 0 to 1 is seen; a series that appears at 1 is not)."""
    s = samples(Metrics())
    for stage in (*STAGES, "quit"):
        for verdict in ("server_crashed", "wrapper_error"):
            key = ("supervise_smtp_connections_total", (("stage", stage), ("verdict", verdict)))
            assert s[key] == 0
    for cls in QUEUE_CLASSES:
        assert s[("supervise_smtp_queue_exit_total", (("class", cls),))] == 0
    assert s[("supervise_smtp_log_dropped_total", ())] == 0
    assert s[("supervise_smtp_summaries_unreadable_total", ())] == 0
    assert not any(name.startswith("supervise_smtp_serve_") for name, _ in s)
    assert not any(name.endswith("_created") for name, _ in s)


@pytest.mark.parametrize("fields, cls", [
    ({"queued": "yes", "queue_exit": "0"}, "success"),
    ({"queued": "yes"}, "success"),  # 250 without a qp: accepted all the same
    ({"queued": "no", "queue_exit": "31", "queue": "perm_rejected"}, "permanent"),
    ({"queued": "no", "queue_exit": "11"}, "permanent"),
    ({"queued": "no", "queue_exit": "53", "queue": "disk_full"}, "temporary"),
    ({"queued": "no", "queue_exit": "81"}, "temporary"),
    ({"queued": "no", "queue": "qq_temporary", "verdict": "queue_temp_fail"}, "temporary"),
    ({"queued": "no", "queue": "qq_permanent", "verdict": "queue_perm_fail"}, "permanent"),
    ({"queued": "no", "verdict": "queue_perm_fail"}, "permanent"),  # a scanner's own 554 text
    ({"queued": "no", "queue": "crashed", "verdict": "queue_temp_fail"}, "signal"),
    ({"queued": "no", "queue_signal": "SIGKILL", "queue_exit": None}, "signal"),
    ({"queued": "unknown"}, "unknown"),  # '.' sent, no reply came
    ({"queued": "no", "verdict": "bare_lf", "queue": "parent_died"}, None),  # never ended
    ({"verdict": "ok"}, None),  # no message at all
])
def test_metrics_queue_class_from_summary_fields(fields, cls):
    """The queue program's fate: qmail-queue's exit classes, else the reply, else none."""
    fields = {k: v for k, v in fields.items() if v is not None}
    assert tally(fields).queue == cls


@pytest.mark.parametrize("reply, label", [
    ("221 fake.example", "2xx"), ("250 ok 1234 qp 5678", "2xx"), ("354 go ahead", "3xx"),
    ("421 unable to read controls (#4.3.0)", "421"), ("451 timeout (#4.4.2)", "451"),
    ("450 mailbox busy", "4xx"), ("502 unimplemented (#5.5.1)", "502"),
    ("503 MAIL first (#5.5.1)", "503"), ("552 sorry, that message size exceeds", "552"),
    ("553 sorry, that domain isn't in my list", "553"), ("554 qq permanent problem", "554"),
    ("535 authorization failed", "5xx"), ("250-first line", "2xx"), ("250", "2xx"),
    ("999 what", "other"), ("25 short", "other"), ("abc", "other"), ("2500 ok", "other"),
    ("", None),
])
def test_metrics_reply_code_label_is_class_or_qmail_code(reply, label):
    """last_reply's code: the class, qmail-smtpd's own codes kept, junk 'other'."""
    assert tally({"last_reply": reply}).code == label
    assert set(REPLY_CODES) == {"421", "451", "502", "503", "552", "553", "554"}


@pytest.mark.parametrize("fields, label", [
    ({"exit": "0"}, "0"), ({"exit": 1}, "1"), ({"exit": "255"}, "255"),
    ({"exit": "256"}, "other"), ({"exit": "-1"}, "other"), ({"exit": "unknown"}, "unknown"),
    ({"signal": "SIGKILL", "core": "false"}, "SIGKILL"), ({"signal": "SIG34"}, "SIG34"),
    ({"signal": "SIGRTMIN"}, "SIGRTMIN"), ({"signal": "SIGFOO"}, "other"),
    ({"signal": "SIG99"}, "other"), ({}, None),
])
def test_metrics_child_status_label_is_exit_code_or_signal_name(fields, label):
    """qmail-smtpd's status label: an exit code 0-255 or a real signal's name only."""
    assert tally(fields).child == label


text_values = st.one_of(
    st.none(), st.integers(-5, 10 ** 16), st.booleans(),
    st.text(max_size=40), st.binary(max_size=40),
    st.sampled_from([*VERDICTS, *STAGES, "quit", "yes", "no", "unknown", "parent_died",
                     "crashed", "disk_full", "SIGSEGV", "SIG12", "451 qq", "221 bye"]),
)
summary_keys = st.sampled_from([
    "verdict", "stage", "last_reply", "queue", "queue_exit", "queue_signal", "queued",
    "exit", "signal", "bare_lf", "rejects", "bytes_in", "bytes_out", "duration_ms",
    "log_dropped", "remote", "reason", "reply_delivered",
])
summaries = st.dictionaries(summary_keys, text_values, max_size=17)


@settings(max_examples=150, deadline=None)
@given(summaries)
def test_metrics_record_counts_exactly_what_observe_counts(fields):
    """Whatever the fields, the worker's record read back by the parent counts exactly
    what counting the fields directly does; the record is one short ASCII line."""
    rec = record(fields)
    assert rec.endswith(b"\n") and rec.count(b"\n") == 1 and rec.isascii()
    assert len(rec) < MAX_RECORD_BYTES < 4096
    assert parse_record(rec) == tally(fields)
    direct, via_record = Metrics(), Metrics()
    direct.observe(fields)
    assert via_record.observe_record(rec) == 1
    assert samples(direct) == samples(via_record)


@settings(max_examples=100, deadline=None)
@given(summaries)
def test_metrics_labels_stay_in_their_fixed_sets(fields):
    """No field value, however odd, makes a label value outside the documented sets."""
    m = Metrics()
    m.observe(fields)
    allowed = {
        "verdict": {*VERDICTS, "other"},
        "stage": {*STAGES, "quit", "other"},
        "code": {"2xx", "3xx", "4xx", "5xx", *REPLY_CODES, "other"},
        "class": set(QUEUE_CLASSES),
        "status": {str(n) for n in range(256)} | CHILD_SIGNALS | {"unknown", "other"},
        "direction": {"in", "out"},
    }
    for (name, labels), _ in samples(m).items():
        for key, value in labels:
            if key != "le":
                assert value in allowed[key], (name, key, value)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=6))
def test_metrics_observe_record_survives_garbage_and_any_cut(garbage, cuts):
    """Garbage between valid records never raises and never hides a valid record,
    wherever the reads cut the stream."""
    good = record(QUEUED)
    stream = good + garbage + b"\n" + good + b"\n" + good
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    m = Metrics()
    counted = 0
    prev = 0
    for c in [*points, len(stream)]:
        counted += m.observe_record(stream[prev:c])
        prev = c
    ok = samples(m)[("supervise_smtp_connections_total", (("stage", "quit"), ("verdict", "ok")))]
    assert counted == ok == 3


def test_metrics_observe_record_rejects_forged_and_overlong_records():
    """Unknown labels, bad numbers, repeated keys, other tags and over-long lines
    are unreadable: counted as such, never as a connection."""
    bad = [
        b"ssr1 v=ok s=quit c=250\n",  # a code that is not a label
        b"ssr1 v=ok s=quit i=-4\n", b"ssr1 v=ok s=quit i=1e9\n",
        b"ssr1 v=ok s=quit v=ok\n", b"ssr2 v=ok s=quit\n", b"ssr1 v=hacked s=quit\n",
        b"ssr1 v=ok\n", b"ssr1 v=ok s=quit z=1\n", b"ssr1 v=ok s=quit p=2\n",
        b"ssr1 v=ok s=quit " + b"i=1" * 300 + b"\n",
        b"\xff\xfe\x00 binary\n",
    ]
    m = Metrics()
    assert m.observe_record(b"".join(bad)) == 0
    assert m.observe_record(b"x" * 5000) == 0  # no newline yet: dropped as it grows
    assert m.observe_record(b"y" * 100 + b"\n" + record(QUEUED)) == 1
    s = nonzero(m)
    assert s.pop(("supervise_smtp_summaries_unreadable_total", ())) == len(bad) + 1
    assert s[("supervise_smtp_connections_total", (("stage", "quit"), ("verdict", "ok")))] == 1


def test_metrics_serve_gauge_and_counters():
    """serve's parent sets the active connections and counts denials and limit hits."""
    m = Metrics(serve=True)
    m.set_active(3)
    m.set_active(2)
    m.denied()
    m.denied(2)
    m.limit_reached()
    s = samples(m)
    assert s[("supervise_smtp_serve_active_connections", ())] == 2
    assert s[("supervise_smtp_serve_denied_total", ())] == 3
    assert s[("supervise_smtp_serve_limit_reached_total", ())] == 1


def test_metrics_write_textfile_is_atomic_and_0644(tmp_path):
    """The textfile replaces the old one by rename (a new inode, never a partial file),
    is 0644 whatever the umask, and leaves no temporary file behind."""
    path = tmp_path / "supervise_smtp.prom"
    path.write_text("old\n")
    old_inode = path.stat().st_ino
    m = Metrics()
    m.observe(line_fields(BARE_LF))
    umask = os.umask(0o077)
    try:
        m.write_textfile(str(path))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_ino != old_inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["supervise_smtp.prom"]
    assert path.read_bytes() == m.exposition()
    with pytest.raises(OSError):
        m.write_textfile(str(tmp_path / "missing" / "x.prom"))
    (tmp_path / "dir.prom").mkdir()  # rename onto a directory fails: the temp file goes
    with pytest.raises(OSError):
        m.write_textfile(str(tmp_path / "dir.prom"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.prom", "supervise_smtp.prom"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=8))
def test_metrics_collect_counts_the_same_however_reads_cut_the_lines(cuts):
    """collect's counting of a stream does not depend on where reads cut its lines."""
    from supervise_smtp.logs.collect import Counting

    stream = b"".join([
        b"tcpserver: status: 1/20\n", format_logfmt(BARE_LF), b"\xff junk\n",
        format_json(QUEUED), b"event=summary verdict=\"ok\n", format_logfmt(CRASHED),
    ])
    whole, pieces = Metrics(), Metrics()
    Counting(whole).feed(stream)
    counting = Counting(pieces)
    prev = 0
    for c in sorted({c for c in cuts if c < len(stream)}) + [len(stream)]:
        counting.feed(stream[prev:c])
        assert counting.mid_line == (stream[c - 1:c] != b"\n")
        prev = c
    counting.feed(b"")
    assert samples(whole) == samples(pieces)
    assert nonzero(whole)[("supervise_smtp_summaries_unreadable_total", ())] == 1
    assert nonzero(whole)[("supervise_smtp_session_duration_seconds_count", ())] == 3


def test_metrics_textfile_writer_rewrites_each_interval_and_warns_once(tmp_path):
    """Written at the first call and then each interval, changed or not (the mtime is
    the heartbeat); a run of failures is one warning, the recovery one line more."""
    from supervise_smtp.logs.metrics import TextfileWriter

    said: list[str] = []
    path = tmp_path / "d" / "m.prom"
    writer = TextfileWriter(Metrics(), str(path), 15.0, said.append)
    assert writer.maybe_write(100.0) is False  # no directory yet
    assert writer.maybe_write(110.0) is False and said == [
        f"warning: unable to write {path}: No such file or directory; retrying every 15 s"]
    assert writer.maybe_write(115.0) is False and len(said) == 1
    path.parent.mkdir()
    assert writer.maybe_write(120.0) is False  # not due before 130
    assert writer.maybe_write(130.0) is True and said[1:] == [f"info: wrote {path} again"]
    path.unlink()
    assert writer.maybe_write(145.0) is True and path.exists()  # unchanged, rewritten
    assert writer.maybe_write(146.0, force=True) is True and len(said) == 2


def test_metrics_session_values_and_their_logged_line_count_the_same():
    """A serve worker's record of the session's own values (ints, bytes, None) counts what
    collect counts from the line those values were written as."""
    for fields in (BARE_LF, QUEUED, CRASHED, {**QUEUED, "log_dropped": None, "signal": None}):
        from_line, from_record = Metrics(), Metrics()
        from_line.observe(line_fields(fields))
        assert from_record.observe_record(record(fields)) == 1
        assert samples(from_line) == samples(from_record)


@pytest.mark.parametrize(("fields", "risk"), [
    ({"queued": "yes", "reply_delivered": "yes"}, False),
    ({"queued": "yes", "reply_delivered": "no"}, True),
    ({"queued": "yes", "reply_delivered": "unknown"}, True),
    ({"queued": "yes"}, True),  # never delivered by default
    ({"queued": "unknown"}, True),
    ({"queued": "no", "reply_delivered": "no"}, False),
    ({}, False),
])
def test_metrics_duplicate_risk_counts_replies_not_known_delivered(fields, risk):
    """supervise_smtp_duplicate_risk_total: queued, reply not known delivered, or no reply."""
    m = Metrics()
    summary = {"event": "summary", "verdict": "ok", "stage": "quit", **fields}
    m.observe(summary)
    assert samples(m)[("supervise_smtp_duplicate_risk_total", ())] == (1.0 if risk else 0.0)
    via_record = Metrics()
    via_record.observe_record(record(summary))
    assert samples(via_record) == samples(m)
