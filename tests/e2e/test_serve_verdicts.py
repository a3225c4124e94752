"""The verdict scenarios under serve: the same lines, summary and status as tcpserver + wrapper.

Each scenario is played once against ``tcpserver -v -R -H -l 0 ... supervise-smtp
-- fake-qmail-smtpd`` and once against ``supervise-smtp serve -v -R -H -l 0 ...
fake-qmail-smtpd``.  The connection's event lines (names, in order) and every
summary field must be equal between the two -- except the pids, the timings
and the queue's pid, which differ from run to run -- and so must the status
each server logs for the connection (``tcpserver: end PID status S`` and
``event=end pid=PID status=S``).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    BODY,
    RCPT_RELAY,
    SMTPD,
    SmtpClient,
    double_env,
    events,
    recv_until_eof,
)
from test_serve import Listener

pytestmark = pytest.mark.e2e

OPTS = ["-v", "-R", "-H", "-l", "0"]
VOLATILE = {"pid", "child_pid", "duration_ms", "queue_pid", "remote_port", "local_port",
            "user_s", "sys_s", "maxrss_kb"}
Scenario = Callable[[Listener], None]


def _child_pid(server: Listener) -> int:
    return int(server.wait_for(r"^event=connect .*?\bchild_pid=(\d+)")[1])


def _session_pid(server: Listener) -> int:
    return int(server.wait_for(r"^event=connect .*?\bpid=(\d+)")[1])


def _server_closes(client: SmtpClient) -> None:
    """After the 221, wait for the server's EOF: first_close=server, never a race."""
    assert recv_until_eof(client.sock) == b""
    client.close()


def ok(server: Listener) -> None:
    client = SmtpClient(server)  # type: ignore[arg-type]
    assert client.message()[0] == 250
    client.cmd(b"QUIT", 221)
    _server_closes(client)


def bare_lf(server: Listener) -> None:
    client = SmtpClient(server)  # type: ignore[arg-type]
    client.envelope()
    client.cmd(b"DATA", 354)
    client.sock.sendall(b"Subject: lf\n\nbare\n.\r\n")
    assert client.reply()[0] == 451
    assert recv_until_eof(client.sock) == b""
    client.close()


def rejected(server: Listener) -> None:
    client = SmtpClient(server)  # type: ignore[arg-type]
    assert client.reply()[0] == 220
    client.cmd(b"EHLO client.test", 250)
    client.cmd(b"MAIL FROM:<e2e@example.com>", 250)
    client.cmd(f"RCPT TO:<{RCPT_RELAY}>".encode(), 553)
    client.cmd(b"QUIT", 221)
    _server_closes(client)


def lost_in_body(server: Listener) -> None:
    client = SmtpClient(server)  # type: ignore[arg-type]
    client.envelope()
    client.cmd(b"DATA", 354)
    client.sock.sendall(BODY[:30])
    client.close()


def crashed(server: Listener) -> None:
    client = SmtpClient(server)  # type: ignore[arg-type]
    assert client.reply()[0] == 220
    os.kill(_child_pid(server), signal.SIGSEGV)
    assert recv_until_eof(client.sock) == b""
    client.close()


def stopped(server: Listener) -> None:
    client = SmtpClient(server)  # type: ignore[arg-type]
    assert client.reply()[0] == 220
    client.cmd(b"EHLO client.test", 250)
    os.kill(_session_pid(server), signal.SIGTERM)
    assert recv_until_eof(client.sock) == b""
    client.close()


@pytest.fixture
def run_both(tmp_path: Path, need: Callable[[str], str],
             wrapper: list[str]) -> Iterator[Callable[[Scenario], list[tuple[list[dict[str, str]],
                                                                                  int]]]]:
    """Play a scenario against tcpserver + wrapper, then serve: [(session lines, status)]."""
    need("tcpserver")
    started: list[Listener] = []

    def play(scenario: Scenario) -> list[tuple[list[dict[str, str]], int]]:
        spool = tmp_path / "spool"
        spool.mkdir(exist_ok=True)
        env = double_env(tmp_path, FAKE_QUEUE_DIR=str(spool))
        got = []
        for kind, prog in (("tcpserver", [*wrapper, "--", SMTPD]), ("serve", [SMTPD])):
            server = Listener(kind, OPTS, prog, tmp_path, env=env)
            started.append(server)
            scenario(server)
            [(pid, status)] = server.end_statuses(1)
            lines = [e for e in events(server.log()) if e.get("pid") == str(pid)
                     and e["event"] != "end"]
            assert lines[-1]["event"] == "summary", server.log()
            got.append((lines, status))
            server.stop()
        return got

    yield play
    for server in started:
        server.stop()


def _comparable(line: dict[str, str]) -> dict[str, str]:
    """A line without what differs from run to run.

    The double's ``250 ok <time> qp <pid>`` differs in its digits, so a
    session that queued a message has bytes_out within a few bytes of the
    other run's, not equal: it is kept as ``~`` plus its value rounded.
    """
    out = {k: v for k, v in line.items() if k not in VOLATILE}
    if "last_reply" in out:
        out["last_reply"] = re.sub(r"^250 ok \d+ qp \d+$", "250 ok N qp N", out["last_reply"])
    if line.get("queued") == "yes" or line.get("event") == "disconnect":
        if "bytes_out" in out:
            out["bytes_out"] = "~"  # compared with _near below
    return out


def _near(a: dict[str, str], b: dict[str, str]) -> bool:
    """bytes_out within the digits a ``250 ok`` reply may differ by."""
    if "bytes_out" not in a:
        return "bytes_out" not in b
    return abs(int(a["bytes_out"]) - int(b.get("bytes_out", "-99"))) <= 8


@pytest.mark.parametrize("scenario", [ok, bare_lf, rejected, lost_in_body, crashed, stopped],
                         ids=lambda f: f.__name__)
def test_serve_verdict_same_as_wrapper(run_both, scenario):
    """Same event lines, same summary fields, same end status as under tcpserver + wrapper."""
    (wrapped, wrapped_status), (served, served_status) = run_both(scenario)
    assert [e["event"] for e in served] == [e["event"] for e in wrapped]
    for a, b in zip(wrapped, served, strict=True):
        assert _comparable(b) == _comparable(a)
        assert _near(a, b), (a, b)
    assert served_status == wrapped_status
    assert served[-1]["verdict"] != "unknown"


def _sessions(log: str) -> list[list[dict[str, str]]]:
    """The session lines of a log, cut at each event=connect (sessions one after another)."""
    out: list[list[dict[str, str]]] = []
    for line in events(log):
        if line["event"] == "connect":
            out.append([])
        if out and line["event"] != "end":
            out[-1].append(line)
    return out


def test_one_worker_plays_every_scenario_like_fresh_wrappers(tmp_path, need, wrapper):
    """One worker serves all the scenarios in a row: each session is what a fresh
    wrapper makes of it, nothing carried over (signals after ``stopped``, state
    after a crash, a bare LF or a lost client), each status that of its own process."""
    need("tcpserver")
    order = [crashed, stopped, bare_lf, lost_in_body, rejected, ok]  # crashed reads the 1st child
    spool = tmp_path / "spool"
    spool.mkdir()
    env = double_env(tmp_path, FAKE_QUEUE_DIR=str(spool))
    expected = []
    for scenario in order:
        server = Listener("tcpserver", OPTS, [*wrapper, "--", SMTPD], tmp_path, env=env)
        try:
            scenario(server)
            [(_, status)] = server.end_statuses(1)
            [lines] = _sessions(server.log())
            expected.append((lines, status))
        finally:
            server.stop()
    server = Listener("serve", [*OPTS, "--spare-workers", "1"], [SMTPD], tmp_path, env=env)
    try:
        for done, scenario in enumerate(order, 1):
            scenario(server)
            server.end_statuses(done)  # the worker is idle again before the next client
        ends = server.ends()
        got = _sessions(server.log())
    finally:
        server.stop()
    assert len({pid for pid, _ in ends}) == 1, ends  # one worker served them all
    assert len(got) == len(order)
    for (want, want_status), lines, (_, status), scenario in zip(expected, got, ends, order,
                                                               strict=True):
        assert [e["event"] for e in lines] == [e["event"] for e in want], scenario.__name__
        for a, b in zip(want, lines, strict=True):
            assert _comparable(b) == _comparable(a), scenario.__name__
            assert _near(a, b), (scenario.__name__, a, b)
        assert status == want_status, scenario.__name__
