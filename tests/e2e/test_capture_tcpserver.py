"""--capture under tcpserver with the qmail-smtpd double: kept by verdict, 0600, fail-open."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from helpers import event, events
from test_barelf_fix import BODY, _env, _send

FAKES = Path(__file__).resolve().parents[1] / "fakes"
GOOD = b"Subject: fine\r\n\r\nsecret body text\r\n.\r\n"


def _summaries(server, n: int) -> list[dict[str, str]]:
    deadline = time.monotonic() + 15
    while True:
        found = [e for e in events(server.log()) if e["event"] == "summary"]
        if len(found) >= n:
            return found
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


@pytest.mark.e2e
def test_capture_kept_only_for_matching_verdict(tcpserver, wrapper, tmp_path):
    """With --capture-when bare_lf only the rejected session leaves a 0600 transcript."""
    cap = tmp_path / "capture"
    server = tcpserver([*wrapper, "--capture", str(cap), "--capture-when", "bare_lf", "--",
                        str(FAKES / "fake-qmail-smtpd")], env=_env(tmp_path))
    assert _send(server.port, GOOD)[0].startswith(b"250 ok ")
    assert _send(server.port, BODY)[0].startswith(b"451 See ")
    first, second = _summaries(server, 2)
    assert (first["verdict"], second["verdict"]) == ("ok", "bare_lf")
    server.wait_for(r"^event=capture ")  # the transcript is renamed in place after the summary
    files = sorted(cap.iterdir())
    assert [f.name.endswith(f"-127.0.0.1-{second['pid']}.txt") for f in files] == [True]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(cap.stat().st_mode) == 0o700
    text = files[0].read_text()
    pid = second["pid"]
    assert f" {pid} < MAIL FROM:<broken@example.com>" in text
    assert f" {pid} > 451 See http://pobox.com/~djb/docs/smtplf.html." in text
    assert "line one" not in text and "secret body text" not in text
    assert event(server.log(), "capture")["file"] == str(files[0])


@pytest.mark.e2e
def test_capture_error_never_costs_the_mail(tcpserver, wrapper, tmp_path):
    """An impossible capture directory gives one capture_error; the message is still queued."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    server = tcpserver([*wrapper, "--capture", str(blocker / "capture"), "--",
                        str(FAKES / "fake-qmail-smtpd")], env=_env(tmp_path))
    replies = _send(server.port, GOOD)
    assert replies[0].startswith(b"250 ok ") and replies[1].startswith(b"221 ")
    (summary,) = _summaries(server, 1)
    assert summary["verdict"] == "ok"
    errors = [e for e in events(server.log()) if e["event"] == "capture_error"]
    assert len(errors) == 1
    assert not os.path.exists(blocker / "capture")


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["none", "headers", "full"])
def test_capture_body_modes(tcpserver, wrapper, tmp_path, mode):
    """--capture-body: none keeps the summary, headers stops at the empty line, full keeps all."""
    cap = tmp_path / "capture"
    server = tcpserver([*wrapper, "--capture", str(cap), "--capture-body", mode, "--",
                        str(FAKES / "fake-qmail-smtpd")], env=_env(tmp_path))
    assert _send(server.port, GOOD)[0].startswith(b"250 ok ")
    _summaries(server, 1)
    (kept,) = cap.iterdir()
    text = kept.read_text()
    assert "[body: " in text
    assert ("< Subject: fine" in text) == (mode != "none")
    assert ("< secret body text" in text) == (mode == "full")
    assert "< QUIT" in text  # after the body, commands again
