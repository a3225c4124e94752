"""``supervise-smtp check-service DIR``: what in a service dir would stop mail.

Looks at DIR/run and DIR/log/run as daemontools, runit and s6 run them and
prints one line per finding, ``ok:``, ``warning:`` or ``error:``, each
problem with its fix.  Settings are worked out the way the run script
would (settings.py: ``./env`` loaded by an envdir re-exec, a sourced
``./conf``, ``: "${NAME:=default}"`` defaults, ``$(id -u qmaild)`` answered
from the password database), and the command that starts qmail-smtpd is
read as it would run (line.py: tcpserver, or ``supervise-smtp serve``
in its place when ``SERVE=1`` or wrap-run --serve put it there).  Then the
host is asked what that command would meet (host.py): the accounts,
the files as qmail-smtpd's uid and gid see them, the rules cdb, the log
directory as the log user sees it, the port.

Nothing is executed except ``sh -n`` (parse only) and, as root, the child's
part of the command line once as its -u/-g user (check_child.py: does
qmail-smtpd print its banner under its limits?); nothing is written.  The
port is tested with a bind that never listens (see host.py).  The
checks are in check_run.py (``run``, with check_child.py) and
check_log.py (``log/run``); this module holds what they share and the
command line.

Exit codes: 0 no error (warnings allowed), 1 at least one error, 100 usage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from supervise_smtp.errors import UsageError
from supervise_smtp.runscript.settings import Setting, expand_word
from supervise_smtp.runscript.sh import Command

__all__ = ["Finding", "check", "main", "read", "executable", "shell_check", "interpreter",
           "which", "check_programs", "SUPERVISOR_PATH"]

USAGE = "usage: supervise-smtp check-service DIR"
# The programs a run script may call, and the package that brings each.
_PACKAGES = {"tcpserver": "ucspi-tcp", "softlimit": "daemontools", "envdir": "daemontools",
             "setuidgid": "daemontools", "multilog": "daemontools", "chpst": "runit",
             "svlogd": "runit", "s6-softlimit": "s6", "s6-envdir": "s6",
             "s6-setuidgid": "s6", "s6-log": "s6"}
# PATH of a supervisor started at boot (runit's and s6's defaults, with /usr/local)
SUPERVISOR_PATH = "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"


@dataclass(frozen=True)
class Finding:
    """One line of the report: a level, what was found, and (for problems) the fix."""

    level: str  # "ok", "warning" or "error"
    text: str
    fix: str | None = None

    def __str__(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.level}: {self.text}{fix}"


def read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except OSError:
        return None


def executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def shell_check(path: str, label: str) -> Finding:
    try:
        run = subprocess.run(["sh", "-n", path], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Finding("warning", f"{label}: could not run sh -n: {err}", "check it by hand")
    if run.returncode != 0:
        why = run.stderr.decode("utf-8", "replace").strip().replace("\n", "; ")
        return Finding("error", f"{label}: sh -n fails: {why}", f"correct the syntax of {path}")
    return Finding("ok", f"{label}: sh -n passes")


def interpreter(text: str) -> str | None:
    if not text.startswith("#!"):
        return None
    parts = text[2:].split("\n", 1)[0].split()
    return parts[0] if parts else None


def which(name: str, search: str) -> str | None:
    """The executable ``name`` runs: a path as given, a bare name looked up on ``search``."""
    if "/" in name:
        return name if executable(name) else None
    return shutil.which(name, path=search)


def check_programs(commands: list[Command], values: dict[str, Setting], label: str,
                   search: str) -> list[Finding]:
    """The supervision and ucspi programs the script calls are installed."""
    out, seen = [], set()
    for cmd in commands:
        for w in cmd.args:
            for value in expand_word(w, values) or []:
                name = os.path.basename(value)
                if name not in _PACKAGES or value in seen:
                    continue
                seen.add(value)
                if which(value, search) is not None:
                    continue
                elsewhere = shutil.which(name, path=search) if "/" in value else None
                if elsewhere is not None:  # a Life-with-qmail /usr/local/bin path
                    out.append(Finding("error", f"{label}: {value} does not exist; {name} "
                                                f"is installed as {elsewhere}",
                                       f"change {value} to {elsewhere} in the script"))
                    continue
                out.append(Finding("error", f"{label}: {value} is not installed (not "
                                            f"found on {search})",
                                   f"apt-get install {_PACKAGES[name]}"))
    return out


def check(directory: str) -> list[Finding]:
    """All findings for a service directory; nothing written (as root, the child is
    started once as its user: check_child.py)."""
    from supervise_smtp.runscript.check_log import check_log
    from supervise_smtp.runscript.check_run import check_run

    return check_run(directory) + check_log(directory)


def main(args: list[str]) -> int:
    """``supervise-smtp check-service DIR``: 0 no error, 1 errors, 100 usage."""
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(f"{USAGE}\n\nWhat in a qmail-smtpd service directory would stop "
                         "mail (run, its settings,\nthe accounts, files, rules, port, "
                         "log/run); writes nothing (as root, it starts\nthe child once as "
                         "its -u user to see its banner).\nOne line per finding: ok:, warning:, "
                         "error:, each problem with its fix.\n"
                         "exit: 0 no error, 1 errors found, 100 usage.\n")
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        raise UsageError(USAGE)
    directory = args[0]
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: not a directory ({USAGE})")
    findings = check(directory)
    for finding in findings:
        sys.stdout.write(f"{finding}\n")
    return 1 if any(f.level == "error" for f in findings) else 0
