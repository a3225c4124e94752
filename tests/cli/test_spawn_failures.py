"""Failures to start the child: exit 111, a clear message and a wrapper_error event."""

from __future__ import annotations

import resource
import subprocess

from helpers import wrapper_argv

from supervise_smtp.session.output import parse_logfmt


def _limit_fds(n: int):
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return pre


def test_spawn_emfile_is_temporary_failure():
    """Out of descriptors when creating the socketpair or pipe: exit 111, EMFILE named."""
    # 0-2 are taken; Python's own start-up closes what it opens; 4 leaves room
    # for the socketpair but not for the stderr pipe.
    proc = subprocess.run(
        [*wrapper_argv(), "true"], stdin=subprocess.DEVNULL, capture_output=True,
        preexec_fn=_limit_fds(5), timeout=30,
    )
    assert proc.returncode == 111, proc.stderr
    lines = proc.stderr.decode().splitlines()
    events = [parse_logfmt(line) for line in lines if line.startswith("event=")]
    assert [e["event"] for e in events] == ["wrapper_error", "summary"]
    assert events[1]["verdict"] == "wrapper_error"
    assert events[0]["errno"] == "24"
    fatal = [line for line in lines if line.startswith("supervise-smtp: fatal: ")]
    assert len(fatal) == 1 and "Too many open files" in fatal[0]


def test_spawn_not_executable_is_temporary_failure(tmp_path):
    """A program without execute permission gives 111 and the strerror."""
    prog = tmp_path / "qmail-smtpd"
    prog.write_text("#!/bin/sh\nexit 0\n")
    prog.chmod(0o644)
    proc = subprocess.run([*wrapper_argv(), str(prog)], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30)
    assert proc.returncode == 111
    assert f"supervise-smtp: fatal: unable to spawn {prog}: Permission denied\n".encode() in (
        proc.stderr
    )
