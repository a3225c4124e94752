"""fds 0, 1, 2 as tcpserver may hand them over: one of them closed.

A run script without ``exec 2>&1`` and no log service starts the wrapper with
fd 2 closed.  The first descriptor the wrapper creates would then land on fd
2 and its event lines would be written into the SMTP session.  Daemontools
practice: fd 2 closed gets /dev/null (the lines are lost, the mail is not);
fd 0 or 1 closed means there is no client: exit 111 with a message, nothing
started.  Each case runs under real tcpserver, the descriptor closed by a
``sh -c 'exec N>&-; exec "$@"'`` between tcpserver and the wrapper.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import TESTS_DIR, TcpServer, events, recv_until_eof

pytestmark = pytest.mark.e2e

SMTPD = str(TESTS_DIR / "fakes" / "fake-qmail-smtpd")
QUEUE = str(TESTS_DIR / "fakes" / "fake-qmail-queue")
BODY = b"From: e2e@example.com\r\nTo: rcpt@example.org\r\nSubject: fds\r\n\r\nhello\r\n"


def _closing(fd: int) -> list[str]:
    """argv prefix that runs the rest with ``fd`` closed, as a careless run script would."""
    redirect = "2>&-" if fd == 2 else f"{fd}<&-"
    return ["/bin/sh", "-c", f'exec {redirect}; exec "$@"', "sh"]


def _env(tmp_path: Path, spool: Path) -> dict[str, str]:
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    (control / "rcpthosts").write_text("example.org\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAKE_", "QMAILQUEUE", "RELAYCLIENT", "DATABYTES"))}
    env.update(FAKE_QMAIL_CONTROL=str(control), QMAILQUEUE=QUEUE, FAKE_QUEUE_DIR=str(spool))
    return env


def _reply(sock: socket.socket, buf: list[bytes]) -> bytes:
    """One whole (multi-line) reply."""
    lines = []
    while True:
        while b"\r\n" not in buf[0]:
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"EOF before a reply, got {buf[0]!r} after {lines!r}")
            buf[0] += data
        line, buf[0] = buf[0].split(b"\r\n", 1)
        lines.append(line)
        if line[3:4] != b"-":
            return b"\n".join(lines)


def _session(server: TcpServer, during: Callable[[], None] = lambda: None) -> list[bytes]:
    """EHLO, MAIL, RCPT, DATA, the message, QUIT: every reply, in order."""
    sock = server.connect()
    buf = [b""]
    replies = [_reply(sock, buf)]
    during()
    for line in (b"EHLO client.test", b"MAIL FROM:<e2e@example.com>",
                 b"RCPT TO:<rcpt@example.org>", b"DATA"):
        sock.sendall(line + b"\r\n")
        replies.append(_reply(sock, buf))
    sock.sendall(BODY + b".\r\n")
    replies.append(_reply(sock, buf))
    sock.sendall(b"QUIT\r\n")
    replies.append(_reply(sock, buf))
    assert buf[0] + recv_until_eof(sock) == b""
    sock.close()
    # the 250's time and qp differ from run to run
    return [re.sub(rb"^250 ok \d+ qp \d+$", b"250 ok T qp N", r) for r in replies]


def _stored(spool: Path) -> list[bytes]:
    return [p.read_bytes() for p in spool.iterdir() if not p.name.endswith(".env")]


def test_fd2_closed_session_is_untouched(tcpserver, wrapper, tmp_path):
    """fd 2 closed: the session gets exactly the replies it gets without the wrapper.

    Before the fix the socketpair landed on fd 2, the connect line went to
    qmail-smtpd as a command and every reply after it was one step off
    (EHLO got 502, QUIT got 250).  Now fd 2 is /dev/null while the session
    runs, the message is queued once, and the exit status is the child's.
    """
    plain_spool, wrapped_spool = tmp_path / "plain", tmp_path / "wrapped"
    plain_spool.mkdir()
    wrapped_spool.mkdir()
    plain = tcpserver([SMTPD], env=_env(tmp_path, plain_spool))
    want = _session(plain)
    assert list(plain.end_statuses(1).values()) == [0]
    assert want[-1] == b"221 fake.example" and want[-2] == b"250 ok T qp N", want

    server = tcpserver([*_closing(2), *wrapper, "--", SMTPD],
                       env=_env(tmp_path, wrapped_spool))
    fd2: list[str] = []

    def look_at_fd2() -> None:
        pid = int(server.wait_for(r"^tcpserver: pid (\d+) from")[1])
        fd2.append(os.readlink(f"/proc/{pid}/fd/2"))

    assert _session(server, look_at_fd2) == want
    assert fd2 == ["/dev/null"]
    assert list(server.end_statuses(1).values()) == [0]
    stored = _stored(wrapped_spool)
    assert len(stored) == 1 and stored[0].endswith(BODY.replace(b"\r\n", b"\n")), stored
    assert events(server.log()) == []  # the lines went to /dev/null, not anywhere else


@pytest.mark.parametrize("fd", [0, 1], ids=["fd0", "fd1"])
def test_fd01_closed_exits_111_with_a_message(tcpserver, wrapper, tmp_path, fd):
    """fd 0 or 1 closed (no client): exit 111, a fatal line on fd 2, the child never started."""
    spool = tmp_path / "spool"
    spool.mkdir()
    marker = tmp_path / "child-ran"
    child = ["/bin/sh", "-c", f': > {marker}; exec "$@"', "sh", SMTPD]
    server = tcpserver([*_closing(fd), *wrapper, "--", *child], env=_env(tmp_path, spool))
    with server.connect() as sock:
        assert recv_until_eof(sock) == b""
    assert list(server.end_statuses(1).values()) == [111 << 8]
    log = server.log()
    assert f"supervise-smtp: fatal: fd {fd} is closed: no client connection\n" in log, log
    summary = [e for e in events(log) if e["event"] == "summary"]
    assert len(summary) == 1 and summary[0]["verdict"] == "wrapper_error", log
    assert summary[0]["exit"] == "111"
    assert not marker.exists()
