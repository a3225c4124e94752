"""check-service: what qmail-smtpd itself meets, as its own user (-u/-g).

The run script can be right while qmail-smtpd still cannot work: its queue
program (``QMAILQUEUE``) missing or not executable by it answers every
message ``451``; qmail's control files unreadable by it give ``421`` to
every client; a memory limit too small for it (``softlimit -m 2000000`` on
Debian 12, where qmail-smtpd cannot even map libc) kills it before its
banner.  The first two are read from the file system; the last one only a
start can tell, so as root the child's part of the command line (what
follows supervise-smtp: softlimit and the rest, qmail-smtpd included) is
started once as the -u/-g user, stdin from /dev/null, with a short timeout,
and it must print a 220.  Not root: that check is skipped, and said so.
"""

from __future__ import annotations

import os
import subprocess

from supervise_smtp.runscript.check import Finding
from supervise_smtp.runscript.settings import where_to_set

TYPE_CHECKING = False
if TYPE_CHECKING:
    from supervise_smtp.runscript.check_run import _Run

__all__ = ["check_child", "START_TIMEOUT_S"]

START_TIMEOUT_S = 5.0
QMAIL_HOME = "/var/qmail"  # qmail's auto_qmail, where qmail-smtpd chdir()s
_CONTROL_FILES = ("me", "rcpthosts")


def check_child(run: _Run) -> list[Finding]:
    """The queue program, the control files, and (as root) a start of the child."""
    return _check_queue(run) + _check_control(run) + _start_child(run)


def _check_queue(run: _Run) -> list[Finding]:
    got = run.values.get("QMAILQUEUE")
    if got is None or not got.value:
        return []
    path = got.value
    why = run.denied(path, "x")
    if why is None and not (os.path.isfile(path) and os.access(path, os.X_OK)):
        why = f"{path} is not an executable file"
    if why is None:
        return [Finding("ok", f"run: QMAILQUEUE {path} can be run by qmail-smtpd")]
    return [Finding("error", f"run: QMAILQUEUE={path} ({got.origin}): {why}: qmail-smtpd "
                             "answers every message 451 unable to exec qq",
                    f"install the queue program, or {where_to_set(run.directory, 'QMAILQUEUE')}"
                    " to its absolute path")]


def _smtpd(run: _Run) -> str | None:
    """The qmail-smtpd path the line names, when it can be told."""
    line = run.line
    return line.args[line.smtpd].value if line.smtpd is not None else None


def _qmail_home(run: _Run) -> str:
    """qmail's home for this qmail-smtpd: HOME/bin/qmail-smtpd, else /var/qmail."""
    smtpd = _smtpd(run)
    if smtpd and smtpd.endswith("/bin/qmail-smtpd"):
        return smtpd[: -len("/bin/qmail-smtpd")] or "/"
    return QMAIL_HOME


def _check_control(run: _Run) -> list[Finding]:
    if run.uid is None:
        return []
    home = _qmail_home(run)
    out = []
    for name in _CONTROL_FILES:
        path = os.path.join(home, "control", name)
        if not os.path.lexists(path):
            continue
        why = run.denied(path, "r")
        if why is None:
            out.append(Finding("ok", f"run: {path} is readable by qmail-smtpd"))
        else:
            out.append(Finding("error", f"run: {why}: qmail-smtpd answers every client "
                                        "421 unable to read controls",
                               f"chmod 644 {path} (and a+x on its directories)"))
    return out


def _child_argv(run: _Run) -> list[str] | None:
    """What follows supervise-smtp on the line, as the wrapper would run it; None if unknown."""
    line = run.line
    start = line.prog if line.mode == "serve" else (line.wrapper or 0) + 1
    words = [a.value for a in line.args[start:]]
    known = [w for w in words if w is not None]
    if not known or len(known) < len(words):
        return None
    if line.mode == "serve":
        return known
    from supervise_smtp.errors import UsageError
    from supervise_smtp.session.options import parse

    try:
        _, prog = parse(known, problems=[])  # the bad options are reported elsewhere
    except UsageError:  # --help in the options: the wrapper prints it, runs nothing
        return None
    return prog or None


def _start_child(run: _Run) -> list[Finding]:
    argv = _child_argv(run)
    if argv is None or run.uid is None or not _startable(run, argv):
        return []  # what is missing has its own finding
    shown = " ".join(argv)
    if os.geteuid() != 0:
        return [Finding("warning", f"run: {shown} was not started as uid {run.uid}: "
                                   "check-service is not root, so whether it prints its "
                                   "banner under its limits is not known",
                        "run check-service as root to try it")]
    uid, gids = run.uid, list(run.gids)
    env = {name: s.value for name, s in run.values.items() if s.value is not None}
    env.update(PATH=run.search_path, PROTO="TCP", TCPLOCALIP="127.0.0.1",
               TCPREMOTEIP="127.0.0.1", TCPLOCALPORT="25", TCPREMOTEPORT="0")

    def as_user() -> None:
        if gids and gids[0]:
            os.setgroups(gids[:1])
            os.setgid(gids[0])
        if uid:
            os.setuid(uid)

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                              cwd=run.directory, timeout=START_TIMEOUT_S, preexec_fn=as_user)
    except subprocess.TimeoutExpired as err:
        early = err.stdout or b""
        if early.startswith(b"220"):
            return [_banner(shown, uid, early)]
        return [Finding("error", f"run: {shown}, started as uid {uid}, printed no 220 "
                                 f"within {START_TIMEOUT_S:g} s", "start it by hand to see why")]
    except OSError as err:
        return [Finding("error", f"run: {shown} could not be started as uid {uid}: "
                                 f"{err.strerror}", "correct the command line")]
    if proc.stdout.startswith(b"220"):
        return [_banner(shown, uid, proc.stdout)]
    how = f"exit {proc.returncode}" if proc.returncode >= 0 else f"signal {-proc.returncode}"
    last = (proc.stderr.strip().splitlines() or [b""])[-1][:200]
    said = f": {last.decode('utf-8', 'replace')}" if last else ""
    return [Finding("error", f"run: {shown}, started as uid {uid} with stdin from /dev/null, "
                             f"printed no 220 ({how}{said}): every client would be dropped",
                    "if its memory limit is too small (Debian 12's qmail-smtpd cannot map "
                    f"libc under 2000000), {where_to_set(run.directory, 'SOFTLIMIT')} higher; "
                    "else start it by hand to see why")]


def _startable(run: _Run, argv: list[str]) -> bool:
    """Its first program and qmail-smtpd are there for its uid (else they are findings)."""
    from supervise_smtp.runscript.check import which

    first = which(argv[0], run.search_path)
    smtpd = _smtpd(run)
    return first is not None and (smtpd is None or run.denied(smtpd, "x") is None)


def _banner(shown: str, uid: int, said: bytes) -> Finding:
    first = said.split(b"\n", 1)[0].rstrip(b"\r")[:80].decode("utf-8", "replace")
    return Finding("ok", f"run: {shown}, started as uid {uid}, prints its banner ({first})")
