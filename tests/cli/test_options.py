"""Option checks: bad values and missing companions are usage errors (100), nothing started."""

from __future__ import annotations

import subprocess

import pytest
from helpers import wrapper_argv


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--capture-when", "bare_lf", "true"], "--capture-when needs --capture"),
        (["--capture", "/tmp/x", "--capture-when", "bogus", "true"],
         "bad verdict for --capture-when: bogus"),
        (["--capture", "/tmp/x", "--capture-remote", "10.0.0.0/33", "true"],
         "bad network for --capture-remote"),
        (["--capture", "/tmp/x", "--capture-max-bytes", "-1", "true"],
         "bad value for --capture-max-bytes"),
        (["--bare-lf", "rewrite", "true"], "bad value for --bare-lf: rewrite"),
        (["--idle-timeout", "soon", "true"], "bad value for --idle-timeout: soon"),
        (["--alert-rate", "5/1m", "--alert-exec", "/bin/true", "true"],
         "--alert-rate needs --state-dir"),
    ],
)
def test_options_usage_errors(args, message):
    """Each bad option gives exit 100 and one fatal line naming the problem."""
    proc = subprocess.run([*wrapper_argv(), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 100
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("supervise-smtp: fatal: ")
    assert message in lines[0]
