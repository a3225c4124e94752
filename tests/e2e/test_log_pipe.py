"""A log service that stops reading must not stall the mail.

``tcpserver -R -H -l 0 127.0.0.1 PORT supervise-smtp --events all --
fake-qmail-smtpd`` with its fd 2 a pipe that the test does not read (no
``-v``, so tcpserver itself writes nothing there): the pipe fills after some
twenty sessions, and before the fix the next wrapper blocked in its first
write, before the banner, and every later connection with it.  Now each
session must get its banner and its ``250 ok`` at the end of data; lines
beyond a wrapper's bounded backlog are lost and counted (``log_dropped=N``
on its summary).  At the end the test reads the pipe: every line that got
through parses strictly.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import strict_logfmt as strict
from helpers import TESTS_DIR, free_port, kill_group, no_core_dumps

pytestmark = pytest.mark.e2e

SMTPD = str(TESTS_DIR / "fakes" / "fake-qmail-smtpd")
QUEUE = str(TESTS_DIR / "fakes" / "fake-qmail-queue")
SESSIONS = 150
NOOPS = 100  # 200 lines with --events all: more than one wrapper's backlog
TIMEOUT_S = 10.0  # per read: generous, only there to fail instead of hanging


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? (/proc/net/tcp: no probe connection.)"""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        return any(f[1] == want and f[3] == "0A" for f in (line.split() for line in fh))


class Silent:
    """tcpserver whose stderr is a pipe; the test holds the read end and reads it last."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.read_fd, write_fd = os.pipe()
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["tcpserver", "-R", "-H", "-l", "0", "127.0.0.1", str(self.port), *argv],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=write_fd,
                env=env, start_new_session=True, preexec_fn=no_core_dumps)
            deadline = time.monotonic() + TIMEOUT_S
            while self.proc.poll() is None and not _listening(self.port):
                assert time.monotonic() < deadline, "tcpserver did not listen"
                time.sleep(0.01)
            if self.proc.poll() is None:
                break
        os.close(write_fd)
        assert self.proc is not None and self.proc.poll() is None, "tcpserver did not start"
        self.log = b""
        self.reader: threading.Thread | None = None
        self.stopping = False

    def start_reading(self) -> None:
        """From now on the log service reads (in a thread): what is pending flows."""
        def read() -> None:
            while not self.stopping:
                if select.select([self.read_fd], [], [], 0.05)[0]:
                    data = os.read(self.read_fd, 65536)
                    if not data:
                        return
                    self.log += data
        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def stop(self) -> None:
        self.stopping = True
        if self.reader is not None:
            self.reader.join(TIMEOUT_S)
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_group(proc)
        os.close(self.read_fd)


@pytest.fixture
def silent_server(tmp_path: Path, wrapper: list[str], need) -> Iterator[Silent]:
    need("tcpserver")
    control = tmp_path / "control"
    control.mkdir()
    (control / "rcpthosts").write_text("example.org\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "QMAILQUEUE"))}
    env.update(FAKE_QMAIL_CONTROL=str(control), QMAILQUEUE=QUEUE)
    server = Silent([*wrapper, "--events", "all", "--", SMTPD], env)
    yield server
    server.stop()


class Client:
    """A raw SMTP client: every reply read under TIMEOUT_S."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.replies = self.sock.makefile("rb")

    def expect(self, code: bytes, what: str) -> bytes:
        while True:
            try:
                line = self.replies.readline()
            except TimeoutError:
                raise AssertionError(f"no reply to {what} within {TIMEOUT_S} s") from None
            assert line[:3] == code, (what, line)
            if line[3:4] != b"-":
                return line

    def send(self, command: bytes, code: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        return self.expect(code, command.decode()[:20])

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def _deliver(client: Client, n: int) -> None:
    client.send(b"MAIL FROM:<e2e@example.com>", b"250")
    client.send(b"RCPT TO:<rcpt@example.org>", b"250")
    client.send(b"DATA", b"354")
    assert client.send(b"Subject: %d\r\n\r\nhello\r\n." % n, b"250").startswith(b"250 ok ")
    client.send(b"QUIT", b"221")


def test_unread_log_pipe_does_not_stall_mail(silent_server):
    """150 sessions with a log pipe nobody reads: each gets its banner and 250 ok."""
    started = time.monotonic()
    for n in range(SESSIONS):
        client = Client(silent_server.port)
        try:
            client.expect(b"220", f"the banner of session {n + 1}")
            client.send(b"EHLO client.test", b"250")
            _deliver(client, n)
        finally:
            client.close()
    elapsed = time.monotonic() - started

    # One more, chatty: its lines overflow its backlog while nobody reads;
    # then the log service starts reading, and its summary says what was lost.
    client = Client(silent_server.port)
    try:
        client.expect(b"220", "the banner of the last session")
        port = client.sock.getsockname()[1]
        client.send(b"EHLO client.test", b"250")
        for _ in range(NOOPS):
            client.send(b"NOOP", b"250")
        silent_server.start_reading()
        _deliver(client, SESSIONS)
    finally:
        client.close()

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        lines = silent_server.log.decode("ascii").splitlines()
        parsed = [strict.parse(line) for line in lines]  # every line that got through
        mine = [p for p in parsed if p["event"] == "connect" and p["remote_port"] == str(port)]
        pid = mine[0]["pid"] if mine else None
        summary = [p for p in parsed if p["event"] == "summary" and p["pid"] == pid]
        if summary:
            break
        assert time.monotonic() < deadline, f"no summary of the last session: {lines[-5:]}"
        time.sleep(0.05)
    assert summary[0]["verdict"] == "ok" and summary[0]["queued"] == "yes", summary
    assert int(summary[0]["log_dropped"]) >= 2 * NOOPS - 64, summary
    summaries = [p for p in parsed if p["event"] == "summary"]
    assert len(summaries) < SESSIONS, "the pipe did fill up: the lines of many sessions were lost"
    print(f"{SESSIONS} sessions in {elapsed:.1f} s with an unread log pipe; "
          f"{len(lines)} lines and {len(summaries)} summaries got through; "
          f"log_dropped={summary[0]['log_dropped']} on the last one")
