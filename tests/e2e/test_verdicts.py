"""One verdict per connection, end to end (DESIGN.md "Verdicts").

``tcpserver -v ... supervise-smtp -- CHILD`` with CHILD the qmail-smtpd test
double (tests/fakes/fake-qmail-smtpd, its queue programs fake-qmail-queue and
fake-qmail-scanner) or ``exim -bs -odq``; the clients are swaks and raw
sockets.  Each test asserts the exact fields of the one ``event=summary`` line,
and no summary may ever say ``verdict=unknown``.  Parity: the child's exit
status reaches tcpserver (``end PID status S``) exactly as without the wrapper.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    ABSENT,
    BANNER,
    BODY,
    BYE,
    GREETING,
    QP,
    RCPT_OK,
    RCPT_RELAY,
    SCANNER,
    SMTPD,
    SMTPLF,
    ServeServer,
    SmtpClient,
    TcpServer,
    check_fields,
    double_env,
    events,
    one_summary,
    recv_until_eof,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["tcpserver", "serve"])
def tcpserver(request, tmp_path: Path) -> Iterator[Callable[..., TcpServer]]:
    """Every verdict twice: the wrapper under the real tcpserver, and the same
    wrapper options under ``supervise-smtp serve`` (the SERVE=1 switch): same
    summary, same status.  Parity runs of the bare child stay on tcpserver."""
    kind = ServeServer if request.param == "serve" else TcpServer
    started: list[TcpServer] = []

    def start(argv: list[str], env: dict[str, str] | None = None,
              opts: tuple[str, ...] = ()) -> TcpServer:
        server = kind(argv, tmp_path, env=env, opts=opts)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()

def _parity(tcpserver: Callable[..., TcpServer], argv: list[str], env: dict[str, str],
            scenario: Callable[[TcpServer, bool], object]) -> int:
    """tcpserver's end status for ``scenario`` played against ``argv`` without the wrapper."""
    server = tcpserver(argv, env=env)
    scenario(server, False)
    status = next(iter(server.end_statuses(1).values()))
    server.stop()
    return status


def _swaks(need: Callable[[str], str], port: int, *args: str) -> str:
    run = subprocess.run(
        [need("swaks"), "--server", f"127.0.0.1:{port}", "--from", "e2e@example.com",
         "--helo", "client.test", "--timeout", "20", *args],
        capture_output=True, timeout=60,
    )
    return run.stdout.decode("utf-8", "replace") + run.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------- ok


def _swaks_ok(need: Callable[[str], str]) -> Callable[[TcpServer, bool], str]:
    def scenario(server: TcpServer, wrapped: bool) -> str:
        out = _swaks(need, server.port, "--to", RCPT_OK, "--body", "hello")
        assert re.search(r"^<-  250 ok \d+ qp \d+$", out, re.M), out
        assert re.search(rf"^<-  {BYE}$", out, re.M), out
        return out
    return scenario


def test_verdict_ok_double(tcpserver, wrapper, need, tmp_path):
    """swaks delivers a message to the double and QUITs: verdict=ok, queue_pid = the 250's qp."""
    env = double_env(tmp_path)
    scenario = _swaks_ok(need)
    server = tcpserver([*wrapper, "--", SMTPD], env=env)
    out = scenario(server, True)
    summary, status, _ = one_summary(server)
    qp = QP.search(out)
    assert qp, out
    check_fields(summary, "QUIT answered", verdict="ok", stage="quit", ehlo=1, mail=1, rcpt=1,
           data=1, quit=1, commands=5, tls="false", queued="yes", reply_delivered="yes",
           queue_pid=qp[1], queue_exit=0, queue=ABSENT, last_reply=BYE, exit=0,
           signal=ABSENT)
    assert status == 0
    assert _parity(tcpserver, [SMTPD], env, scenario) == status


def test_verdict_ok_exim(tcpserver, wrapper, need):
    """swaks delivers a message to ``exim -bs -odq`` and QUITs: verdict=ok, no qp to record."""
    exim = need("exim")
    server = tcpserver([*wrapper, "--", exim, "-bs", "-odq"])
    out = _swaks(need, server.port, "--to", "root@localhost", "--body", "hello")
    queued = re.search(r"^<-  250 OK id=(\S+)", out, re.M)
    try:
        assert queued, out
        summary, status, _ = one_summary(server)
        check_fields(summary, "QUIT answered", verdict="ok", stage="quit", ehlo=1, mail=1, rcpt=1,
               data=1, quit=1, commands=5, queued="yes", reply_delivered="yes",
               queue_pid=ABSENT, queue_exit=ABSENT, exit=0)
        assert re.fullmatch(r"221 \S+ closing connection", summary["last_reply"]), summary
        assert status == 0
    finally:
        if queued:
            subprocess.run([exim, "-Mrm", queued[1]], capture_output=True, timeout=30)


# ---------------------------------------------------------------- rejected


def test_verdict_rejected_double(tcpserver, wrapper, tmp_path):
    """RCPT to a domain not in rcpthosts (553), then QUIT: verdict=rejected."""
    server = tcpserver([*wrapper, "--", SMTPD], env=double_env(tmp_path))
    client = SmtpClient(server)
    assert client.reply()[0] == 220
    client.cmd(b"EHLO client.test", 250)
    client.cmd(b"MAIL FROM:<e2e@example.com>", 250)
    client.cmd(f"RCPT TO:<{RCPT_RELAY}>".encode(), 553)
    client.cmd(b"QUIT", 221)
    client.hang_up()
    summary, status, _ = one_summary(server)
    check_fields(summary, "553 sorry, that domain isn't in my list of allowed rcpthosts",
           verdict="rejected", stage="quit", ehlo=1, mail=1, rcpt="0/1", quit=1,
           commands="3/4", data=ABSENT, queued=ABSENT, queue_pid=ABSENT, last_reply=BYE,
           exit=0)
    assert status == 0


def test_verdict_rejected_exim(tcpserver, wrapper, need):
    """exim refuses to relay for a remote host (550), then QUIT: verdict=rejected."""
    exim = need("exim")
    server = tcpserver([*wrapper, "--", exim, "-bs", "-odq", "-oMa", "192.0.2.7"])
    client = SmtpClient(server)
    assert client.reply()[0] == 220
    client.cmd(b"EHLO client.test", 250)
    client.cmd(b"MAIL FROM:<e2e@example.com>", 250)
    client.cmd(b"RCPT TO:<someone@remote.example>", 550)
    client.cmd(b"QUIT", 221)
    client.hang_up()
    summary, status, _ = one_summary(server)
    check_fields(summary, "550 relay not permitted", verdict="rejected", stage="quit", ehlo=1,
           mail=1, rcpt="0/1", quit=1, commands="3/4", queued=ABSENT, exit=0)
    assert summary["last_reply"].startswith("221 "), summary
    assert status == 0


# ---------------------------------------------------------------- bare_lf


# swaks --no-data-fixup sends this as it is, then the CRLF ending its last line
BARE_LF_DATA = (b"From: e2e@example.com\r\nTo: rcpt@example.org\r\nSubject: bare LF\r\n\r\n"
                b"line one\r\nline two\nline three\r\n.")
BARE_LF_BODY_LINE = 6  # the 6th line of the DATA body (headers included) ends in a bare LF


def _swaks_bare_lf(need: Callable[[str], str], path: Path) -> Callable[[TcpServer, bool], str]:
    path.write_bytes(BARE_LF_DATA)

    def scenario(server: TcpServer, wrapped: bool) -> str:
        out = _swaks(need, server.port, "--to", RCPT_OK, "--no-data-fixup",
                     "--data", f"@{path}")
        assert f"<** {SMTPLF}" in out, out
        return out
    return scenario


def test_verdict_bare_lf_seed_scenario(tcpserver, wrapper, need, tmp_path):
    """swaks sends a bare LF through the wrapper to the double behind a qmail-scanner: bare_lf."""
    env = double_env(tmp_path, queue=SCANNER)
    scenario = _swaks_bare_lf(need, tmp_path / "bare-lf.eml")
    server = tcpserver([*wrapper, "--", SMTPD], env=env)
    scenario(server, True)
    summary, status, log = one_summary(server)
    died = [e for e in events(log) if e["event"] == "child_stderr"
            and "closed, parent process died" in e.get("text", "")]
    assert len(died) == 1, log
    scanner = re.fullmatch(r"X-Qmail-Scanner-1\.25st: Process (\d+) closed, parent process died",
                           died[0]["text"])
    assert scanner, died
    assert died[0]["pid"] == summary["pid"]
    assert died[0]["source"] == "qmail-scanner"
    check_fields(summary, f"451 smtplf after 1 bare LF, first at body line {BARE_LF_BODY_LINE}",
           verdict="bare_lf", ehlo=1, mail=1, rcpt=1, data="0/1", unknown=ABSENT,
           queued="no", reply_delivered="yes", bare_lf=1, bare_lf_line=BARE_LF_BODY_LINE,
           queue="parent_died", queue_pid=scanner[1], queue_exit=ABSENT,
           last_reply=SMTPLF, exit=1)
    # swaks QUITs after the 451, into a dead server: counted as sent, never answered
    # (the stage= this leaves is test_verdict_stage_is_where_the_session_failed's matter)
    if "quit" in summary:
        assert (summary["quit"], summary["commands"]) == ("0/1", "3/5"), summary
    else:
        assert summary["commands"] == "3/4", summary
    assert status == 256
    assert _parity(tcpserver, [SMTPD], env, scenario) == status


# ---------------------------------------------------------------- timeout


def test_verdict_timeout(tcpserver, wrapper, tmp_path):
    """control/timeoutsmtpd=1 and an idle client: ``451 timeout (#4.4.2)``, verdict=timeout."""
    server = tcpserver([*wrapper, "--", SMTPD], env=double_env(tmp_path, timeoutsmtpd=1))
    client = SmtpClient(server)
    assert client.reply()[0] == 220
    client.cmd(b"EHLO client.test", 250)
    assert recv_until_eof(client.sock) == b"451 timeout (#4.4.2)\r\n"
    client.close()
    summary, status, _ = one_summary(server)
    check_fields(summary, "451 timeout from the server in stage ehlo", verdict="timeout",
           stage="ehlo", ehlo=1, commands=1, queued=ABSENT,
           last_reply="451 timeout (#4.4.2)", exit=1)
    assert status == 256


# ---------------------------------------------------------------- queue failures


def _qq_session(tcpserver: Callable[..., TcpServer], wrapper: list[str], tmp_path: Path,
                **knobs: str) -> tuple[bytes, dict[str, str], str]:
    """One message to the double with FAKE_QUEUE_* knobs, then QUIT.

    Returns the reply to the end of data, the summary, and the queue program's
    pid (fake-qmail-queue stores the message as FAKE_QUEUE_DIR/<its pid>).
    """
    spool = tmp_path / "queue"
    spool.mkdir()
    server = tcpserver([*wrapper, "--", SMTPD],
                       env=double_env(tmp_path, FAKE_QUEUE_DIR=str(spool), **knobs))
    client = SmtpClient(server)
    _, reply = client.message()
    client.cmd(b"QUIT", 221)
    client.hang_up()
    summary, status, _ = one_summary(server)
    assert status == 0
    stored = [p.name for p in spool.iterdir() if not p.name.endswith(".env")]
    assert len(stored) == 1, stored
    return reply, summary, stored[0]


def test_verdict_queue_temp_fail(tcpserver, wrapper, tmp_path):
    """qq exit 53 (451 disk full) and the client QUITs afterwards: still queue_temp_fail."""
    reply, summary, qpid = _qq_session(tcpserver, wrapper, tmp_path, FAKE_QUEUE_EXIT="53")
    assert reply == b"451 qq write error or disk full (#4.3.0)"
    check_fields(summary, "451 disk_full after DATA", verdict="queue_temp_fail", stage="quit",
           ehlo=1, mail=1, rcpt=1, data="0/1", quit=1, commands="4/5", queued="no",
           reply_delivered="yes", queue_pid=qpid, queue_exit=53, queue="disk_full",
           last_reply=BYE, exit=0)


def test_verdict_queue_perm_fail(tcpserver, wrapper, tmp_path):
    """qq exit 31 (554 permanently rejected), then QUIT: verdict=queue_perm_fail."""
    reply, summary, qpid = _qq_session(tcpserver, wrapper, tmp_path, FAKE_QUEUE_EXIT="31")
    assert reply == b"554 mail server permanently rejected message (#5.3.0)"
    check_fields(summary, "554 perm_rejected after DATA", verdict="queue_perm_fail", stage="quit",
           ehlo=1, mail=1, rcpt=1, data="0/1", quit=1, commands="4/5", queued="no",
           reply_delivered="yes", queue_pid=qpid, queue_exit=31, queue="perm_rejected",
           last_reply=BYE, exit=0)


# exit code (or "KILL": killed by a signal) -> reply text, meaning, exit code(s) on the
# summary: every exit a shared reply stands for; absent where the reply names none
QQ_CASES: dict[str, tuple[str, str | None, int | str | None]] = {
    "0": ("", None, 0),
    "11": ("554 envelope address too long for qq (#5.1.3)", "envelope_too_long", "11,115"),
    "31": ("554 mail server permanently rejected message (#5.3.0)", "perm_rejected", 31),
    "51": ("451 qq out of memory (#4.3.0)", "out_of_memory", 51),
    "52": ("451 qq timeout (#4.3.0)", "qq_timeout", 52),
    "53": ("451 qq write error or disk full (#4.3.0)", "disk_full", 53),
    "54": ("451 qq read error (#4.3.0)", "read_error", 54),
    "55": ("451 qq unable to read configuration (#4.3.0)", "config", 55),
    "56": ("451 qq trouble making network connection (#4.3.0)", "network", 56),
    "61": ("451 qq trouble in home directory (#4.3.0)", "home_directory", 61),
    **{str(c): ("451 qq trouble creating files in queue (#4.3.0)", "queue_files",
                "62,63,64,65,66") for c in range(62, 67)},
    "71": ("451 mail server temporarily rejected message (#4.3.0)", "temp_rejected", 71),
    "72": ("451 connection to mail server timed out (#4.4.1)", "remote_timeout", 72),
    "73": ("451 connection to mail server rejected (#4.4.1)", "remote_rejected", 73),
    "74": ("451 communication with mail server failed (#4.4.2)", "remote_failed", 74),
    "81": ("451 qq internal bug (#4.3.0)", "internal_bug", "81,91"),
    "91": ("451 qq internal bug (#4.3.0)", "internal_bug", "81,91"),
    "120": ("451 unable to exec qq (#4.3.0)", "exec_failed", 120),
    "99": ("451 qq temporary problem (#4.3.0)", "qq_temporary", None),
    "25": ("554 qq permanent problem (#5.3.0)", "qq_permanent", None),
    "KILL": ("451 qq crashed (#4.3.0)", "crashed", None),
}


@pytest.mark.parametrize("code", QQ_CASES, ids=[f"qq{c}" for c in QQ_CASES])
def test_verdict_qq_exit_code_mapped(tcpserver, wrapper, tmp_path, code):
    """Each queue exit code gives qmail's reply, and the summary maps it back to its class."""
    text, meaning, qq_exit = QQ_CASES[code]
    knobs = {"FAKE_QUEUE_SIGNAL": code} if code == "KILL" else {"FAKE_QUEUE_EXIT": code}
    reply, summary, qpid = _qq_session(tcpserver, wrapper, tmp_path, **knobs)
    if code == "0":
        assert reply.decode() == QP.fullmatch(reply.decode())[0], reply
        assert QP.fullmatch(reply.decode())[1] == qpid, reply
        check_fields(summary, "QUIT answered", verdict="ok", data=1, commands=5, queued="yes",
               queue_pid=qpid, queue_exit=0, queue=ABSENT)
        return
    assert reply.decode() == text
    verdict = "queue_perm_fail" if text.startswith("5") else "queue_temp_fail"
    check_fields(summary, f"{text[:3]} {meaning} after DATA", verdict=verdict, stage="quit",
           data="0/1", commands="4/5", queued="no", reply_delivered="yes", queue_pid=qpid,
           queue_exit=qq_exit, queue=meaning, last_reply=BYE, exit=0)


# ---------------------------------------------------------------- client_lost


def _lost_at(stage: str) -> Callable[[TcpServer, bool], None]:
    """A client that leaves (before QUIT) right after ``stage``."""
    def scenario(server: TcpServer, wrapped: bool) -> None:
        client = SmtpClient(server)
        if stage != "connect":
            assert client.reply() == (220, BANNER.encode())
        if stage in ("mail", "rcpt", "data", "data_body"):
            client.cmd(b"EHLO client.test", 250)
            client.cmd(b"MAIL FROM:<e2e@example.com>", 250)
        elif stage == "ehlo":
            client.cmd(b"EHLO client.test", 250)
        if stage in ("rcpt", "data", "data_body"):
            client.cmd(f"RCPT TO:<{RCPT_OK}>".encode(), 250)
        if stage == "data":
            client.sock.sendall(b"DATA\r\n")  # gone before the 354 is read
        elif stage == "data_body":
            client.cmd(b"DATA", 354)
            client.sock.sendall(b"Subject: partial\r\n\r\nhalf a messa")
        client.hang_up()
    return scenario


# stage -> counts and last reply on the summary
LOST_CASES: dict[str, dict[str, object]] = {
    "connect": {"commands": 0, "last_reply": BANNER},
    "banner": {"commands": 0, "last_reply": BANNER},
    "ehlo": {"ehlo": 1, "commands": 1, "last_reply": rf"250 {GREETING}\nPIPELINING\n8BITMIME"},
    "mail": {"ehlo": 1, "mail": 1, "commands": 2, "last_reply": "250 ok"},
    "rcpt": {"ehlo": 1, "mail": 1, "rcpt": 1, "commands": 3, "last_reply": "250 ok"},
    "data": {"ehlo": 1, "mail": 1, "rcpt": 1, "data": "0/1", "commands": "3/4",
             "last_reply": "354 go ahead"},
    "data_body": {"ehlo": 1, "mail": 1, "rcpt": 1, "data": "0/1", "commands": "3/4",
                  "queued": "no", "last_reply": "354 go ahead"},
}


@pytest.mark.parametrize("stage", LOST_CASES)
def test_verdict_client_lost_after_stage(tcpserver, wrapper, tmp_path, stage):
    """A client gone before QUIT is client_lost_after_<stage>; the double's exit 1 passes on."""
    env = double_env(tmp_path)
    argv = [SMTPD]
    if stage == "connect":  # the banner comes late: the client is gone before it
        argv = ["sh", "-c", 'sleep 0.3; exec "$0"', SMTPD]
    scenario = _lost_at(stage)
    server = tcpserver([*wrapper, "--", *argv], env=env)
    scenario(server, True)
    summary, status, _ = one_summary(server)
    seen = stage
    if stage in STAGE_DRIFT and summary["stage"] == STAGE_DRIFT[stage]:
        seen = STAGE_DRIFT[stage]  # the reply came in before the client's EOF was read
    check_fields(summary, f"client closed in stage {seen} before QUIT",
           verdict=f"client_lost_after_{seen}", reply_delivered=ABSENT, queue_exit=ABSENT,
           exit=1, **LOST_CASES[stage])
    if stage not in ("data", "data_body"):  # no queue program started yet
        assert "queue_pid" not in summary, summary
    if stage not in STAGE_DRIFT:  # those: test_verdict_stage_is_where_the_session_failed
        assert summary["stage"] == stage, summary
    assert status == 256
    if stage == "data_body":
        assert _parity(tcpserver, argv, env, scenario) == status


# A reply that reaches the observer after the client left moves stage= on:
# the banner (connect -> banner), the 354 (data -> data_body).
STAGE_DRIFT = {"connect": "banner", "data": "data_body"}

def _bare_lf_then_quit(server: TcpServer, wrapped: bool) -> None:
    """A pipelining client: body with a bare LF, the end of data and QUIT in one write."""
    client = SmtpClient(server)
    client.envelope()
    client.cmd(b"DATA", 354)
    client.sock.sendall(BARE_LF_DATA + b"\r\nQUIT\r\n")
    assert client.reply() == (451, SMTPLF.encode())
    client.hang_up()


@pytest.mark.parametrize("case", ["client_lost_after_connect", "client_lost_after_data",
                                  "bare_lf"])
def test_verdict_stage_is_where_the_session_failed(tcpserver, wrapper, tmp_path, case):
    """The summary's stage is the one its verdict is about, not one reached after it."""
    argv, scenario, stage = [SMTPD], _bare_lf_then_quit, "data_end"
    if case != "bare_lf":
        stage = case.removeprefix("client_lost_after_")
        scenario = _lost_at(stage)
        if stage == "connect":
            argv = ["sh", "-c", 'sleep 0.3; exec "$0"', SMTPD]
    server = tcpserver([*wrapper, "--", *argv], env=double_env(tmp_path))
    scenario(server, True)
    summary, _, _ = one_summary(server)
    assert summary["verdict"] == case, summary
    assert summary["stage"] == stage, summary


def test_verdict_client_lost_after_data_end(tcpserver, wrapper, tmp_path):
    """A client gone right after ``.``: the message is queued but the 250 never reaches it."""
    spool = tmp_path / "queue"
    spool.mkdir()
    env = double_env(tmp_path, FAKE_QUEUE_SLEEP="0.3", FAKE_QUEUE_DIR=str(spool))
    server = tcpserver([*wrapper, "--", SMTPD], env=env)
    client = SmtpClient(server)
    client.envelope()
    client.cmd(b"DATA", 354)
    client.sock.sendall(BODY + b".\r\n")
    client.close()  # the duplicate-mail case: the client will retry this message
    summary, status, _ = one_summary(server)
    stored = [p.name for p in spool.iterdir() if not p.name.endswith(".env")]
    assert len(stored) == 1, stored
    check_fields(summary, "in stage data_end before QUIT", verdict="client_lost_after_data_end",
           stage="data_end", ehlo=1, mail=1, rcpt=1, data=1, commands=4, queued="yes",
           reply_delivered="no", queue_pid=stored[0], queue_exit=0, queue=ABSENT, exit=1,
           helo_name="client.test", mail_from_domain="example.com")
    assert "e2e@" not in str(summary), "the sender's local part is never logged"
    assert re.fullmatch(rf"250 ok \d+ qp {stored[0]}", summary["last_reply"]), summary
    assert status == 256


# ---------------------------------------------------------------- server_crashed


def _segv_after_banner(server: TcpServer, wrapped: bool) -> None:
    """Read the banner, then kill the double with SIGSEGV."""
    client = SmtpClient(server)
    assert client.reply() == (220, BANNER.encode())
    if wrapped:
        pid = int(server.wait_for(r"^event=connect .*child_pid=(\d+)")[1])
    else:
        pid = int(server.wait_for(r"^tcpserver: pid (\d+) from")[1])
    os.kill(pid, signal.SIGSEGV)
    assert recv_until_eof(client.sock) == b""
    client.close()


def test_verdict_server_crashed_sigsegv(tcpserver, wrapper, tmp_path):
    """The double killed by SIGSEGV after its banner: server_crashed, status 11 passed on."""
    env = double_env(tmp_path)
    server = tcpserver([*wrapper, "--", SMTPD], env=env)
    _segv_after_banner(server, True)
    summary, status, _ = one_summary(server)
    check_fields(summary, "child killed by SIGSEGV", verdict="server_crashed", stage="banner",
           commands=0, signal="SIGSEGV", exit=ABSENT, queued=ABSENT, last_reply=BANNER)
    assert status == signal.SIGSEGV
    assert _parity(tcpserver, [SMTPD], env, _segv_after_banner) == status


def test_verdict_server_crashed_softlimit(tcpserver, wrapper, tmp_path, need):
    """``softlimit -m 3000000`` keeps the double from starting: no reply at all, server_crashed
    (whether it exits, as a C qmail-smtpd's loader does, or dies of a signal)."""
    softlimit = need("softlimit")
    server = tcpserver([*wrapper, "--", softlimit, "-m", "3000000", SMTPD],
                       env=double_env(tmp_path))
    with server.connect() as client:
        assert recv_until_eof(client) == b""
    summary, status, _ = one_summary(server)
    if os.WIFSIGNALED(status):  # an interpreter that cannot even start may die of SIGSEGV
        name = signal.Signals(os.WTERMSIG(status)).name
        check_fields(summary, f"child killed by {name}", verdict="server_crashed",
                     stage="connect", commands=0, last_reply=ABSENT, queued=ABSENT)
        return
    # a dynamically linked qmail-smtpd: the loader cannot map libc, exit 127
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) not in (0, 1), status
    code = os.WEXITSTATUS(status)
    check_fields(summary, f"exit {code} with no reply explaining it", verdict="server_crashed",
           stage="connect", commands=0, last_reply=ABSENT, queued=ABSENT, exit=code)


def test_verdict_server_crashed_reason_quotes_the_childs_stderr(tcpserver, wrapper, tmp_path,
                                                                 need):
    """softlimit cannot run the program: exit 111, no reply, and the reason quotes the
    child's last stderr line (softlimit's own words), not just 'no reply explaining it'."""
    softlimit = need("softlimit")
    missing = str(tmp_path / "no-such-qmail-smtpd")
    server = tcpserver([*wrapper, "--", softlimit, "-m", "30000000", missing],
                       env=double_env(tmp_path))
    with server.connect() as client:
        assert recv_until_eof(client) == b""
    summary, status, _ = one_summary(server)
    assert os.WEXITSTATUS(status) == 111, status
    check_fields(summary, "exit 111 with no reply explaining it; its stderr said: softlimit: "
                 f"fatal: unable to run {missing}", verdict="server_crashed", exit=111)


# ---------------------------------------------------------------- wrapper_error


def test_verdict_wrapper_error_missing_program(tcpserver, wrapper, tmp_path):
    """A child that cannot be started: verdict=wrapper_error and exit 111 (temporary)."""
    missing = str(tmp_path / "no-such-qmail-smtpd")
    server = tcpserver([*wrapper, "--", missing])
    with server.connect() as client:
        assert recv_until_eof(client) == b""
    summary, status, _ = one_summary(server)
    check_fields(summary, "no-such-qmail-smtpd", verdict="wrapper_error", stage="connect",
           exit=111)
    assert status == 111 << 8


def test_verdict_ok_quit_before_banner(tcpserver, wrapper, tmp_path):
    """A client that sends QUIT before the banner arrives is still ok, not unknown."""
    server = tcpserver([*wrapper, "--", SMTPD], env=double_env(tmp_path))
    client = SmtpClient(server)
    client.sock.sendall(b"QUIT\r\n")
    deadline = time.monotonic() + 10
    data = b""
    while time.monotonic() < deadline and b"221" not in data:
        chunk = client.sock.recv(4096)
        if not chunk:
            break
        data += chunk
    client.close()
    assert data.startswith(BANNER.encode()), data
    summary, status, _ = one_summary(server)
    check_fields(summary, "QUIT", verdict="ok", quit=1, exit=0)
    assert status == 0



def test_verdict_not_smtp_stream_relayed_and_noted(tcpserver, wrapper, tmp_path):
    """HTTP and a binary blob: relayed whole, one not_smtp line, notes=not_smtp, stage kept."""
    server = tcpserver([*wrapper, "--", SMTPD], env=double_env(tmp_path))
    client = SmtpClient(server)
    assert client.reply() == (220, BANNER.encode())
    blob = b"GET / HTTP/1.1\r\nHost: mx\r\n" + b"X-Pad: 1\r\n" * 30 + bytes(range(256)) * 4096
    client.sock.sendall(blob)
    client.sock.shutdown(socket.SHUT_WR)
    answers = recv_until_eof(client.sock)
    client.close()
    # the double answers every line it reads (one per LF) and exits on EOF
    assert answers.count(b"502 unimplemented (#5.5.1)\r\n") == blob.count(b"\n")
    summary, status, log = one_summary(server)
    check_fields(summary, "before QUIT", verdict="client_lost_after_banner", stage="banner",
           notes="not_smtp", bytes_in=len(blob), exit=1)
    [line] = [e for e in events(log) if e["event"] == "not_smtp"]
    assert line["unknown_lines"] == "20"
    assert status == 256


def test_verdict_not_smtp_then_quit_is_rejected(tcpserver, wrapper, tmp_path):
    """Junk the double refused, then a QUIT the observer no longer reads: rejected."""
    server = tcpserver([*wrapper, "--", SMTPD], env=double_env(tmp_path))
    client = SmtpClient(server)
    assert client.reply() == (220, BANNER.encode())
    client.sock.sendall(b"X-Junk: 1\r\n" * 25 + b"QUIT\r\n")
    answers = recv_until_eof(client.sock)
    client.close()
    assert answers.endswith(f"{BYE}\r\n".encode())
    summary, status, _ = one_summary(server)
    check_fields(summary, "client not speaking SMTP", verdict="rejected", notes="not_smtp", exit=0)
    assert status == 0
