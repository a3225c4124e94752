"""Verdicts a client cannot falsify, and the replies a postmaster needs.

Real tcpserver, the wrapper, and the qmail-smtpd test double (its command
parsing checked alone in tests/process/test_fakes.py).  Each test compares what
the client sent and got, what was queued (the double's queue directory) and
the one summary line, parsed strictly.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from helpers import (
    BODY,
    BYE,
    RCPT_OK,
    RCPT_RELAY,
    SMTPD,
    SmtpClient,
    check_fields,
    double_env,
    events,
    one_summary,
    recv_until_eof,
    wrapper_argv,
)

pytestmark = pytest.mark.e2e

UNIMPL = (502, b"502 unimplemented (#5.5.1)")


def _queued(tmp_path: Path) -> int:
    """Messages the double's queue program stored."""
    queue = tmp_path / "queue"
    return len([p for p in queue.iterdir() if p.suffix != ".env"]) if queue.exists() else 0


def _start(tcpserver, wrapper, tmp_path):
    env = double_env(tmp_path, FAKE_QUEUE_DIR=str(tmp_path / "queue"))
    (tmp_path / "queue").mkdir(exist_ok=True)
    return tcpserver([*wrapper, "--", SMTPD], env=env)


def _quit(c: SmtpClient) -> None:
    c.cmd(b"QUIT", 221)
    c.hang_up()


def _deliver(c: SmtpClient) -> None:
    """MAIL, RCPT, DATA, the message accepted, QUIT."""
    c.cmd(b"MAIL FROM:<e2e@example.com>", 250)
    c.cmd(f"RCPT TO:<{RCPT_OK}>".encode(), 250)
    c.cmd(b"DATA", 354)
    c.sock.sendall(BODY + b".\r\n")
    assert c.reply()[0] == 250
    _quit(c)


def test_data_nul_is_data_and_the_message_is_seen(tcpserver, wrapper, tmp_path):
    """`DATA\\0`: qmail-smtpd reads DATA and queues; the summary says so."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    c.envelope()
    c.cmd(b"DATA\0", 354)
    c.sock.sendall(BODY + b".\r\n")
    assert c.reply()[0] == 250
    _quit(c)
    summary, status, _ = one_summary(server)
    check_fields(summary, "QUIT answered", verdict="ok", data=1, queued="yes", exit=0)
    assert _queued(tmp_path) == 1 and status == 0


def test_junk_then_a_message_is_not_hidden_by_not_smtp(tcpserver, wrapper, tmp_path):
    """20 junk lines (502 each), then a normal message: ok and queued, not rejected."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    assert c.reply()[0] == 220
    for i in range(20):
        assert c.cmd(b"junk line %d" % i, 502) == UNIMPL[1]
    c.cmd(b"EHLO client.test", 250)
    _deliver(c)
    summary, _, log = one_summary(server)
    check_fields(summary, "QUIT answered", verdict="ok", data=1, queued="yes", notes=None)
    assert _queued(tmp_path) == 1
    assert [e["event"] for e in events(log)].count("not_smtp") == 1


@pytest.mark.parametrize("last", [b"", b" LAST"])
def test_refused_bdat_then_a_message(tcpserver, wrapper, tmp_path, last):
    """BDAT (no CHUNKING: 502), its "chunk" read as commands, then a message: ok, queued;
    BDAT ... LAST is no queue failure (it used to page the postmaster at will)."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    assert c.reply()[0] == 220
    c.cmd(b"EHLO client.test", 250)
    c.cmd(b"BDAT 100000" + last, 502)
    _deliver(c)
    summary, _, _ = one_summary(server)
    check_fields(summary, "QUIT answered", verdict="ok", data=1, queued="yes", bdat="0/1")
    assert _queued(tmp_path) == 1


def test_tls_first_byte_then_plain_smtp_is_not_tls(tcpserver, wrapper, tmp_path):
    """0x16 before the banner, then plain SMTP: qmail answers 502 and queues the message;
    no tls_failed, tls=false (TLS only once the server speaks it)."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    c.sock.sendall(b"\x16\x03\x01 hello?\r\n")
    assert c.reply()[0] == 220
    assert c.reply() == UNIMPL
    c.cmd(b"EHLO client.test", 250)
    _deliver(c)
    summary, _, _ = one_summary(server)
    check_fields(summary, "QUIT answered", verdict="ok", tls="false", queued="yes")


def test_refused_data_with_a_pipelined_body_queues_nothing(tcpserver, wrapper, tmp_path):
    """DATA refused (503), 64 KiB+ of body pipelined anyway (502 a line), '.', QUIT:
    nothing queued and the summary says so (it said ok data=1 queued=yes)."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    assert c.reply()[0] == 220
    c.cmd(b"EHLO client.test", 250)
    lines = 3000
    body = b"".join(b"body line %05d nobody asked for\r\n" % i for i in range(lines))
    assert len(body) > 65536
    c.sock.sendall(b"DATA\r\n" + body + b".\r\nQUIT\r\n")
    assert c.reply()[0] == 503
    for _ in range(lines + 1):
        assert c.reply() == UNIMPL
    assert c.reply()[0] == 221
    c.hang_up()
    summary, _, _ = one_summary(server)
    check_fields(summary, "", verdict="rejected", data="0/1", queued=None, quit=1)
    assert summary["last_reply"] == BYE
    assert _queued(tmp_path) == 0


def test_half_close_after_dot_reply_delivered(tcpserver, wrapper, tmp_path):
    """'.', then SHUT_WR, then read: the client gets its 250, so reply_delivered=yes."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    c.envelope()
    c.cmd(b"DATA", 354)
    c.sock.sendall(BODY + b".\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    rest = recv_until_eof(c.sock)
    c.sock.close()
    assert rest.startswith(b"250 ok "), rest
    summary, _, _ = one_summary(server)
    check_fields(summary, "", verdict="client_lost_after_data_end", queued="yes",
           reply_delivered="yes")
    assert _queued(tmp_path) == 1


def test_refused_recipient_is_logged_with_its_reply(tcpserver, wrapper, tmp_path):
    """rcpthosts refusal, then an accepted recipient: one reject line names the recipient
    and the reply; the summary counts it; the accepted RCPT is not logged."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    assert c.reply()[0] == 220
    c.cmd(b"EHLO client.test", 250)
    c.cmd(b"MAIL FROM:<e2e@example.com>", 250)
    c.cmd(f"RCPT TO:<{RCPT_RELAY}>".encode(), 553)
    c.cmd(f"RCPT TO:<{RCPT_OK}>".encode(), 250)
    c.cmd(b"DATA", 354)
    c.sock.sendall(BODY + b".\r\n")
    assert c.reply()[0] == 250
    _quit(c)
    summary, _, log = one_summary(server)
    rejects = [e for e in events(log) if e["event"] == "reject"]
    assert len(rejects) == 1
    assert (rejects[0]["code"], rejects[0]["command"], rejects[0]["arg"],
            rejects[0]["in_stage"]) == ("553", "RCPT", RCPT_RELAY, "rcpt")
    assert rejects[0]["text"] == "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
    check_fields(summary, "QUIT answered", verdict="ok", rcpt="1/2", rejects=1,
           rejects_unlogged=None)


def test_dictionary_attack_is_bounded_in_the_log(tcpserver, wrapper, tmp_path):
    """1,000 refused RCPTs: ten reject lines, all counted on the summary."""
    server = _start(tcpserver, wrapper, tmp_path)
    c = SmtpClient(server)
    assert c.reply()[0] == 220
    c.cmd(b"EHLO client.test", 250)
    c.cmd(b"MAIL FROM:<e2e@example.com>", 250)
    c.sock.sendall(b"".join(b"RCPT TO:<u%d@elsewhere.test>\r\n" % i for i in range(1000)))
    for _ in range(1000):
        assert c.reply()[0] == 553
    _quit(c)
    summary, _, log = one_summary(server)
    assert [e["event"] for e in events(log)].count("reject") == 10
    check_fields(summary, "", verdict="rejected", rejects=1000, rejects_unlogged=990)


@pytest.fixture(params=["tcpserver", "serve"])
def either(request, tmp_path, need):
    """The qmail-smtpd double (queue directory tmp_path/queue) under tcpserver + wrapper,
    or under serve: factory taking extra environment."""
    need("tcpserver")
    started = []

    def start(**extra: str):
        from test_serve import Listener

        (tmp_path / "queue").mkdir(exist_ok=True)
        env = double_env(tmp_path, FAKE_QUEUE_DIR=str(tmp_path / "queue"), **extra)
        prog = [*wrapper_argv(), "--", SMTPD] if request.param == "tcpserver" else [SMTPD]
        started.append(Listener(request.param, ["-v", "-R", "-H", "-l", "0"], prog, tmp_path,
                                env=env))
        return started[-1]

    yield start
    for listener in started:
        listener.stop()


def _pipelined_end(c: SmtpClient, wait_s: float = 0.0) -> None:
    """The envelope and DATA in lockstep, then the last body line, '.' and QUIT in one
    write, and close without reading another byte (after ``wait_s``)."""
    c.envelope()
    c.cmd(b"DATA", 354)
    c.sock.sendall(BODY + b".\r\nQUIT\r\n")
    if wait_s:
        time.sleep(wait_s)
    c.sock.close()


def _summaries(server, count: int) -> list[dict[str, str]]:
    server.end_statuses(count)
    found = [e for e in events(server.log()) if e["event"] == "summary"]
    assert len(found) == count, server.log()
    return found


def test_unread_250_is_never_reply_delivered(either, tmp_path):
    """'.' and QUIT in one write, then close without reading: the message is queued, the
    client never saw its 250 and will send it again, so reply_delivered is never yes."""
    server = either()
    for _ in range(40):
        _pipelined_end(SmtpClient(server))
    summaries = _summaries(server, 40)
    assert _queued(tmp_path) == 40
    for summary in summaries:
        assert summary["queued"] == "yes", summary
        assert summary["reply_delivered"] in ("no", "unknown"), summary
        assert summary["verdict"] == "client_lost_after_data_end", summary


def test_pipelined_quit_client_gone_before_any_reply_is_not_ok(either, tmp_path):
    """'.' and QUIT pipelined, the queue slow, the client gone before its reply: the 250
    and the 221 went to nobody, a duplicate in the making, not 'QUIT answered'."""
    server = either(FAKE_QUEUE_SLEEP="1.5")
    _pipelined_end(SmtpClient(server), wait_s=0.3)
    [summary] = _summaries(server, 1)
    check_fields(summary, "before the replies to its pipelined commands",
                 verdict="client_lost_after_data_end", queued="yes", reply_delivered="no",
                 stage="data_end", quit=1)
    assert _queued(tmp_path) == 1
