"""Opt-in wrapper timeouts: 421 to the client, child stopped, verdict timeout."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from helpers import TESTS_DIR, event, events

FAKE = "tests/fakes/fake-qmail-smtpd"


def _read_until_eof(sock: socket.socket, limit_s: float = 20.0) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.e2e
@pytest.mark.parametrize(("option", "which"), [("--idle-timeout", "idle-timeout"),
                                               ("--max-session", "max-session")])
def test_timeouts_fire_with_421_and_verdict(tcpserver, wrapper, option, which):
    """An idle client behind the double gets 421, the child is stopped, verdict=timeout."""
    server = tcpserver([*wrapper, option, "1", "--", FAKE])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"220 ")
        sock.sendall(b"HELO client.example\r\n")
        time.sleep(0.3)
        rest = _read_until_eof(sock)
    assert rest.startswith(b"250 ")
    assert rest.endswith(b" timeout\r\n") and b"\r\n421 4.4.2 " in rest
    deadline = time.monotonic() + 15
    while not any(e["event"] == "summary" for e in events(server.log())):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    summary = event(server.log(), "summary")
    assert summary["verdict"] == "timeout"
    assert summary["reason"] == f"wrapper --{which} fired in stage ehlo"
    # we close its socket and send SIGTERM: it dies by the signal or exits 1 on the EOF
    assert summary.get("signal") == "SIGTERM" or summary.get("exit") == "1", summary


# ------------------------------------------------- the end-of-data window
# Between the client's ``.`` and qmail-smtpd's reply the message may already be
# in the queue: a wrapper timeout fired there makes the client retry a message
# that was delivered.  The queue program here stores the message at once, then
# takes QUEUE_S seconds to exit (qmail-scanner on a big message does), so
# qmail-smtpd's ``250 ok`` comes QUEUE_S seconds after the ``.``.

QUEUE = str(TESTS_DIR / "fakes" / "fake-qmail-queue")
QUEUE_S = "4"
BODY = b"From: e2e@example.com\r\nTo: rcpt@example.org\r\nSubject: timeouts\r\n\r\nhello\r\n"


def _env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The double with control/rcpthosts and a slow fake-qmail-queue storing into a spool."""
    control = tmp_path / "control"
    control.mkdir()
    (control / "rcpthosts").write_text("example.org\n")
    spool = tmp_path / "queue"
    spool.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAKE_", "QMAILQUEUE", "RELAYCLIENT", "DATABYTES"))}
    env.update(FAKE_QMAIL_CONTROL=str(control), QMAILQUEUE=QUEUE, FAKE_QUEUE_DIR=str(spool),
               FAKE_QUEUE_SLEEP=QUEUE_S)
    return env, spool


def _line(sock: socket.socket, buf: bytearray) -> bytes:
    """One reply line (CRLF included); b"" at EOF."""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            line = bytes(buf)
            buf.clear()
            return line
        buf += data
    end = buf.index(b"\n") + 1
    line = bytes(buf[:end])
    del buf[:end]
    return line


def _envelope(sock: socket.socket, buf: bytearray) -> None:
    """Banner, EHLO (multi-line reply), MAIL, RCPT, DATA: each accepted."""
    assert _line(sock, buf).startswith(b"220 ")
    sock.sendall(b"EHLO client.test\r\n")
    while (line := _line(sock, buf)).startswith(b"250-"):
        pass
    assert line.startswith(b"250 "), line
    for cmd, code in ((b"MAIL FROM:<e2e@example.com>", b"250 "),
                      (b"RCPT TO:<rcpt@example.org>", b"250 "), (b"DATA", b"354 ")):
        sock.sendall(cmd + b"\r\n")
        line = _line(sock, buf)
        assert line.startswith(code), (cmd, line)


def _summary(server) -> tuple[dict[str, str], str]:
    server.end_statuses(1, timeout=30)
    log = server.log()
    assert [e["event"] for e in events(log)].count("summary") == 1, log
    return event(log, "summary"), log


@pytest.mark.e2e
@pytest.mark.parametrize(("option", "which"), [("--idle-timeout", "idle-timeout"),
                                               ("--max-session", "max-session")])
def test_timeout_waits_for_the_reply_to_end_of_data(tcpserver, wrapper, tmp_path, option, which):
    """A timer due while the queue program runs fires only after ``250 ok`` reached the client.

    The message is queued once, the client hears ``250 ok`` (it will not
    retry), and only then, the client staying idle, ``421``: verdict timeout
    with queued=yes and the reply delivered, never queued=unknown.
    """
    env, spool = _env(tmp_path)
    server = tcpserver([*wrapper, option, "2", "--", FAKE], env=env)
    with server.connect(timeout=30) as sock:
        buf = bytearray()
        _envelope(sock, buf)
        sock.sendall(BODY + b".\r\n")
        reply = _line(sock, buf)  # after QUEUE_S seconds, longer than the timer
        rest = bytes(buf) + _read_until_eof(sock, 30)
    assert reply.startswith(b"250 ok "), (reply, rest)
    assert rest.startswith(b"421 4.4.2 ") and rest.endswith(b" timeout\r\n"), rest
    summary, log = _summary(server)
    stored = [p.name for p in spool.iterdir() if not p.name.endswith(".env")]
    assert len(stored) == 1, stored
    assert summary["verdict"] == "timeout", log
    assert summary["reason"].startswith(f"wrapper --{which} fired in stage "), summary
    assert summary["queued"] == "yes" and summary["reply_delivered"] == "yes", summary
    assert summary["queue_pid"] == stored[0] and summary["queue_exit"] == "0", summary
    assert summary["last_reply"].startswith("250 ok "), summary
    assert event(log, "disconnect")["first_close"] == "wrapper", log


@pytest.mark.e2e
def test_timeout_waits_for_the_reply_with_quit_pipelined(tcpserver, wrapper, tmp_path):
    """QUIT pipelined behind the ``.``, --max-session due meanwhile: ``250 ok`` first, queued once.

    Whether the 221 or our 421 follows depends on how the child's two replies
    are read; the reply to the end of data always reaches the client.
    """
    env, spool = _env(tmp_path)
    server = tcpserver([*wrapper, "--max-session", "2", "--", FAKE], env=env)
    with server.connect(timeout=30) as sock:
        buf = bytearray()
        _envelope(sock, buf)
        sock.sendall(BODY + b".\r\nQUIT\r\n")  # QUIT pipelined behind the end of data
        reply = _line(sock, buf)
        rest = bytes(buf) + _read_until_eof(sock, 30)
    assert reply.startswith(b"250 ok "), (reply, rest)
    summary, log = _summary(server)
    stored = [p.name for p in spool.iterdir() if not p.name.endswith(".env")]
    assert len(stored) == 1, stored
    assert summary["queued"] == "yes" and summary["reply_delivered"] == "yes", summary


@pytest.mark.e2e
def test_idle_timeout_in_message_body_still_fires(tcpserver, wrapper, tmp_path):
    """Idle in the middle of the body (no end of data yet): 421, nothing queued."""
    env, spool = _env(tmp_path)
    server = tcpserver([*wrapper, "--idle-timeout", "1", "--", FAKE], env=env)
    with server.connect(timeout=30) as sock:
        buf = bytearray()
        _envelope(sock, buf)
        sock.sendall(BODY)  # and no ".": the client stalls
        rest = bytes(buf) + _read_until_eof(sock, 30)
    assert rest.startswith(b"421 4.4.2 ") and rest.endswith(b" timeout\r\n"), rest
    summary, log = _summary(server)
    assert not [p for p in spool.iterdir()], log
    assert summary["verdict"] == "timeout", log
    assert summary["reason"] == "wrapper --idle-timeout fired in stage data_body", summary
    assert summary.get("queued") == "no", summary
