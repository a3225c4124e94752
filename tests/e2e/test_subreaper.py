"""--subreaper: the wrapper adopts the orphaned queue program, reaps it, reports its death."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from helpers import event, events

FAKES = Path(__file__).resolve().parents[1] / "fakes"


def _bare_lf_session(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        for line in (b"HELO c.example", b"MAIL FROM:<a@example.com>",
                     b"RCPT TO:<b@example.org>", b"DATA"):
            sock.sendall(line + b"\r\n")
            f.readline()
        sock.sendall(b"Subject: bare\r\n\r\nline one\nline two\r\n.\r\n")
        return f.readline()


@pytest.mark.e2e
@pytest.mark.parametrize("subreaper", [False, True])
def test_subreaper_reports_queue_death(tcpserver, wrapper, tmp_path, subreaper):
    """--subreaper reaps and reports the scanner's exit 111; without it the scanner speaks."""
    control = tmp_path / "control"
    control.mkdir()
    (control / "rcpthosts").write_text("example.org\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "QMAILQUEUE"))}
    env.update(FAKE_QMAIL_CONTROL=str(control), QMAILQUEUE=str(FAKES / "fake-qmail-scanner"))
    opts = ["--subreaper"] if subreaper else []
    server = tcpserver([*wrapper, *opts, "--", str(FAKES / "fake-qmail-smtpd")], env=env)
    assert _bare_lf_session(server.port).startswith(b"451 ")
    deadline = time.monotonic() + 15
    while not any(e["event"] == "summary" for e in events(server.log())):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    log = server.log()
    summary = event(log, "summary")
    assert (summary["verdict"], summary["queue"]) == ("bare_lf", "parent_died")
    assert summary["queue_outlived"] == "true"
    if subreaper:
        died = event(log, "queue_parent_died")
        assert died["queue_pid"] == summary["queue_pid"]
        assert (died["exit"], summary["queue_exit"]) == ("111", "111")
    else:
        assert "queue_parent_died" not in {e["event"] for e in events(log)}
        assert "queue_exit" not in summary
