"""The README's demo, scripts/demo.sh, run as a reader runs it.

It runs scripts/bootstrap.sh (a quick check once the suite's own bootstrap
ran), starts real tcpserver + supervise-smtp + the qmail-smtpd test double,
sends one message twice with swaks (CRLF, then bare LF) and prints each
session's replies, then the log.  Checked: both sessions are shown the same
way (the server's replies only, no swaks transcript or warning), the log is
complete when printed (no fixed sleep: the demo waits for tcpserver's line
after each connection), each summary carries the expected verdict and reason,
in bold on a terminal and in plain bytes in a pipe, and nothing is left in
TMPDIR.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import need
from strict_logfmt import parse

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # a first bootstrap on a fresh machine is slower; the demo itself ~1 s
SMTPLF = "451 See http://pobox.com/~djb/docs/smtplf.html."
REASONS = {"ok": "QUIT answered", "bare_lf": "451 smtplf after 6 bare LF, first at body line 1"}


def _env(tmp_path: Path, term: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TERM", "DEMO_PORT")}
    env["TMPDIR"] = str(tmp_path)
    if term:
        env["TERM"] = term
    return env


def _run_piped(tmp_path: Path) -> str:
    """The demo with stdout and stderr on a pipe, as in a log or CI."""
    proc = subprocess.Popen(["sh", "scripts/demo.sh"], cwd=REPO, env=_env(tmp_path, None),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # tcpserver and its children too
        out, _ = proc.communicate()
        pytest.fail(f"demo did not finish in {TIMEOUT_S} s:\n{out.decode(errors='replace')}")
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    return text


def _run_on_tty(tmp_path: Path) -> str:
    """The demo with stdout and stderr on a pseudo-terminal (TERM=xterm), as a person runs it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["sh", "scripts/demo.sh"], cwd=REPO, env=_env(tmp_path, "xterm"),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("demo did not finish on a tty:\n"
                            + b"".join(chunks).decode(errors="replace"))
            if not select.select([master], [], [], left)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.wait(timeout=10) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def _sections(text: str) -> dict[str, list[str]]:
    """The demo's output cut at its "== " headers: header -> the lines under it."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line, [])
        elif current is not None and line:
            current.append(line)
    return sections


def _check_shape(text: str) -> list[str]:
    """The sessions and the log as the README describes them; returns the log lines."""
    assert "DEPRECATION" not in text and "===" not in text, text  # no swaks chatter
    sections = _sections(text)
    headers = list(sections)
    assert len(headers) == 3, headers
    assert headers[0].startswith("== 1. a well-formed message")
    assert headers[1].startswith("== 2. the same message with bare LF")
    assert headers[2].startswith("== the log")
    good, bare, log = (sections[h] for h in headers)

    # Both sessions: the server's replies only, indented, nothing the client sent.
    for replies in (good, bare):
        assert all(line.startswith(("   <-  ", "   <** ", "   *** ")) for line in replies), replies
        assert not any(" -> " in line or "~> " in line for line in replies), replies
    assert [line.split()[1] for line in good] == [
        "220", "250-demo.example", "250-PIPELINING", "250", "250", "250", "354", "250", "221"]
    assert good[-2].startswith("   <-  250 ok ") and " qp " in good[-2]
    assert bare[:7] == good[:7]  # the same conversation up to the body
    assert bare[7] == f"   <** {SMTPLF}"
    assert bare[8:] == ["   *** Remote host closed connection unexpectedly."]
    return log  # the footer line included


def _summaries(log: list[str]) -> list[dict[str, str]]:
    return [parse(line) for line in log if line.startswith("event=summary ")]


@pytest.fixture
def demo_tools() -> None:
    for binary in ("tcpserver", "swaks", "tput"):
        need(binary)


@pytest.mark.usefixtures("demo_tools")
def test_demo_shows_both_sessions_alike_then_the_complete_log(tmp_path):
    """Piped: replies of both sessions, then every line of both connections, in plain bytes."""
    text = _run_piped(tmp_path)
    assert "\x1b" not in text  # no terminal escapes in a pipe
    log = _check_shape(text)
    summaries = _summaries(log)
    assert [s["verdict"] for s in summaries] == ["ok", "bare_lf"]
    assert [s["reason"] for s in summaries] == [REASONS["ok"], REASONS["bare_lf"]]
    assert summaries[0]["queued"] == "yes" and summaries[1]["queue"] == "parent_died"
    ends = [line.split() for line in log if line.startswith("tcpserver: end ")]
    assert [(end[2], end[4]) for end in ends] == [
        (summaries[0]["pid"], "0"), (summaries[1]["pid"], "256")]
    # waited for the whole log: tcpserver's last line about the second connection is there
    assert log[-3].startswith("tcpserver: status: 0/") and log[-2].startswith("Each connection")
    events = [parse(line)["event"] for line in log if line.startswith("event=")]
    assert events.count("connect") == 2 and "bare_lf" in events and "data_rejected" in events
    assert list(tmp_path.iterdir()) == []  # the demo's work directory is gone


@pytest.mark.usefixtures("demo_tools")
def test_demo_on_a_terminal_puts_verdict_and_reason_in_bold(tmp_path):
    """On a tty, each summary's verdict= and reason= are bold (tput), and no other text is."""
    bold = subprocess.run(["tput", "-T", "xterm", "bold"], capture_output=True,
                          text=True, check=True).stdout
    plain = subprocess.run(["tput", "-T", "xterm", "sgr0"], capture_output=True,
                           text=True, check=True).stdout
    text = _run_on_tty(tmp_path)
    log = _check_shape(text.replace(bold, "").replace(plain, ""))
    lines = text.splitlines()
    summaries = [line for line in lines if line.startswith("event=summary ")]
    assert len(summaries) == 2
    for line, verdict in zip(summaries, ("ok", "bare_lf"), strict=True):
        assert f' {bold}verdict={verdict}{plain} ' in line, repr(line)
        assert f' {bold}reason="{REASONS[verdict]}"{plain} ' in line, repr(line)
        assert line.count(bold) == 2
    assert not [line for line in lines if "\x1b" in line and line not in summaries]
    assert len(_summaries(log)) == 2
    assert list(tmp_path.iterdir()) == []
