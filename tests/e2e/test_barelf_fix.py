"""--bare-lf fix under tcpserver with the qmail-smtpd double: accepted, logged, no smuggling."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from helpers import event, events

FAKES = Path(__file__).resolve().parents[1] / "fakes"


def _env(tmp_path: Path) -> dict[str, str]:
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    (control / "rcpthosts").write_text("example.org\n")
    (tmp_path / "queue").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "QMAILQUEUE"))}
    env.update(FAKE_QMAIL_CONTROL=str(control), QMAILQUEUE=str(FAKES / "fake-qmail-queue"),
               FAKE_QUEUE_DIR=str(tmp_path / "queue"))
    return env


def _send(port: int, body: bytes) -> list[bytes]:
    """One message with ``body`` (which carries its own end of data), then QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        for line in (b"HELO c.example", b"MAIL FROM:<broken@example.com>",
                     b"RCPT TO:<b@example.org>", b"DATA"):
            sock.sendall(line + b"\r\n")
            f.readline()
        sock.sendall(body)
        replies = [f.readline()]
        if replies[0].startswith(b"250"):
            sock.sendall(b"QUIT\r\n")
            replies.append(f.readline())
        return replies


def _summary(server) -> tuple[dict[str, str], str]:
    deadline = time.monotonic() + 15
    while not any(e["event"] == "summary" for e in events(server.log())):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    return event(server.log(), "summary"), server.log()


def _stored(tmp_path: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((tmp_path / "queue").iterdir())
            if not p.name.endswith(".env")]


BODY = b"Subject: bare\n\nline one\nline two\r\n.\r\n"


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["observe", "fix"])
def test_barelf_fix_gets_message_accepted(tcpserver, wrapper, tmp_path, mode):
    """The double rejects bare LF in observe mode and accepts the fixed message in fix mode."""
    server = tcpserver([*wrapper, "--bare-lf", mode, "--", str(FAKES / "fake-qmail-smtpd")],
                       env=_env(tmp_path))
    replies = _send(server.port, BODY)
    summary, log = _summary(server)
    if mode == "observe":
        assert replies[0].startswith(b"451 See ")
        assert summary["verdict"] == "bare_lf"
        assert "bare_lf_fixed" not in {e["event"] for e in events(log)}
        return
    assert replies[0].startswith(b"250 ok "), replies
    fixed = event(log, "bare_lf_fixed")
    assert (fixed["sender"], fixed["count"], fixed["first_line"]) == (
        "<broken@example.com>", "3", "1")
    assert (summary["verdict"], summary["notes"], summary["bare_lf"]) == (
        "ok", "bare_lf_fixed", "3")
    (stored,) = _stored(tmp_path)
    assert stored.endswith(b"Subject: bare\n\nline one\nline two\n")


@pytest.mark.e2e
def test_barelf_fix_never_ends_data_on_bare_newline(tcpserver, wrapper, tmp_path):
    """A smuggled ``\\n.\\n`` stays message text: one message, the MAIL after it is not run."""
    smuggle = (b"Subject: s\r\n\r\ntext\n.\nMAIL FROM:<evil@example.com>\r\n"
               b"RCPT TO:<b@example.org>\r\nDATA\r\nevil\r\n.\r\n")
    server = tcpserver([*wrapper, "--bare-lf", "fix", "--", str(FAKES / "fake-qmail-smtpd")],
                       env=_env(tmp_path))
    replies = _send(server.port, smuggle)
    assert replies[0].startswith(b"250 ok ") and replies[1].startswith(b"221 ")
    (stored,) = _stored(tmp_path)
    assert stored.endswith(b"text\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<b@example.org>\n"
                           b"DATA\nevil\n")
    summary, log = _summary(server)
    assert (summary["verdict"], summary["mail"], summary["data"]) == ("ok", "1", "1")
    assert event(log, "bare_lf_fixed")["dot_lines"] == "1"
