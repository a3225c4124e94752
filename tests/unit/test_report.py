"""The report (logs/report.py): exact counts from generated logs in every stamp format.

The log is one scenario: summaries written by output.py's own formatters
(logfmt, and one as JSON), other event lines, tcpserver's, qmail's and
qmail-scanner's lines, and broken lines, stamped the way each logger stamps
them.  The expected counts are the scenario's, written out by hand.
"""

from __future__ import annotations

import calendar
import json
import time

import pytest
import strict_logfmt as strict
from hypothesis import given, settings
from hypothesis import strategies as st

from supervise_smtp.errors import UsageError
from supervise_smtp.logs.parse import FOREIGN, MALFORMED, parse_event
from supervise_smtp.logs.report import Filters, Tally, parse_args, parse_time
from supervise_smtp.logs.report_text import WIDTH, render
from supervise_smtp.session.output import format_json, format_logfmt

T0 = calendar.timegm((2026, 11, 29, 10, 0, 0, 0, 0, 0))
BROKEN = {"helo_name": "mx.broken.example", "mail_from_domain": "broken.example"}


def _summary(remote: str, pid: int, verdict: str, **fields: object) -> dict[str, object]:
    return {"event": "summary", "remote": remote, "pid": pid, "verdict": verdict,
            "child_pid": pid + 1, **fields}


# (seconds after T0, fields): the scenario, in time order.
SCENARIO: list[tuple[float, dict[str, object]]] = [
    (0, _summary("192.0.2.1", 100, "ok", stage="quit", tls=True, tls_version="TLSv1.3",
                 tls_cipher="TLS_AES_128_GCM_SHA256", last_reply="221 mx.example.org", exit=0)),
    (60, _summary("192.0.2.1", 102, "ok", stage="quit", tls=False, last_reply="221 bye", exit=0)),
    (600.25, {"event": "bare_lf", "remote": "198.51.100.7", "pid": 104, "message": 1, "line": 3}),
    (600.5, {"event": "child_stderr", "remote": "198.51.100.7", "pid": 104, "source":
             "qmail-scanner", "text": "X-Qmail-Scanner-1.25st: Process 17659 closed, "
             "parent process died"}),
    (600.75, _summary("198.51.100.7", 104, "bare_lf", stage="data_body", **BROKEN,
                      queued="no", bare_lf=5, queue="parent_died", queue_pid=17659,
                      last_reply="451 See http://pobox.com/~djb/docs/smtplf.html.", exit=1)),
    (900, _summary("203.0.113.9", 106, "bare_lf", stage="data_body", helo_name="pc17",
                   last_reply="451 See http://pobox.com/~djb/docs/smtplf.html.", exit=1)),
    (3700, _summary("198.51.100.7", 108, "bare_lf", stage="data_body", **BROKEN,
                    last_reply="451 See http://pobox.com/~djb/docs/smtplf.html.", exit=1)),
    (7205, _summary("192.0.2.2", 110, "queue_temp_fail", stage="quit", queue="disk_full",
                    tls=True, tls_version="TLSv1.2", tls_cipher="ECDHE-RSA-AES128-GCM-SHA256",
                    last_reply="221 bye", exit=0)),
    (7300, _summary("192.0.2.2", 112, "queue_temp_fail", stage="quit", queue="disk_full",
                    last_reply="221 bye", exit=0)),
    (10800, _summary("192.0.2.5", 114, "queue_perm_fail", stage="quit", queue="perm_rejected",
                     last_reply="221 bye", exit=0)),
    (11000, _summary("192.0.2.3", 116, "client_lost_after_data_end", stage="data_end",
                     queued="yes", reply_delivered="no", queue_pid=99, mail_from_domain="ex.org",
                     last_reply="250 ok 1795000000 qp 99", exit=1)),
    (11100, _summary("192.0.2.6", 118, "stopped", stage="data_end", queued="unknown",
                     stopped_by="SIGTERM", signal="SIGTERM", core=False)),
    (11200, _summary("192.0.2.7", 120, "server_crashed", stage="mail", signal="SIGSEGV",
                     core=True, log_dropped=3)),
    (11300, {"event": "reject", "remote": "192.0.2.4", "pid": 122, "code": 553,
             "text": "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
             "command": "RCPT", "arg": "x@elsewhere.example", "in_stage": "rcpt"}),
    (11301, {"event": "reject", "remote": "192.0.2.4", "pid": 122, "code": 550,
             "text": "no", "command": "RCPT", "arg": "y@elsewhere.example"}),
    (11302, _summary("192.0.2.4", 122, "rejected", stage="quit", rejects=2,
                     last_reply="221 bye", exit=0)),
]
JSON_PID = 102  # this summary is written as a JSON line (--format json)
FOREIGN_LINES = [
    "tcpserver: status: 1/100",
    "tcpserver: pid 100 from 192.0.2.1",
    "tcpserver: ok 100 mx:192.0.2.25:25 :192.0.2.1::42620",
    "tcpserver: end 100 status 0",
    "X-Qmail-Scanner-1.25st: Process 17659 closed, parent process died",
    "rblsmtpd: 192.0.2.66 pid 5050: 451 http://www.spamhaus.org/query/bl?ip=192.0.2.66",
    "new msg 12345",
    "",
    '{"level": "info", "msg": "someone else\'s JSON"}',
]
MALFORMED_LINES = [
    'event=summary remote=192.0.2.9 pid=1 verdict=ok reason="never closed',
    "event=summary remote=192.0.2.9 pid=2 stage=quit",  # no verdict
    "event=summary remote=192.0.2.9 verdict=ok text=\x1b[31m",  # a raw control byte
    "event=summary verdict=ok reason=\"a\"b",  # garbage after a quoted value
    '{"event": "summary", "verdict": "ok",',  # JSON cut short
    "[1, 2]",  # JSON, not an object: starts like ours? no: foreign
    "event= verdict=ok",
]
N_MALFORMED_TEXT = 6  # the "[1, 2]" line above is foreign, not malformed
N_SUMMARIES = sum(1 for _, f in SCENARIO if f["event"] == "summary")
N_EVENTS = len(SCENARIO) - N_SUMMARIES


def _line(fields: dict[str, object]) -> str:
    fmt = format_json if fields.get("pid") == JSON_PID and fields["event"] == "summary" else (
        format_logfmt)
    return fmt(fields).decode("ascii").rstrip("\n")


def _label(unix: float, offset: int) -> str:
    whole = int(unix)
    return f"@{2**62 + whole + offset:016x}{round((unix - whole) * 1e9):08x} "


def stamp(fmt: str, unix: float) -> str:
    """The prefix each logger writes for an instant (independent of logstamp.py)."""
    frac = unix - int(unix)
    if fmt == "multilog":
        return _label(unix, 10)
    if fmt == "s6-t":
        return _label(unix, 37)  # TAI - UTC in 2026
    if fmt in ("svlogd-tt", "svlogd-ttt"):
        sep = "_" if fmt == "svlogd-tt" else "T"
        return time.strftime(f"%Y-%m-%d{sep}%H:%M:%S", time.gmtime(unix)) + (
            f".{int(frac * 1e5):05d} ")
    if fmt == "s6-T":
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) + (
            f".{round(frac * 1e9):09d}  ")
    return ""


def log(fmt: str) -> list[str]:
    """The scenario as one logger wrote it: ours, foreign and malformed lines interleaved."""
    lines = []
    for i, (offset, fields) in enumerate(SCENARIO):
        when = T0 + offset
        if i < len(FOREIGN_LINES):
            lines.append(stamp(fmt, when) + FOREIGN_LINES[i])
        if i < len(MALFORMED_LINES):
            lines.append(stamp(fmt, when) + MALFORMED_LINES[i])
        lines.append(stamp(fmt, when) + _line(fields))
    if fmt != "plain":
        lines.append("@4000zz not a label " + _line(SCENARIO[0][1]))  # a broken stamp
    return lines


FORMATS = {"multilog": ("daemontools", "tai64n"), "s6-t": ("s6", "tai64n"),
           "svlogd-tt": ("daemontools", "svlogd"), "svlogd-ttt": ("daemontools", "svlogd"),
           "s6-T": ("daemontools", "local"), "plain": ("daemontools", "none")}


@pytest.fixture
def paris(monkeypatch):
    """Local time is Europe/Paris (UTC+1 in November): s6-log T stamps are local."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def tally(fmt: str, **kw: object) -> dict[str, object]:
    scale, _ = FORMATS[fmt]
    t = Tally(kw.pop("filters", None), scale, **kw)  # type: ignore[arg-type]
    t.feed(log(fmt))
    return t.tables()


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_exact_counts_in_every_stamp_format(fmt, paris):
    """Same scenario, every logger's stamps: the same tables, line counts exact."""
    tables = tally(fmt)
    n_lines = len(SCENARIO) + len(FOREIGN_LINES) + len(MALFORMED_LINES) + (fmt != "plain")
    stamped = FORMATS[fmt][1]
    assert tables["input"] == {
        "files": 0, "lines": n_lines, "summaries": N_SUMMARIES, "events": N_EVENTS,
        "foreign": len(FOREIGN_LINES) + 1, "malformed": N_MALFORMED_TEXT + (fmt != "plain"),
        "out_of_window": 0, "filtered": 0, "read_errors": [], "notes": [],
        "stamps": {stamped: n_lines - (fmt != "plain")},
        "unstamped": n_lines if fmt == "plain" else 0,
    }
    assert tables["verdicts"] == {"bare_lf": 3, "ok": 2, "queue_temp_fail": 2,
                                  "client_lost_after_data_end": 1, "queue_perm_fail": 1,
                                  "rejected": 1, "server_crashed": 1, "stopped": 1}
    assert tables["stages"] == {"quit": 6, "data_body": 3, "data_end": 2, "mail": 1}
    assert tables["reply_codes"] == {"221": 6, "451": 3, "(none)": 2, "250": 1}
    assert tables["refusal_codes"] == {"550": 1, "553": 1}
    assert tables["events"] == {"reject": 2, "bare_lf": 1, "child_stderr": 1}
    assert tables["tls"] == {"connections": 2,
                             "versions": {"TLSv1.2": 1, "TLSv1.3": 1},
                             "ciphers": {"ECDHE-RSA-AES128-GCM-SHA256": 1,
                                         "TLS_AES_128_GCM_SHA256": 1}}
    child = tables["child"]
    assert child == {"signals": {"SIGSEGV": 1, "SIGTERM": 1}, "cores": 1,
                     "exits": {"1": 4}, "parent_died": 1,
                     "parent_died_by_verdict": {"bare_lf": 1}, "queue_signals": {}}
    assert tables["log_dropped"] == 3
    assert tables["queue_failure_meanings"] == {"disk_full": 2, "perm_rejected": 1}
    dup = tables["duplicate_risk"]
    assert (dup["queued_yes_reply_not_delivered"], dup["queued_unknown"]) == (1, 1)
    assert [(r["remote"], r["pid"], r["queued"], r["queue_pid"]) for r in dup["recent"]] == [
        ("192.0.2.3", "116", "yes", "99"), ("192.0.2.6", "118", "unknown", None)]
    remotes = tables["top_remotes"]
    assert list(remotes)[0] == "bare_lf"  # the broken mailers come first
    bare = remotes["bare_lf"]
    assert (bare["connections"], bare["exact"]) == (3, True)
    first = bare["top"][0]
    assert (first["remote"], first["count"], first["error"], first["helo_name"],
            first["mail_from_domain"]) == ("198.51.100.7", 2, 0, "mx.broken.example",
                                           "broken.example")
    assert (bare["top"][1]["remote"], bare["top"][1]["helo_name"],
            bare["top"][1]["mail_from_domain"]) == ("203.0.113.9", "pc17", None)
    assert set(remotes) == {"bare_lf", "server_crashed", "queue_perm_fail", "queue_temp_fail",
                            "client_lost_after_data_end", "rejected"}
    if fmt == "plain":  # no time at all
        assert (tables["first_seen"], tables["last_seen"]) == (None, None)
        assert tables["queue_failures_per_hour"] == [
            {"hour": None, "queue_temp_fail": 2, "queue_perm_fail": 1}]
        assert first["first_seen"] is None
    else:
        assert (tables["first_seen"], tables["last_seen"]) == (
            "2026-11-29T10:00:00Z", "2026-11-29T13:08:22Z")
        assert (first["first_seen"], first["last_seen"]) == (
            "2026-11-29T10:10:00Z", "2026-11-29T11:01:40Z")
        assert tables["queue_failures_per_hour"] == [
            {"hour": "2026-11-29T12:00Z", "queue_temp_fail": 2, "queue_perm_fail": 0},
            {"hour": "2026-11-29T13:00Z", "queue_temp_fail": 0, "queue_perm_fail": 1}]


def test_report_wrong_tai64n_scale_shifts_times_by_27_seconds():
    """An s6-log t log read as daemontools' is 27 s late; the counts do not change."""
    t = Tally(None, "daemontools")
    t.feed(log("s6-t"))
    tables = t.tables()
    assert tables["first_seen"] == "2026-11-29T10:00:27Z"
    assert tables["verdicts"] == tally("s6-t")["verdicts"]


def test_report_since_until_window():
    """--since/--until keep [since, until); the rest, unstamped lines too, is counted out."""
    filters = Filters(since=T0 + 3600, until=T0 + 3 * 3600)
    t = Tally(filters, "daemontools")
    t.feed(log("multilog") + ["event=summary remote=192.0.2.1 pid=1 verdict=ok"])
    tables = t.tables()
    assert tables["verdicts"] == {"queue_temp_fail": 2, "bare_lf": 1}
    inp = tables["input"]
    # in the window: 3 summaries, and the 3 foreign and 1 malformed lines stamped with them;
    # a line whose stamp is broken is malformed wherever it is
    assert (inp["summaries"], inp["events"], inp["foreign"], inp["malformed"]) == (3, 0, 3, 2)
    assert inp["out_of_window"] == inp["lines"] - 8


def test_report_remote_and_verdict_filters():
    """--remote takes networks; --verdict prefixes; with --verdict other events are left out."""
    t = Tally(Filters(remotes=["198.51.100.0/24", "192.0.2.4"]), "daemontools")
    t.feed(log("multilog"))
    tables = t.tables()
    assert tables["verdicts"] == {"bare_lf": 2, "rejected": 1}
    assert tables["events"] == {"reject": 2, "bare_lf": 1, "child_stderr": 1}
    t = Tally(Filters(verdicts=["client_lost_after_*", "stopped"]), "daemontools")
    t.feed(log("multilog"))
    tables = t.tables()
    assert tables["verdicts"] == {"client_lost_after_data_end": 1, "stopped": 1}
    assert tables["events"] == {} and tables["input"]["filtered"] == N_SUMMARIES - 2 + N_EVENTS


def test_report_text_fits_100_columns_and_says_it_all(paris):
    """Every line <= 100 columns, even for a 39-character IPv6 remote and a 255-byte HELO."""
    long_helo = "h" * 255
    v6 = "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
    t = Tally(None, "daemontools")
    lines = log("multilog")
    for i in range(3):
        lines.append(stamp("multilog", T0 + 20000 + i) + _line(_summary(
            v6, 500 + i, "bare_lf", helo_name=long_helo, mail_from_domain="d" * 255,
            queued="yes", reply_delivered="no")))
    t.feed(lines)
    text = render(t.tables())
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert text.isascii()
    assert f"{v6}  2026-11-29 15:33:20  2026-11-29 15:33:22" in text
    assert "\n        3  " in text and "198.51.100.7" in text
    assert text.index("bare_lf: 6 connections") < text.index("queue_temp_fail: 2 connections")
    for heading in ("Verdicts", "Stages", "Reply codes", "Refusals", "Queue failures per hour",
                    "TLS: 2 of 15 connections", "Duplicate risk", "Children"):
        assert heading in text, heading
    assert "2026-11-29 12:00        2        0" in text
    assert "qmail-scanner parent deaths: 1 (bare_lf 1)" in text
    # exit 1, four times: said so, not "1 4" (which reads as two codes)
    assert "qmail-smtpd exit codes other than 0: exit 1: 4 connections" in text


def test_report_top_remotes_bounded_for_many_distinct_remotes():
    """20,000 remotes each failing once: the per-verdict table stays bounded, marked approximate."""
    t = Tally(None, "daemontools", top=10)
    lines = [_line(_summary(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i, "timeout"))
             for i in range(20_000)]
    lines += [_line(_summary("192.0.2.99", 1, "timeout"))] * 300
    t.feed(lines)
    sketch = t.remotes["timeout"]
    assert len(sketch) <= 2 * sketch.capacity
    table = t.tables()["top_remotes"]["timeout"]
    assert table["exact"] is False and table["connections"] == 20_300
    assert table["top"][0]["remote"] == "192.0.2.99"
    assert table["top"][0]["count"] - table["top"][0]["error"] <= 300 <= table["top"][0]["count"]
    assert "~" in render(t.tables())


def test_report_json_is_the_same_tables():
    """--json's object round-trips and holds what the text shows."""
    t = Tally(None, "daemontools")
    t.feed(log("multilog"))
    tables = t.tables(files=1)
    assert json.loads(json.dumps(tables)) == tables
    assert tables["input"]["files"] == 1


@pytest.mark.parametrize("args, message", [
    (["--verdict", "bare-lf"], "no such verdict"),
    (["--remote", "example.org"], "not an address"),
    (["--since", "yesterday"], "bad time"),
    (["--tai64n", "tai"], "invalid choice"),
    (["--top", "0"], "--top"),
    (["--frobnicate"], "unrecognized"),
])
def test_report_usage_errors(args, message):
    """Bad options are UsageError (exit 100), never a traceback."""
    with pytest.raises(UsageError, match=message):
        parse_args(args)


def test_report_time_arguments():
    """ISO dates are UTC unless they say; N[smhd] counts back from now."""
    assert parse_time("2026-11-29") == T0 - 10 * 3600
    assert parse_time("2026-11-29T10:00") == T0
    assert parse_time("2026-11-29 11:00:00+01:00") == T0
    assert parse_time("2026-11-29T10:00:00Z") == T0
    assert parse_time("2h", now=T0) == T0 - 7200
    assert parse_time("7d", now=T0) == T0 - 7 * 86400


def test_report_parser_sorts_lines():
    """Ours, foreign, malformed; never an exception."""
    assert parse_event("tcpserver: end 1 status 0") is FOREIGN
    assert parse_event('event=summary reason="open') is MALFORMED
    assert parse_event('event=summary verdict=ok reason="a \\"b\\" c"') == {
        "event": "summary", "verdict": "ok", "reason": 'a "b" c'}
    assert parse_event('{"event": "summary", "tls": true, "pid": 7, "x": "\\u001b"}') == {
        "event": "summary", "tls": "true", "pid": "7", "x": "\\x1b"}


_VALUES = st.one_of(st.binary(max_size=40), st.text(max_size=40), st.integers(), st.booleans())
_KEYS = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda k: k not in ("event", "truncated"))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=8))
def test_report_parser_reads_what_output_writes(fields):
    """Any line output.py writes parses to what the strict reader of the tests sees."""
    line = format_logfmt({"event": "summary", **fields})
    assert parse_event(line.decode("ascii").rstrip("\n")) == strict.parse(line)
    obj = strict.parse_json(format_json({"event": "summary", **fields}))
    want = {k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in obj.items()}
    assert parse_event(format_json({"event": "summary", **fields}).decode().rstrip("\n")) == want


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_report_never_raises_on_any_line(text):
    """Any text at all, after any stamp: counted somewhere, never an exception."""
    t = Tally(None, "s6")
    t.feed([text, "@400000006b0c603a0e65a94c " + text, "event=" + text, "{" + text])
    inp = t.tables()["input"]
    assert inp["lines"] == 4
    assert (inp["summaries"] + inp["events"] + inp["foreign"] + inp["malformed"]) == 4


def test_report_queue_hours_text_keeps_the_first_and_last_day():
    """Queue failures in 60 different hours: the text shows the first 24 and the last 24."""
    t = Tally(None, "daemontools")
    t.feed([stamp("multilog", T0 + h * 3600) + _line(_summary("192.0.2.2", h, "queue_temp_fail"))
            for h in range(60)])
    tables = t.tables()
    assert len(tables["queue_failures_per_hour"]) == 60
    text = render(tables)
    assert "2026-11-29 10:00" in text and "2026-12-01 21:00" in text
    assert "2026-11-30 10:00" not in text and "... 12 more hours ..." in text


def test_report_reply_not_known_delivered_is_a_duplicate_risk():
    """queued=yes with reply_delivered no or unknown is a duplicate risk; yes is not."""
    t = Tally(None, "daemontools")
    t.feed([_line(_summary("192.0.2.9", 200 + i, "client_lost_after_data_end", queued="yes",
                           reply_delivered=delivered))
            for i, delivered in enumerate(["no", "unknown", "yes"])])
    dup = t.tables()["duplicate_risk"]
    assert (dup["queued_yes_reply_not_delivered"], dup["queued_unknown"]) == (2, 0)
    assert [r["pid"] for r in dup["recent"]] == ["200", "201"]


def test_report_lists_the_senders_whose_mail_bare_lf_fix_rewrote():
    """notes=bare_lf_fixed: delivered (verdict ok), yet a partner to contact, with its
    HELO and sender domain, listed next to bare_lf."""
    t = Tally(None, "daemontools")
    t.feed([_line(_summary("192.0.2.50", 300 + i, "ok", notes="bare_lf_fixed",
                           helo_name="mx.partner.example", mail_from_domain="partner.example"))
            for i in range(3)] + [_line(_summary("192.0.2.51", 400, "ok"))])
    tables = t.tables()
    fixed = tables["top_remotes"]["bare_lf_fixed"]
    assert fixed["connections"] == 3
    [row] = fixed["top"]
    assert (row["remote"], row["count"], row["helo_name"], row["mail_from_domain"]) == (
        "192.0.2.50", 3, "mx.partner.example", "partner.example")
    text = render(tables)
    assert "bare_lf_fixed: 3 connections -- delivered only because --bare-lf fix" in text
    assert "helo mx.partner.example, mail from @partner.example" in text


def test_report_header_names_the_tai64n_scale_only_for_tai64n_stamps():
    """An svlogd -tt log has no TAI64N label: the header does not say how one was read."""
    svlogd = Tally(None, "daemontools")
    svlogd.feed(log("svlogd-tt"))
    text = render(svlogd.tables())
    assert "timestamps:" in text and "tai64n read as" not in text
    multilog = Tally(None, "daemontools")
    multilog.feed(log("multilog"))
    assert "(tai64n read as daemontools)" in render(multilog.tables())


def test_report_and_metrics_agree_on_the_same_log():
    """The same lines through report and through the metrics (collect's reading): every
    count both keep is equal, verdicts, child statuses, parent deaths, duplicate risks and
    dropped lines, odd values included (a made-up signal, a lost status, non-ASCII digits)."""
    from prometheus_client.parser import text_string_to_metric_families

    from supervise_smtp.logs.metrics import Metrics

    lines = [stamp("multilog", T0 + offset) + _line(f) for offset, f in SCENARIO]
    odd = [_summary("192.0.2.90", 900, "server_crashed", signal="SIGBOGUS", core=False),
           _summary("192.0.2.91", 901, "wrapper_error", exit="unknown"),
           _summary("192.0.2.92", 902, "client_lost_after_data_end", queued="yes",
                    reply_delivered="unknown", log_dropped="\u0661\u0662", exit=1),
           _summary("192.0.2.93", 903, "ok", queued="unknown", queue="parent_died", exit=0)]
    lines += [stamp("multilog", T0 + 30000 + i) + _line(f) for i, f in enumerate(odd)]
    report = Tally(None, "daemontools")
    report.feed(lines)
    tables = report.tables()
    metrics = Metrics()
    for line in lines:
        fields = parse_event(line.split(" ", 1)[1])
        if isinstance(fields, dict) and fields.get("event") == "summary":
            metrics.observe(fields)
    by = {"supervise_smtp_connections_total": "verdict",
          "supervise_smtp_child_exit_total": "status",
          "supervise_smtp_scanner_parent_died_total": "verdict"}
    got: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                key = sample.labels.get(by.get(sample.name, ""), "")
                bucket = got.setdefault(sample.name, {})
                bucket[key] = bucket.get(key, 0) + sample.value
    assert tables["verdicts"] == got["supervise_smtp_connections_total"]
    child = tables["child"]
    assert {**child["signals"], **child["exits"]} == {
        k: v for k, v in got["supervise_smtp_child_exit_total"].items() if k != "0"}
    assert child["parent_died"] == sum(got["supervise_smtp_scanner_parent_died_total"].values())
    dup = tables["duplicate_risk"]
    assert dup["queued_yes_reply_not_delivered"] + dup["queued_unknown"] == \
        got["supervise_smtp_duplicate_risk_total"][""]
    assert tables["log_dropped"] == got.get("supervise_smtp_log_dropped_total", {}).get("", 0)
