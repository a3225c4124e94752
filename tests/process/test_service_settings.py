"""The shipped service dirs' settings say what they do (issue 14, item 3).

Each run script is executed as its supervisor would, through the real envdir
(daemontools), s6-envdir (s6) or its sourced conf (runit), with a stand-in
tcpserver that prints its options and the environment it was given:
MAXSMTPD ships unset, so the documented fallback to
control/concurrencyincoming (else 20) is what happens, and the run script's
own re-exec guard never reaches qmail-smtpd's environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import TESTS_DIR

REPO = TESTS_DIR.parent
_STUB = "#!/bin/sh\nprintf 'arg %s\\n' \"$@\"\nenv | sed 's/^/env /'\n"
_SUITES = {"daemontools": "envdir", "s6": "s6-envdir", "runit": None}


CONTROL = Path("/var/qmail/control/concurrencyincoming")


@pytest.fixture
def concurrencyincoming():
    """qmail's own concurrency setting, 37 here, made for the test when qmail is absent
    (CI runs as root in a throwaway machine); what was there is left as it was."""
    made = []
    if not CONTROL.exists() and os.geteuid() == 0:
        for d in (CONTROL.parent.parent, CONTROL.parent):
            if not d.exists():
                d.mkdir()
                made.append(d)
        CONTROL.write_text("37\n")
        made.append(CONTROL)
    yield CONTROL.read_text().split("\n")[0] if CONTROL.exists() else "20"
    for item in reversed(made):
        item.unlink() if item.is_file() else item.rmdir()


def _run(suite: str, tmp_path: Path, need) -> subprocess.CompletedProcess[str]:
    tool = _SUITES[suite]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("tcpserver", "supervise-smtp"):
        (bin_dir / name).write_text(_STUB)
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin:/usr/sbin:/sbin"
    if tool is not None:
        real = need(tool)
        path += f":{Path(real).parent}"
    svc = tmp_path / suite
    shutil.copytree(REPO / suite / "qmail-smtpd", svc)
    env = {"PATH": path, "QMAILDUID": "71", "NOFILESGID": "80"}
    return subprocess.run(["sh", "./run"], cwd=svc, env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("suite", sorted(_SUITES))
def test_shipped_maxsmtpd_falls_back_and_the_guard_does_not_leak(suite, tmp_path, need,
                                                                  concurrencyincoming):
    """-c from control/concurrencyincoming (else 20), no SUPERVISE_SMTP_ENVDIR passed on."""
    run = _run(suite, tmp_path, need)
    assert run.returncode == 0, run.stderr
    args = [line[4:] for line in run.stdout.splitlines() if line.startswith("arg ")]
    env = dict(line[4:].split("=", 1) for line in run.stdout.splitlines()
               if line.startswith("env ") and "=" in line)
    assert args[args.index("-c") + 1] == concurrencyincoming
    assert "SUPERVISE_SMTP_ENVDIR" not in env
    assert "MAXSMTPD" not in env or suite == "runit"  # runit exports conf's settings
