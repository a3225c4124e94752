"""The child's exit status is observed, never invented.

A parent that ignores SIGCHLD (the disposition survives exec) makes the
kernel reap our child itself; the wrapper resets SIGCHLD first, so the status
still reaches tcpserver.  When a status truly cannot be read, the summary says
``exit=unknown`` with a ``wrapper_error``, and the wrapper exits 111.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from helpers import event, wrapper_argv

TIMEOUT_S = 30


def test_sigchld_ignored_by_the_parent_still_gives_the_childs_status():
    """SIGCHLD inherited as SIG_IGN: the child's exit 3 is still ours to pass on."""
    run = subprocess.run([*wrapper_argv(), "--", "sh", "-c", "exit 3"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT_S,
                         preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    summary = event(run.stderr, "summary")
    assert (run.returncode, summary["exit"]) == (3, "3"), run.stderr


def test_lost_exit_status_is_unknown_and_exit_111():
    """wait4 finds no child (someone else reaped it): exit=unknown, wrapper_error, 111."""
    code = (
        "import os, sys\n"
        "def lost(*args):\n"
        "    raise ChildProcessError(10, 'No child processes')\n"
        "os.wait4 = lost\n"
        "from supervise_smtp import cli\n"
        "cli.main(['--', 'true'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    summary = event(run.stderr, "summary")
    assert run.returncode == 111, run.stderr
    assert (summary["verdict"], summary["exit"]) == ("wrapper_error", "unknown")
    assert "exit status was lost" in summary["reason"]
    assert event(run.stderr, "child_exit")["exit"] == "unknown"
