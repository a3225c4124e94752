"""--alert-exec end to end under a real tcpserver, in front of fake-qmail-smtpd.

``tcpserver -v ... supervise-smtp --alert-exec SCRIPT -- fake-qmail-smtpd``.
The double's queue program is fake-qmail-queue; ``FAKE_QUEUE_EXIT=53`` makes
it fail with "write error or disk full", so qmail-smtpd answers 451 after the
message and the summary says ``verdict=queue_temp_fail`` (an alert by default);
without it the message is queued and the verdict is ``ok`` (no alert).  The
alert script appends one line per call to a file, which is polled; no timing
is asserted, only orderings (tcpserver's ``end`` line while the alert program
still runs).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from helpers import TESTS_DIR, TcpServer, event, events, recv_until_eof

pytestmark = pytest.mark.e2e

FAKES = TESTS_DIR / "fakes"
SMTPD = str(FAKES / "fake-qmail-smtpd")
QUEUE = str(FAKES / "fake-qmail-queue")
BODY = b"From: e2e@example.com\r\nTo: rcpt@example.org\r\nSubject: alert\r\n\r\nhello\r\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAKE_", "QMAILQUEUE", "RELAYCLIENT", "DATABYTES",
                                "SUPERVISE_SMTP_"))}
    env.update(QMAILQUEUE=QUEUE, **extra)
    return env


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "alert.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _reply(sock: socket.socket, buf: bytearray) -> bytes:
    """The next complete SMTP reply (last line ``NNN text``), without CRLF."""
    while True:
        lines = bytes(buf).split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                del buf[:len(b"\r\n".join(lines[:i + 1])) + 2]
                return line
        data = sock.recv(4096)
        assert data, f"EOF while waiting for a reply: {bytes(buf)!r}"
        buf += data


def _deliver(server: TcpServer) -> bytes:
    """One message and QUIT; the reply to the end of data.  Waits for the server's EOF."""
    with server.connect() as sock:
        buf = bytearray()
        assert _reply(sock, buf).startswith(b"220 ")
        for cmd in (b"EHLO client.test", b"MAIL FROM:<e2e@example.com>",
                    b"RCPT TO:<rcpt@example.org>", b"DATA"):
            sock.sendall(cmd + b"\r\n")
            _reply(sock, buf)
        sock.sendall(BODY + b".\r\n")
        end = _reply(sock, buf)
        sock.sendall(b"QUIT\r\n")
        assert _reply(sock, buf).startswith(b"221 ")
        assert recv_until_eof(sock, timeout=10) == b""
    return end


def _calls(path: Path, count: int, timeout: float = 15.0) -> list[str]:
    """The alert script's lines once there are ``count``, after a grace for extra ones."""
    deadline = time.monotonic() + timeout
    while not path.exists() or len(path.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"alert program called fewer than {count} times"
        time.sleep(0.02)
    time.sleep(0.5)
    return path.read_text().splitlines()


def _counter(tmp_path: Path) -> tuple[str, Path]:
    calls = tmp_path / "calls.txt"
    line = '"$SUPERVISE_SMTP_VERDICT $SUPERVISE_SMTP_SUPPRESSED $SUPERVISE_SMTP_QUEUE_EXIT"'
    return _script(tmp_path, f"echo {line} >> {calls}\n"), calls


def test_alert_called_once_per_abnormal_verdict(tcpserver, wrapper, tmp_path):
    """Each queue_temp_fail connection runs the alert program once, with the summary fields."""
    prog, calls = _counter(tmp_path)
    server = tcpserver([*wrapper, "--alert-exec", prog, "--", SMTPD],
                       env=_env(FAKE_QUEUE_EXIT="53"))
    for _ in range(2):
        assert _deliver(server) == b"451 qq write error or disk full (#4.3.0)"
    server.end_statuses(2)
    assert _calls(calls, 2) == ["queue_temp_fail 0 53"] * 2
    log = server.log()
    alerts = [e for e in events(log) if e["event"] == "alert"]
    assert [(a["verdict"], a["action"], a["suppressed_before"]) for a in alerts] == [
        ("queue_temp_fail", "sent", "0")] * 2
    assert all(int(a["alert_pid"]) > 0 for a in alerts)


def test_alert_not_called_for_ok(tcpserver, wrapper, tmp_path):
    """A message queued normally (verdict=ok) runs no alert program and logs no alert."""
    prog, calls = _counter(tmp_path)
    server = tcpserver([*wrapper, "--alert-exec", prog, "--", SMTPD], env=_env())
    assert _deliver(server).startswith(b"250 ok ")
    server.end_statuses(1)
    log = server.log()
    assert event(log, "summary")["verdict"] == "ok"
    time.sleep(0.5)
    assert not calls.exists()
    assert "event=alert" not in log


def test_alert_rate_limit_honoured(tcpserver, wrapper, tmp_path):
    """With --alert-rate 1/1h the second abnormal connection is suppressed, not alerted."""
    prog, calls = _counter(tmp_path)
    state = tmp_path / "state"
    server = tcpserver([*wrapper, "--alert-exec", prog, "--alert-rate", "1/1h",
                        "--state-dir", str(state), "--", SMTPD],
                       env=_env(FAKE_QUEUE_EXIT="53"))
    _deliver(server)
    server.end_statuses(1)
    _deliver(server)
    server.end_statuses(2)
    assert _calls(calls, 1) == ["queue_temp_fail 0 53"]
    alerts = [e for e in events(server.log()) if e["event"] == "alert"]
    assert [a["action"] for a in alerts] == ["sent", "suppressed"]
    assert alerts[1]["suppressed"] == "1"
    assert alerts[1]["verdict"] == "queue_temp_fail"
    assert (state / "alert.state").is_file()


def _argv0(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().split(b"\0")[0]
    except OSError:
        return None


def test_alert_hanging_program_does_not_delay_exit(tcpserver, wrapper, tmp_path):
    """A hanging alert program: the client sees EOF and tcpserver logs end while it still runs."""
    pidfile = tmp_path / "alert.pid"
    prog = _script(tmp_path, f"echo $$ > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\n"
                             "exec sleep 1000\n")
    server = tcpserver([*wrapper, "--alert-exec", prog, "--", SMTPD],
                       env=_env(FAKE_QUEUE_EXIT="53"))
    pid = None
    try:
        assert _deliver(server).startswith(b"451 ")  # includes the EOF after QUIT
        statuses = server.end_statuses(1)
        assert list(statuses.values()) == [0]
        deadline = time.monotonic() + 15
        while not pidfile.exists():
            assert time.monotonic() < deadline, "alert program never started"
            time.sleep(0.02)
        pid = int(pidfile.read_text())
        while (argv0 := _argv0(pid)) != b"sleep":  # sh until its exec
            # (read once: during the exec itself the command line is empty for a moment)
            assert argv0 in (b"/bin/sh", b"") and time.monotonic() < deadline, argv0
            time.sleep(0.02)
        assert _argv0(pid) == b"sleep"  # still running, after tcpserver's end line
        alert = event(server.log(), "alert")
        assert alert["action"] == "sent" and int(alert["alert_pid"]) == pid
    finally:
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
