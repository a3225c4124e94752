"""supervise-smtp under a real tcpserver, in front of real stdio SMTP servers.

``tcpserver -v -R -H -l 0 127.0.0.1 PORT supervise-smtp -- CHILD``, as in a
daemontools/runit run script: exim's ``-bs`` and an aiosmtpd child carry real
SMTP sessions through the wrapper, and ``tcpserver: end PID status S`` must
be the same with and without the wrapper.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import smtplib
import subprocess

import pytest
from helpers import child_argv, event, events, recv_until_eof

pytestmark = pytest.mark.e2e


def test_wrapper_exim_session_through_tcpserver(tcpserver, wrapper, need):
    """swaks delivers one message to ``exim -bs -odq`` through the wrapper: 250 and 221."""
    swaks = need("swaks")
    exim = need("exim")
    server = tcpserver([*wrapper, "--", exim, "-bs", "-odq"])
    run = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.port}", "--to", "root@localhost",
         "--from", "e2e@example.com", "--helo", "client.test", "--timeout", "20",
         "--header", "Subject: supervise-smtp e2e", "--body", "hello through the wrapper"],
        capture_output=True, timeout=60,
    )
    out = run.stdout.decode("utf-8", "replace")
    queued = re.search(r"^<-  250 OK id=(\S+)", out, re.M)
    try:
        assert run.returncode == 0, out + run.stderr.decode("utf-8", "replace")
        assert queued, out
        assert re.search(r"^ -> QUIT$", out, re.M), out
        assert re.search(r"^<-  221 ", out, re.M), out
        statuses = server.end_statuses(1)
        assert list(statuses.values()) == [0]
        log = server.log()
        connect = event(log, "connect")
        assert connect["remote"] == "127.0.0.1"
        assert connect["prog"] == exim
        assert int(connect["pid"]) in statuses
        assert event(log, "child_exit")["exit"] == "0"
        end = event(log, "disconnect")
        assert int(end["bytes_in"]) > 0 and int(end["bytes_out"]) > 0
    finally:
        if queued:
            subprocess.run([exim, "-Mrm", queued[1]], capture_output=True, timeout=30)


def _message(megabytes: int) -> bytes:
    """A CRLF message of about ``megabytes`` MB; some lines start with a dot."""
    rng = random.Random(3)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 .,;:-_=+/"
    lines = [b"From: e2e@example.com", b"To: rcpt@example.com", b"Subject: big", b""]
    size = 0
    while size < megabytes * 1024 * 1024:
        line = bytes(rng.choice(alphabet) for _ in range(20)) * 3
        if rng.random() < 0.05:
            line = b"." + line  # smtplib dot-stuffs it, aiosmtpd unstuffs it
        lines.append(line)
        size += len(line) + 2
    lines.append(b".")
    lines.append(b"..")
    return b"\r\n".join(lines) + b"\r\n"


def test_wrapper_aiosmtpd_large_message(tcpserver, wrapper, tmp_path):
    """An 8 MB message sent with smtplib reaches an aiosmtpd child byte for byte."""
    spool = tmp_path / "spool"
    spool.mkdir()
    env = dict(os.environ, CHILD_SPOOL=str(spool))
    server = tcpserver([*wrapper, "--", *child_argv("aiosmtpd_child.py")], env=env)
    message = _message(8)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        refused = client.sendmail("e2e@example.com", ["rcpt@example.com"], message)
        assert refused == {}
        code, _ = client.quit()
        assert code == 221
    assert list(server.end_statuses(1).values()) == [0]
    stored = sorted(spool.iterdir())
    assert [p.name for p in stored] == ["1.msg"]
    got = stored[0].read_bytes()
    assert len(got) == len(message)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(message).hexdigest()
    log = server.log()
    assert event(log, "child_exit")["exit"] == "0"
    assert int(event(log, "disconnect")["bytes_in"]) > len(message)


EXIT_CASES = {
    "exit0": "exit 0",
    "exit1": "exit 1",
    "exit111": "exit 111",
    "exit255": "exit 255",
    "segv": "kill -SEGV $$",
    "kill": "kill -KILL $$",
    "abrt": "kill -ABRT $$",
    "term": "kill -TERM $$",
    "pipe": "kill -PIPE $$",
    "int": "kill -INT $$",
    "xfsz": "kill -XFSZ $$",
}


def _end_status(tcpserver, argv: list[str]) -> tuple[int, str]:
    """One connection to ``tcpserver argv``: the end status and the stderr log."""
    server = tcpserver(argv)
    with server.connect() as client:
        assert recv_until_eof(client) == b""
    statuses = server.end_statuses(1)
    log = server.log()
    server.stop()
    return next(iter(statuses.values())), log


@pytest.mark.parametrize("script", EXIT_CASES.values(), ids=EXIT_CASES.keys())
def test_wrapper_exit_status_parity_under_tcpserver(tcpserver, wrapper, script):
    """tcpserver logs the same ``end PID status S`` with the wrapper as without it."""
    direct, _ = _end_status(tcpserver, ["sh", "-c", script])
    wrapped, log = _end_status(tcpserver, [*wrapper, "--", "sh", "-c", script])
    assert wrapped == direct
    assert not direct & 0x80, "core flag set: RLIMIT_CORE was not 0"
    names = [e["event"] for e in events(log)]
    assert names == ["connect", "child_exit", "disconnect", "summary"]
    child_exit = event(log, "child_exit")
    if os.WIFSIGNALED(direct):
        assert child_exit["signal"] == signal.Signals(os.WTERMSIG(direct)).name
        assert child_exit["core"] == "false"
    else:
        assert child_exit["exit"] == str(os.WEXITSTATUS(direct))
