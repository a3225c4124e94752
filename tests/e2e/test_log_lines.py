"""Hostile values in the event lines, end to end.

``tcpserver -v ... supervise-smtp --events all -- fake-qmail-smtpd``: a client
puts backslashes, quotes and control bytes where a value is cut (at
MAX_VALUE_CHARS) or where keys are dropped (at the line cap).  Every line the
wrapper writes must parse strictly (tests/strict_logfmt.py, through
helpers.events for logfmt), and no line may read as a second summary.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import strict_logfmt as strict
from helpers import TESTS_DIR, TcpServer, events

pytestmark = pytest.mark.e2e

SMTPD = str(TESTS_DIR / "fakes" / "fake-qmail-smtpd")
QUEUE = str(TESTS_DIR / "fakes" / "fake-qmail-queue")
FORGED = b"<a@b.c> verdict=ok event=summary x=" + b"\x01" * 230 + b"\\" * 300


def _env(tmp_path: Path) -> dict[str, str]:
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    (control / "rcpthosts").write_text("example.org\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "QMAILQUEUE"))}
    env.update(FAKE_QMAIL_CONTROL=str(control), QMAILQUEUE=QUEUE)
    return env


def _deliver(server: TcpServer, sender: bytes) -> None:
    """One message from ``sender``; each reply read with a deadline."""
    with server.connect(timeout=10) as sock:
        replies = sock.makefile("rb")

        def expect(code: bytes) -> None:
            while True:
                line = replies.readline()
                assert line[:3] == code, line
                if line[3:4] != b"-":
                    return

        expect(b"220")
        for command, code in ((b"EHLO client.test", b"250"), (b"MAIL FROM:" + sender, b"250"),
                              (b"RCPT TO:<rcpt@example.org>", b"250"), (b"DATA", b"354"),
                              (b"Subject: x\r\n\r\nhello\r\n.", b"250"), (b"QUIT", b"221")):
            sock.sendall(command + b"\r\n")
            expect(code)
        sock.shutdown(socket.SHUT_WR)


def _lines(server: TcpServer) -> list[str]:
    server.end_statuses(1)
    server.wait_for(r"^event=summary |^\{\"event\": \"summary\"")
    return [line for line in server.log().splitlines() if not line.startswith("tcpserver: ")]


def test_forged_mail_from_is_one_value(tcpserver, wrapper, tmp_path):
    """The issue's MAIL FROM, cut where a lone backslash would escape its quote: one summary."""
    server = tcpserver([*wrapper, "--events", "all", "--", SMTPD], env=_env(tmp_path))
    _deliver(server, FORGED)
    lines = _lines(server)
    parsed = [strict.parse(line) for line in lines]  # every line, strictly
    assert parsed == events("\n".join(lines))
    assert [p["event"] for p in parsed].count("summary") == 1
    assert parsed[-1]["event"] == "summary" and parsed[-1]["queued"] == "yes"
    assert all("verdict" not in p for p in parsed[:-1]), parsed
    mail = [p for p in parsed if p["event"] == "command" and p.get("verb") == "MAIL"]
    assert len(mail) == 1 and mail[0]["address"] == "a@b.c"
    assert mail[0]["truncated"] == "true"
    assert strict.unescape(mail[0]["args"]).startswith(b"FROM:<a@b.c> verdict=ok event=summary")


def test_json_cut_address_stays_valid_json(tcpserver, wrapper, tmp_path):
    """The issue's JSON case: backslashes around '", "' in an address; every line is JSON."""
    server = tcpserver([*wrapper, "--events", "all", "--format", "json", "--", SMTPD],
                       env=_env(tmp_path))
    _deliver(server, b"<" + b"\\" * 250 + b'", "' + b"\\" * 250 + b">")
    parsed = [strict.parse_json(line) for line in _lines(server)]
    assert [p["event"] for p in parsed].count("summary") == 1
    assert parsed[-1]["event"] == "summary" and parsed[-1]["queued"] == "yes"
    mail = [p for p in parsed if p["event"] == "command" and p.get("verb") == "MAIL"]
    assert len(mail) == 1 and mail[0]["truncated"] is True


CHILD = """
import os, sys
os.write(2, sys.argv[1].encode("latin-1") + b"\\n")
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.mark.parametrize("ctl", [0, 255])
def test_cut_child_stderr_line_parses(tcpserver, wrapper, tmp_path, ctl):
    """A 1024-byte child stderr line of \\x01 and backslashes: its child_stderr line parses."""
    text = "\x01" * ctl + "\\" * (1024 - ctl)
    server = tcpserver([*wrapper, "--", sys.executable, "-c", CHILD, text, SMTPD],
                       env=_env(tmp_path))
    _deliver(server, b"<a@b.c>")
    found = [e for e in events("\n".join(_lines(server))) if e["event"] == "child_stderr"]
    assert len(found) == 1 and found[0]["truncated"] == "true", found
    assert strict.unescape(found[0]["text"]) == text.encode("latin-1")[
        : len(strict.unescape(found[0]["text"]))]
