"""The shipped service dirs' settings say what they do.

Each run script is executed as its supervisor would, through the real envdir
(daemontools), s6-envdir (s6) or its sourced conf (runit), with a stand-in
tcpserver that prints its options and the environment it was given:
MAXSMTPD ships unset, so the documented fallback to
control/concurrencyincoming (else 20) is what happens, and the run script's
own re-exec guard never reaches qmail-smtpd's environment; and without the
qmail users (a private mount namespace with its own passwd and group: the
host's own are never touched), run and log/run refuse to start.
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


def _run(suite: str, tmp_path: Path, need, script: str = "./run",
         env: dict[str, str] | None = None,
         prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
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
    env = {"PATH": path, **({"QMAILDUID": "71", "NOFILESGID": "80"} if env is None else env)}
    return subprocess.run([*prefix, "sh", script], cwd=svc, env=env, capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


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


@pytest.fixture
def without_qmail_users(tmp_path: Path) -> tuple[str, ...]:
    """A command prefix: a private mount namespace whose /etc/passwd and /etc/group lack
    qmaild, qmaill and nofiles (copies of the host's, bind-mounted there)."""
    files = {}
    for name in ("passwd", "group"):
        lines = Path("/etc", name).read_text().splitlines(keepends=True)
        files[name] = tmp_path / name
        files[name].write_text("".join(
            line for line in lines if not line.startswith(("qmaild:", "qmaill:", "nofiles:"))))
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")
    binds = " && ".join(f"mount --bind {files[n]} /etc/{n}" for n in ("passwd", "group"))
    return (*unshare, "sh", "-c", f'{binds} && exec "$0" "$@"')


@pytest.mark.parametrize("serve", ["0", "1"])
@pytest.mark.parametrize("suite", sorted(_SUITES))
def test_shipped_run_refuses_without_the_qmaild_user(suite, serve, tmp_path, need,
                                                     without_qmail_users):
    """No qmaild: one line saying so and exit 111 (the supervisor retries), never
    tcpserver or serve with an empty -u -g, which would mean root."""
    env = {} if serve == "0" else {"SERVE": "1", "SUPERVISE_SMTP": str(tmp_path / "bin" /
                                                                      "supervise-smtp")}
    run = _run(suite, tmp_path, need, env=env, prefix=without_qmail_users)
    assert run.returncode == 111, (run.stdout, run.stderr)
    assert "arg " not in run.stdout, run.stdout  # neither tcpserver nor serve was started
    lines = run.stdout.splitlines()  # exec 2>&1: the log service's input
    assert len(lines) == 1 and "qmaild" in lines[0] and "fatal" in lines[0], lines


_LOGGERS = {"daemontools": "setuidgid", "s6": "s6-setuidgid", "runit": "chpst"}


@pytest.mark.parametrize("suite", sorted(_SUITES))
def test_shipped_log_run_refuses_without_the_log_user(suite, tmp_path, need,
                                                      without_qmail_users):
    """No qmaill: log/run's setuidgid, s6-setuidgid or chpst refuses, exit non-zero,
    and no logger runs as root."""
    need(_LOGGERS[suite])
    run = _run(suite, tmp_path, need, script="./log/run", env={},
               prefix=without_qmail_users)
    assert run.returncode != 0, (run.stdout, run.stderr)
    assert "qmaill" in run.stderr, run.stderr
