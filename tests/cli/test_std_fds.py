"""fds 0, 1, 2 at start, at the command line.

fd 2 closed: /dev/null goes on it, so no descriptor of the wrapper (the
socketpair, the stderr pipe) can take its place and receive the event lines.
fd 0 or 1 closed: exit 111 with a fatal line on fd 2, nothing started.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import events, fill_pipe, wrapper_argv

from supervise_smtp.session.output import parse_logfmt

TIMEOUT_S = 30


def test_cli_fd2_closed_lines_never_reach_the_child():
    """With fd 2 closed, ``cat`` as the child echoes its input and nothing else.

    Before the fix the socketpair landed on fd 2: the wrapper's event lines
    were written to the child's stdin and came back on stdout.
    """
    run = subprocess.run([*wrapper_argv(), "--", "cat"], input=b"HELO x\r\n",
                         stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2),
                         timeout=TIMEOUT_S)
    assert (run.returncode, run.stdout) == (0, b"HELO x\r\n")


@pytest.mark.parametrize("fd", [0, 1], ids=["fd0", "fd1"])
def test_cli_fd01_closed_exits_111(fd, tmp_path):
    """fd 0 or fd 1 closed: exit 111, a wrapper_error summary and a fatal line; no child."""
    marker = tmp_path / "child-ran"
    pipe_r, pipe_w = os.pipe()
    keep = {0: pipe_r, 1: pipe_w}
    other = keep[1 - fd]
    try:
        proc = subprocess.Popen(
            [*wrapper_argv(), "--", "/bin/sh", "-c", f": > {marker}"],
            stdin=other if fd == 1 else None, stdout=other if fd == 0 else None,
            stderr=subprocess.PIPE, preexec_fn=lambda: os.close(fd))
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
    assert proc.returncode == 111
    lines = err.decode().splitlines()
    assert lines[-1] == f"supervise-smtp: fatal: fd {fd} is closed: no client connection"
    assert [e["event"] for e in events(err)] == ["wrapper_error", "summary"]
    error = parse_logfmt(lines[0])
    assert (error["where"], error["error"], error["errno"]) == (
        "start", f"fd {fd} is closed: no client connection", "9")
    summary = parse_logfmt(lines[1])
    assert (summary["verdict"], summary["stage"], summary["exit"]) == (
        "wrapper_error", "connect", "111")
    assert not marker.exists()


@pytest.mark.parametrize("args", [["--", "/nonexistent/qmail-smtpd"], ["--bogus", "--", "cat"]],
                         ids=["spawn-fails", "usage"])
def test_cli_refusal_never_stalls_on_a_full_log_pipe(args):
    """Exiting on a refusal (111, 100) with fd 2 a full pipe nobody reads: the wrapper
    still exits (its lines are dropped), it does not hold a tcpserver slot forever."""
    log_r, log_w = os.pipe()
    fill_pipe(log_w)
    try:
        proc = subprocess.run([*wrapper_argv(), *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=log_w, timeout=TIMEOUT_S)
    finally:
        os.close(log_r)
        os.close(log_w)
    assert proc.returncode in (100, 111)
