"""Verdicts from transcripts: the observer's view, the child's exit, the relay's facts."""

from __future__ import annotations

import pytest

from supervise_smtp.observer import Observer
from supervise_smtp.session.diagnose import VERDICTS, Facts, client_lost, diagnose
from supervise_smtp.session.qmail import QQ_TEXTS, qq_meaning, queue_pid
from supervise_smtp.session.stderr import parent_died_pid

BANNER = [("S", b"220 mx.example.org ESMTP\r\n")]
HELO = [("C", b"HELO c.example\r\n"), ("S", b"250 mx.example.org\r\n")]
ENVELOPE = [("C", b"MAIL FROM:<a@example.com>\r\n"), ("S", b"250 ok\r\n"),
            ("C", b"RCPT TO:<b@example.org>\r\n"), ("S", b"250 ok\r\n")]
DATA = [("C", b"DATA\r\n"), ("S", b"354 go ahead\r\n")]
BODY = [("C", b"Subject: t\r\n\r\nhello\r\n.\r\n")]
QUIT = [("C", b"QUIT\r\n"), ("S", b"221 mx.example.org\r\n"), ("S", b""), ("C", b"")]
SMTPLF = b"451 See http://pobox.com/~djb/docs/smtplf.html.\r\n"


def judge(steps, exit_code=1, first_close=None, **facts):
    """Play ``steps`` through the observer, every event noted in the facts, then decide."""
    f = Facts(**facts)
    observer = Observer()
    closed = None
    for side, data in steps:
        for ev in (observer.feed_client if side == "C" else observer.feed_server)(data):
            f.note(ev)
        if data == b"" and closed is None:
            closed = "client" if side == "C" else "server"
    f.state = observer.state
    if "bytes_out" not in facts:  # the relay wrote every server byte to the client
        f.bytes_out = f.state.server_bytes
    for key in ("reply_acked", "quit_heard"):  # ... and the client's TCP took them all
        if key not in facts:
            setattr(f, key, True)
    f.exit_code = exit_code
    f.first_close = first_close or closed
    return diagnose(f)


def test_diagnose_ok_session_with_counts():
    """QUIT answered and exit 0 is ok, with Postfix-style counts and the queue pid."""
    verdict, fields = judge(BANNER + HELO + ENVELOPE + DATA + BODY
                            + [("S", b"250 ok 1732537200 qp 4242\r\n")] + QUIT, exit_code=0)
    assert verdict == "ok"
    assert (fields["helo"], fields["mail"], fields["rcpt"], fields["data"], fields["quit"],
            fields["commands"]) == ("1", "1", "1", "1", "1", "5")
    assert (fields["queued"], fields["reply_delivered"], fields["queue_pid"],
            fields["queue_exit"]) == ("yes", "yes", 4242, 0)
    assert fields["last_reply"] == b"221 mx.example.org"


def test_diagnose_bare_lf_names_line_and_count():
    """The 451 smtplf reply mid-body is bare_lf, with the first line and the count."""
    body = [("C", b"Subject: t\r\n\r\nline\nline two\nx")]
    verdict, fields = judge(BANNER + HELO + ENVELOPE + DATA + body
                            + [("S", SMTPLF), ("S", b""), ("C", b"")])
    assert verdict == "bare_lf"
    assert fields["reason"] == "451 smtplf after 2 bare LF, first at body line 3"
    assert (fields["bare_lf"], fields["bare_lf_line"], fields["queued"]) == (2, 3, "no")
    assert fields["data"] == "0/1" and fields["stage"] == "data_body"


def test_diagnose_bare_lf_with_scanner_parent_death():
    """qmail-scanner's parent-died line puts queue=parent_died and its pid on the summary."""
    line = b"X-Qmail-Scanner-1.25st: Process 4242 closed, parent process died"
    body = [("C", b"a\nb\n")]
    verdict, fields = judge(BANNER + HELO + ENVELOPE + DATA + body + [("S", SMTPLF)],
                            scanner_died_pid=parent_died_pid(line))
    assert verdict == "bare_lf"
    assert (fields["queue"], fields["queue_pid"]) == ("parent_died", 4242)


def test_diagnose_timeout_reply():
    """qmail-smtpd's ``451 timeout (#4.4.2)`` is timeout, whatever the stage."""
    verdict, fields = judge(BANNER + HELO + [("S", b"451 timeout (#4.4.2)\r\n"), ("S", b"")])
    assert verdict == "timeout"
    assert "timeout" in fields["reason"]


def test_diagnose_queue_temp_fail_survives_quit():
    """A session that QUITs after ``451 qq`` is still queue_temp_fail, the qq code mapped."""
    verdict, fields = judge(BANNER + HELO + ENVELOPE + DATA + BODY
                            + [("S", b"451 qq write error or disk full (#4.3.0)\r\n")] + QUIT,
                            exit_code=0)
    assert verdict == "queue_temp_fail"
    assert (fields["queue"], fields["queue_exit"], fields["queued"]) == ("disk_full", 53, "no")


def test_diagnose_queue_perm_fail_beats_temp():
    """A permanent queue failure outranks a temporary one in the same session."""
    second = [("C", b"MAIL FROM:<a@example.com>\r\n"), ("S", b"250 ok\r\n"),
              ("C", b"RCPT TO:<b@example.org>\r\n"), ("S", b"250 ok\r\n")]
    verdict, fields = judge(
        BANNER + HELO + ENVELOPE + DATA + BODY
        + [("S", b"554 mail server permanently rejected message (#5.3.0)\r\n")]
        + second + DATA + BODY + [("S", b"451 qq temporary problem (#4.3.0)\r\n")] + QUIT,
        exit_code=0)
    assert verdict == "queue_perm_fail"


@pytest.mark.parametrize(
    ("steps", "stage"),
    [
        ([], "connect"),
        (BANNER, "banner"),
        (BANNER + HELO, "ehlo"),
        (BANNER + HELO + ENVELOPE[:2], "mail"),
        (BANNER + HELO + ENVELOPE, "rcpt"),
        (BANNER + HELO + ENVELOPE + [("C", b"DATA\r\n")], "data"),
        (BANNER + HELO + ENVELOPE + DATA + [("C", b"Subject: x\r\n")], "data_body"),
    ],
)
def test_diagnose_client_lost_after_stage(steps, stage):
    """Client EOF before QUIT names the stage it was in; qmail-smtpd's exit 1 is explained."""
    verdict, fields = judge(steps + [("C", b"")], exit_code=1)
    assert verdict == client_lost(stage) == f"client_lost_after_{stage}"
    assert verdict in VERDICTS


def test_diagnose_client_lost_after_data_end_is_a_duplicate():
    """Client gone right after '.', message queued, the 250 never written: a duplicate."""
    before = sum(len(d) for side, d in BANNER + HELO + ENVELOPE + DATA if side == "S")
    verdict, fields = judge(BANNER + HELO + ENVELOPE + DATA + BODY + [("C", b"")]
                            + [("S", b"250 ok 1732537200 qp 77\r\n"), ("S", b"")],
                            bytes_out=before, client_gone=True)
    assert verdict == "client_lost_after_data_end"
    assert (fields["queued"], fields["reply_delivered"], fields["queue_pid"]) == ("yes", "no", 77)


@pytest.mark.parametrize("short", [0, 1, 20])
def test_diagnose_reply_delivered_means_its_bytes_were_written(short):
    """reply_delivered counts the reply's bytes written to the client, whoever closed first.

    A client that half-closes after '.' and keeps reading gets the 250: yes.  One
    byte of it missing is a no.
    """
    steps = BANNER + HELO + ENVELOPE + DATA + BODY + [("C", b"")] + [
        ("S", b"250 ok 1732537200 qp 77\r\n"), ("S", b"")]
    total = sum(len(d) for side, d in steps if side == "S")
    verdict, fields = judge(steps, bytes_out=total - short)
    assert verdict == "client_lost_after_data_end"
    assert fields["queued"] == "yes"
    assert fields["reply_delivered"] == ("yes" if short == 0 else "no")


def test_diagnose_rejected_after_5xx_only():
    """Relaying denied, then QUIT: rejected, with the refusal as the reason."""
    verdict, fields = judge(BANNER + HELO + ENVELOPE[:2] + [
        ("C", b"RCPT TO:<x@elsewhere.example>\r\n"),
        ("S", b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"),
    ] + QUIT, exit_code=0)
    assert verdict == "rejected"
    assert fields["rcpt"] == "0/1"
    assert "553" in fields["reason"]


def test_diagnose_rejected_reason_is_the_reply_escaped_once():
    """The reason carries the refused reply's own bytes, which the log escapes once:
    never a Python ``b'...'`` repr (escaped a second time in the log)."""
    from supervise_smtp.session.output import render

    verdict, fields = judge(BANNER + HELO + ENVELOPE[:2] + [
        ("C", b"RCPT TO:<x@elsewhere.example>\r\n"),
        ("S", b"553 caf\xc3\xa9 \xff\"q\" \\ no\r\n"),
    ] + QUIT, exit_code=0)
    assert verdict == "rejected"
    assert render(fields["reason"]) == (
        'session ended after refusal: 553 caf\\xc3\\xa9 \\xff"q" \\\\ no')


def test_diagnose_crash_by_signal_outranks_everything_but_wrapper_error():
    """A child killed by a signal is server_crashed even mid-bare-LF."""
    verdict, fields = judge(BANNER + HELO + [("S", b"")], exit_code=None, signal=11,
                            signal_name="SIGSEGV")
    assert verdict == "server_crashed"
    assert fields["reason"] == "child killed by SIGSEGV"
    verdict, _ = judge(BANNER, exit_code=None, signal=11, signal_name="SIGSEGV",
                       wrapper_error="observer failed")
    assert verdict == "wrapper_error"


def test_diagnose_unexplained_exit_is_crash():
    """Exit 111 with no reply saying why (softlimit out of memory) is server_crashed."""
    verdict, fields = judge([("S", b"")], exit_code=111)
    assert verdict == "server_crashed"
    assert fields["reason"] == "exit 111 with no reply explaining it"


def test_diagnose_tls_alert_is_tls_failed():
    """A fatal TLS alert decides tls_failed over a lost client."""
    verdict, fields = judge(BANNER + [("C", b"")], tls_alert=("fatal", "unknown_ca", "client"),
                            tls_started=True)
    assert verdict == "tls_failed"
    assert "unknown_ca" in fields["reason"]


def test_diagnose_verdict_names_are_stable():
    """The verdict names are an API: this list only ever grows."""
    assert set(VERDICTS) >= {
        "ok", "bare_lf", "timeout", "queue_temp_fail", "queue_perm_fail", "rejected",
        "tls_failed", "server_crashed", "wrapper_error", "unknown",
        "client_lost_after_connect", "client_lost_after_banner", "client_lost_after_ehlo",
        "client_lost_after_mail", "client_lost_after_rcpt", "client_lost_after_data",
        "client_lost_after_data_body", "client_lost_after_data_end", "client_lost_after_bdat",
        "client_lost_after_starttls", "client_lost_after_tls", "client_lost_after_auth",
    }


@pytest.mark.parametrize("text", sorted(QQ_TEXTS))
def test_qmail_every_qq_text_has_a_meaning(text):
    """Each qmail-smtpd end-of-data text maps to a meaning and the exit code, or the
    codes, it stands for (none only where the text names none)."""
    meaning, code = qq_meaning(554 if b"#5." in text else 451, text)
    assert meaning == QQ_TEXTS[text][0]
    codes = QQ_TEXTS[text][1]
    assert code == (codes[0] if len(codes) == 1 else codes or None)


def test_diagnose_queue_exit_says_every_exit_a_reply_stands_for():
    """``451 qq internal bug`` (qmail-queue exit 81 or 91): queue_exit=81,91, not absent."""
    from supervise_smtp.session.output import format_logfmt

    verdict, fields = judge(BANNER + HELO + ENVELOPE + DATA + BODY
                            + [("S", b"451 qq internal bug (#4.3.0)\r\n")] + QUIT, exit_code=0)
    assert verdict == "queue_temp_fail"
    assert (fields["queue"], fields["queue_exit"]) == ("internal_bug", (81, 91))
    assert b" queue_exit=81,91 " in format_logfmt({"event": "summary", **fields})


def test_qmail_queue_pid_parsing():
    """The qp number is read from the 250 and nothing else."""
    assert queue_pid(b"ok 1732537200 qp 4242") == 4242
    assert queue_pid(b"ok") is None
    assert queue_pid(b"ok qp x12") is None


def test_diagnose_encrypted_session_exit_0_is_ok():
    """QUIT inside TLS cannot be read; exit 0 after a TLS session is ok, not a lost client."""
    steps = BANNER + [("C", b"EHLO c\r\n"), ("S", b"250-mx\r\n250 STARTTLS\r\n"),
                      ("C", b"STARTTLS\r\n"), ("S", b"220 go ahead\r\n"),
                      ("C", b"\x16\x03\x01\x00\x00"), ("S", b"\x16\x03\x03\x00\x00"),
                      ("C", b""), ("S", b"")]
    verdict, fields = judge(steps, exit_code=0, tls_hello_done=True)
    assert verdict == "ok"
    assert fields["tls"] is True
    verdict, _ = judge(steps, exit_code=1, tls_hello_done=True)
    assert verdict == "client_lost_after_tls"


def test_diagnose_wrapper_timeout_owns_the_kill():
    """After --idle-timeout fired, the child's SIGTERM is ours: timeout, not a crash."""
    verdict, fields = judge(BANNER + HELO + [("S", b"")], exit_code=None, signal=15,
                            signal_name="SIGTERM", timeout_fired="idle_timeout")
    assert verdict == "timeout"
    assert fields["reason"] == "wrapper --idle-timeout fired in stage ehlo"


def test_diagnose_not_smtp_verdicts():
    """A client still taken for not SMTP at the end is rejected (exit 0: it QUIT, or the
    server closed) or a lost client (its EOF, exit 1), however replies interleaved."""
    junk = [("C", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 25 + b"QUIT\r\n")]
    refused = [("S", b"502 unimplemented (#5.5.1)\r\n" * 26 + b"221 mx\r\n")]
    reason = "client not speaking SMTP (20 unknown commands in a row)"
    for replies, commands in ((refused[:0], "0/27"), (refused, "1/27")):
        for ends in ([("S", b""), ("C", b"")], [("C", b""), ("S", b"")]):
            verdict, fields = judge(BANNER + junk + replies + ends, exit_code=0,
                                    notes=["not_smtp"])
            assert (verdict, fields["reason"]) == ("rejected", reason)
            assert fields["notes"] == ("not_smtp",) and fields["commands"] == commands
            # 19 refusals logged before the cut-over, the rest only counted
            assert (fields.get("rejects"), fields.get("rejects_unlogged")) == (
                (26, 16) if replies else (None, None))
    no_quit = [("C", junk[0][1].removesuffix(b"QUIT\r\n"))]
    verdict, fields = judge(BANNER + no_quit + [("S", refused[0][1].removesuffix(b"221 mx\r\n"))]
                            + [("C", b""), ("S", b"")], exit_code=1, notes=["not_smtp"])
    assert verdict == "client_lost_after_banner" and fields["notes"] == ("not_smtp",)


# ---------------------------------------------------------------- stopped

MID_SESSION = BANNER + HELO + ENVELOPE + DATA + [("C", b"Subject: t\r\n\r\nhal")]


def test_diagnose_stopped_child_killed_by_the_signal_we_forwarded():
    """TERM sent to the wrapper (svc -d, shutdown) and passed on killed the child: stopped.

    The same death without the wrapper having been signalled (someone killed
    qmail-smtpd alone) stays server_crashed.
    """
    steps = MID_SESSION + [("S", b""), ("C", b"")]
    verdict, fields = judge(steps, exit_code=None, signal=15, signal_name="SIGTERM",
                            stopped_by=["SIGTERM"])
    assert verdict == "stopped"
    assert fields["reason"] == ("supervise-smtp received SIGTERM and passed it on: "
                                "child killed by SIGTERM in stage data_body")
    assert (fields["stopped_by"], fields["stage"]) == ("SIGTERM", "data_body")
    verdict, fields = judge(steps, exit_code=None, signal=15, signal_name="SIGTERM")
    assert (verdict, fields["reason"]) == ("server_crashed", "child killed by SIGTERM")
    assert "stopped_by" not in fields


@pytest.mark.parametrize("name", ["SIGHUP", "SIGINT"])
def test_diagnose_stopped_by_hup_and_int(name):
    """HUP (a reload) and INT are operator signals too."""
    verdict, fields = judge(MID_SESSION + [("S", b""), ("C", b"")], exit_code=None,
                            signal=1 if name == "SIGHUP" else 2, signal_name=name,
                            stopped_by=[name])
    assert (verdict, fields["stopped_by"]) == ("stopped", name)


def test_diagnose_stopped_child_exited_after_the_signal():
    """A child that catches TERM, says 421 and exits before QUIT was stopped, not rejected."""
    steps = BANNER + HELO + [("S", b"421 shutting down\r\n"), ("S", b""), ("C", b"")]
    verdict, fields = judge(steps, exit_code=1, stopped_by=["SIGTERM"])
    assert verdict == "stopped"
    assert fields["reason"] == ("supervise-smtp received SIGTERM and passed it on: "
                                "child exited 1 in stage ehlo")
    assert fields["stopped_by"] == "SIGTERM"
    verdict, _ = judge(steps, exit_code=1)
    assert verdict == "rejected"


def test_diagnose_stopped_precedence():
    """wrapper_error, then stopped, then server_crashed, bare_lf, timeout, the rest."""
    killed = {"exit_code": None, "signal": 15, "signal_name": "SIGTERM",
              "stopped_by": ["SIGTERM"]}
    verdict, _ = judge(MID_SESSION + [("S", b"")], wrapper_error="observer failed", **killed)
    assert verdict == "wrapper_error"
    # a bare LF and the server's 451 timeout both came before the stop
    body = [("C", b"Subject: t\r\n\r\nline\nx")]
    verdict, _ = judge(BANNER + HELO + ENVELOPE + DATA + body + [("S", SMTPLF), ("S", b"")],
                       **killed)
    assert verdict == "stopped"
    verdict, _ = judge(BANNER + HELO + [("S", b"451 timeout (#4.4.2)\r\n"), ("S", b"")],
                       exit_code=1, stopped_by=["SIGINT"])
    assert verdict == "stopped"
    verdict, _ = judge(MID_SESSION + [("C", b""), ("S", b"")], exit_code=1,
                       stopped_by=["SIGTERM"])
    assert verdict == "stopped"  # not client_lost_after_data_body


def test_diagnose_hup_survivor_is_not_stopped():
    """A child that survives HUP and ends the session with QUIT answered is ok."""
    steps = BANNER + HELO + ENVELOPE + DATA + BODY + [
        ("S", b"250 ok 1732537200 qp 4242\r\n")] + QUIT
    verdict, fields = judge(steps, exit_code=0, stopped_by=["SIGHUP"])
    assert (verdict, fields["reason"]) == ("ok", "QUIT answered")
    assert "stopped_by" not in fields


def test_diagnose_other_signal_after_a_forwarded_one_is_a_crash():
    """A SEGV after we passed on HUP is still a crash: the child was not killed by our signal."""
    verdict, fields = judge(MID_SESSION + [("S", b"")], exit_code=None, signal=11,
                            signal_name="SIGSEGV", stopped_by=["SIGHUP"])
    assert (verdict, fields["reason"]) == ("server_crashed", "child killed by SIGSEGV")
    assert "stopped_by" not in fields


def test_diagnose_stopped_is_a_verdict_not_alerted_by_default():
    """stopped can be named in --alert-on and --capture-when, and is not in the default set."""
    from supervise_smtp.cli import parse
    from supervise_smtp.session.alert import DEFAULT_ON, parse_verdicts

    assert "stopped" in VERDICTS
    assert "stopped" not in DEFAULT_ON
    assert parse_verdicts("stopped,server_crashed") == {"stopped", "server_crashed"}
    opts, _ = parse(["--capture", "/tmp", "--capture-when", "stopped", "qmail-smtpd"])
    assert opts.capture_when == {"stopped"}


def test_diagnose_reply_written_but_reset_is_not_delivered():
    """The 250 written after the client's EOF, then reset by it: reply_delivered=no; no
    answer from the client's TCP (not TCP, or none in time) is unknown, never yes."""
    steps = BANNER + HELO + ENVELOPE + DATA + BODY + [("C", b"")] + [
        ("S", b"250 ok 1732537200 qp 77\r\n"), ("S", b"")]
    for acked, want in ((False, "no"), (True, "yes"), (None, "unknown")):
        _, fields = judge(steps, reply_acked=acked)
        assert fields["reply_delivered"] == want


def test_diagnose_lost_exit_status_is_a_wrapper_error():
    """An exit status nobody could read is never reported as success."""
    verdict, fields = judge(BANNER + HELO + QUIT, exit_code=None, exit_lost=True)
    assert verdict == "wrapper_error"
    assert "exit status was lost" in fields["reason"]



def test_diagnose_summary_names_helo_and_sender_domain_only():
    """helo_name= is the last EHLO/HELO argument, mail_from_domain= the sender's domain only."""
    steps = (BANNER + HELO + [("C", b"EHLO Mail.Broken.example\r\n"), ("S", b"250 mx\r\n"),
                              ("C", b"MAIL FROM:<John.Doe@Broken.Example> SIZE=12\r\n"),
                              ("S", b"250 ok\r\n")] + QUIT)
    _, fields = judge(steps, exit_code=0)
    assert fields["helo_name"] == b"Mail.Broken.example"  # as sent: a name, not an address
    assert fields["mail_from_domain"] == b"broken.example"
    keys = list(fields)
    assert keys.index("commands") < keys.index("helo_name") < keys.index("bytes_in")
    assert not any(b"john" in v.lower() for v in fields.values() if isinstance(v, bytes))


@pytest.mark.parametrize("sender, domain", [
    (b"<>", None), (b"<postmaster>", None), (b'<"a@b"@c.example>', b"c.example"),
    (b"<@relay.example:u@d.example>", b"d.example"), (b"<user@>", None),
])
def test_diagnose_sender_domain_is_after_the_last_at(sender, domain):
    """Bounces, bare local parts, quoted and source-routed paths: only a real domain is kept."""
    steps = BANNER + HELO + [("C", b"MAIL FROM:" + sender + b"\r\n"), ("S", b"250 ok\r\n")]
    _, fields = judge(steps + QUIT, exit_code=0)
    assert fields.get("mail_from_domain") == domain


def test_diagnose_helo_and_domain_are_capped_and_marked_truncated():
    """A 400-byte EHLO name is cut to HOST_CAP bytes and the summary says truncated."""
    from strict_logfmt import parse

    from supervise_smtp.session.diagnose import HOST_CAP
    from supervise_smtp.session.output import format_logfmt

    steps = BANNER + [("C", b"EHLO " + b"h\x1b" * 200 + b"\r\n"), ("S", b"250 mx\r\n")] + QUIT
    verdict, fields = judge(steps, exit_code=0)
    assert len(fields["helo_name"]) == HOST_CAP and fields["truncated"] is True
    line = parse(format_logfmt({"event": "summary", "verdict": verdict, **fields}))
    assert line["helo_name"].startswith("h\\x1bh") and line["truncated"] == "true"
    _, plain = judge(BANNER + HELO + QUIT, exit_code=0)
    assert "truncated" not in plain and plain["helo_name"] == b"c.example"


def test_diagnose_pipelined_quit_from_a_client_gone_is_not_ok():
    """'.' and QUIT in one write, the client gone before any reply: the 250 and 221 went
    to nobody, so the session is client_lost_after_data_end, queued, reply not delivered."""
    steps = BANNER + HELO + ENVELOPE + DATA + [
        ("C", b"Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n"), ("C", b""),
        ("S", b"250 ok 1732537200 qp 77\r\n221 mx.example.org\r\n"), ("S", b"")]
    verdict, fields = judge(steps, exit_code=0, reply_acked=False, quit_heard=False)
    assert verdict == "client_lost_after_data_end", fields
    assert (fields["queued"], fields["reply_delivered"]) == ("yes", "no")
    assert "pipelined" in fields["reason"]
    # the same bytes, every reply taken by the client's TCP: a clean end
    assert judge(steps, exit_code=0)[0] == "ok"


def test_diagnose_facts_take_the_end_in_one_step():
    """take_end reads the child's status and the relay's view once; an observer failure
    becomes the wrapper_error the verdict names."""
    from types import SimpleNamespace

    f = Facts()
    status = SimpleNamespace(code=None, signal=11, core=True, lost=False)
    link = SimpleNamespace(first_close="server", client_gone=False, bytes_in=10,
                           bytes_out=20, timeout_fired=None, tap_error=ValueError("bug"))
    f.take_end(None, status, "SIGSEGV", link)
    assert (f.exit_code, f.signal, f.signal_name, f.core, f.exit_lost) == (
        None, 11, "SIGSEGV", True, False)
    assert (f.first_close, f.bytes_in, f.bytes_out) == ("server", 10, 20)
    assert diagnose(f)[0] == "wrapper_error" and "observer failed" in f.wrapper_error
