"""``supervise-smtp check-service DIR``: read-only sanity check of a service dir.

Looks at DIR/run and DIR/log/run as daemontools, runit and s6 run them, and
prints one line per finding, ``ok:``, ``warning:`` or ``error:``.  Nothing is
changed and nothing is executed except ``sh -n`` (parse only).  Settings are
read statically: ``: "${NAME:=default}"`` defaults in the script, then
``./conf`` (runit, sourced) and ``./env/NAME`` files (envdir, s6-envdir).

Exit codes: 0 no error (warnings allowed), 1 at least one error, 100 usage.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass

from supervise_smtp.errors import UsageError
from supervise_smtp.shscript import (
    CHPST_OPTSTRING,
    SOFTLIMITS,
    TCPSERVER_OPTSTRING,
    Command,
    ShellSyntaxError,
    assignments,
    program_name,
    resolve,
    shell_commands,
)
from supervise_smtp.wraprun import WrapRefused, locate

__all__ = ["Finding", "check", "settings", "main"]

USAGE = "usage: supervise-smtp check-service DIR"
_SHELLS = ("sh", "bash", "dash", "ksh", "posh", "mksh")
_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?=([^}]*)\}")
_LOGGERS = {"multilog": "t", "svlogd": "-t", "s6-log": "t|T"}


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    level: str  # "ok", "warning" or "error"
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except OSError:
        return None


def settings(directory: str, commands: list[Command]) -> dict[str, str]:
    """Values of the service's variables, as far as they can be known statically."""
    values: dict[str, str] = {}
    for cmd in commands:
        for w in cmd.args:
            for name, default in _DEFAULT.findall(w.text):
                if "$" not in default and "`" not in default:
                    values.setdefault(name, default)
    values.update(assignments(commands))
    conf = _read(os.path.join(directory, "conf"))
    if conf is not None:
        try:
            values.update({k: v for k, v in assignments(shell_commands(conf)).items() if v})
        except ShellSyntaxError:
            pass
    envdir = os.path.join(directory, "env")
    if os.path.isdir(envdir):
        for name in sorted(os.listdir(envdir)):
            text = _read(os.path.join(envdir, name))
            if text:
                values[name] = text.split("\n", 1)[0].rstrip(" \t")
    return values


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _shell_check(path: str, label: str) -> Finding:
    try:
        run = subprocess.run(["sh", "-n", path], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Finding("warning", f"{label}: could not run sh -n: {err}")
    if run.returncode != 0:
        why = run.stderr.decode("utf-8", "replace").strip().replace("\n", "; ")
        return Finding("error", f"{label}: sh -n fails: {why}")
    return Finding("ok", f"{label}: sh -n passes")


def _interpreter(text: str) -> str | None:
    if not text.startswith("#!"):
        return None
    parts = text[2:].split("\n", 1)[0].split()
    return parts[0] if parts else None


def _others_can_run(path: str) -> str | None:
    """The first path component that other users cannot traverse or run, if any."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for k in range(2, len(parts) + 1):
        p = os.sep.join(parts[:k]) or os.sep
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return p
        if not mode & stat.S_IXOTH:
            return p
    return None


def _check_wrapper(cmd: Command, index: int, env: dict[str, str], script_path: str | None,
                   run_as: str | None) -> list[Finding]:
    word = cmd.args[index]
    value = resolve(word, env)
    if value is None:
        return [Finding("warning", f"run: cannot tell statically which supervise-smtp "
                                   f"{word.text} names; check it by hand")]
    if "/" in value:
        where = value
        if not _executable(where):
            return [Finding("error", f"run: supervise-smtp {where} is missing or not "
                                     "executable")]
        found = [Finding("ok", f"run: supervise-smtp {where} is executable")]
    else:
        search = script_path if script_path is not None else os.environ.get("PATH", "")
        hit = shutil.which(value, path=search)
        if hit is None:
            return [Finding("error", f"run: {value} is not on PATH ({search}); "
                                     "give its absolute path")]
        where = hit
        found = [Finding("ok", f"run: {value} found on PATH at {hit}")]
        if script_path is None:
            found.append(Finding("warning", f"run: {value} was looked up on this shell's "
                                            "PATH; the supervisor's PATH may differ: prefer "
                                            f"the absolute path {hit}"))
    interp = _interpreter(_read(where) or "")
    if interp is not None and not _executable(interp):
        found.append(Finding("error", f"run: {where} runs {interp}, which is missing or not "
                                      "executable"))
    if run_as not in (None, "0", "root"):
        for path in [where] + ([interp] if interp else []):
            blocked = _others_can_run(path)
            if blocked is not None:
                found.append(Finding(
                    "warning", f"run: tcpserver runs it as uid {run_as}, and {blocked} "
                               f"is not executable by other users (needed for {path})"))
    return found


def _tcpserver_user(cmd: Command, t: int, env: dict[str, str]) -> str | None:
    """The value of tcpserver's -u option (None when absent or unknown)."""
    words = cmd.args
    takes = set(re.findall(r"(\w):", TCPSERVER_OPTSTRING))
    k = t + 1
    while k < len(words):
        v = resolve(words[k], env)
        if v is None or not v.startswith("-") or v in ("-", "--"):
            return None
        j = 1
        while j < len(v):
            if v[j] in takes:
                arg = v[j + 1:] or (resolve(words[k + 1], env) if k + 1 < len(words) else None)
                if v[j] == "u":
                    return arg
                if not v[j + 1:]:
                    k += 1
                break
            j += 1
        k += 1
    return None


def _limits(cmd: Command, env: dict[str, str]) -> list[int]:
    """Indexes of the memory-limiting programs (softlimit, chpst -m) in the command."""
    found = []
    words = cmd.args
    for k, w in enumerate(words):
        name = program_name(w, env)
        if name in SOFTLIMITS:
            found.append(k)
        elif name == "chpst":
            takes = set(re.findall(r"(\w):", CHPST_OPTSTRING))
            j = k + 1
            while j < len(words) and (words[j].literal or "").startswith("-"):
                opt = words[j].literal or ""
                if "m" in opt[1:2]:
                    found.append(k)
                    break
                j += 2 if opt[1:2] in takes and len(opt) == 2 else 1
    return found


def _check_run(directory: str) -> list[Finding]:
    out: list[Finding] = []
    path = os.path.join(directory, "run")
    if not os.path.isfile(path):
        return [Finding("error", "run: missing")]
    if not os.access(path, os.X_OK):
        out.append(Finding("error", "run: not executable (chmod 755 run)"))
    else:
        out.append(Finding("ok", "run: present and executable"))
    text = _read(path)
    if text is None:
        return out + [Finding("error", "run: unreadable")]
    interp = _interpreter(text)
    if interp is not None and os.path.basename(interp) not in _SHELLS:
        return out + [Finding("warning", f"run: written for {interp}, not sh: only the file "
                                         "checks were made")]
    out.append(_shell_check(path, "run"))
    try:
        commands = shell_commands(text)
        loc = locate(text)
    except (ShellSyntaxError, WrapRefused) as err:
        return out + [Finding("error", f"run: cannot find the tcpserver ... qmail-smtpd "
                                       f"command: {err}")]
    cmd = loc.command
    words = cmd.args
    env = settings(directory, commands)
    line = cmd.line
    if words[0].text == "exec":
        out.append(Finding("ok", f"run: line {line}: tcpserver is started with exec"))
    else:
        out.append(Finding("error", f"run: line {line}: tcpserver is not started with exec: "
                                    "the supervisor's signals reach sh, and svc -d / sv down "
                                    "/ s6-svc -d leave tcpserver running"))
    redirected = any(w.redirect and w.text == "2>&1" for w in cmd.words) or any(
        c.args and c.args[0].text == "exec" and len(c.args) == 1 and c.line < line
        and any(w.redirect and w.text == "2>&1" for w in c.words) for c in commands)
    if redirected:
        out.append(Finding("ok", "run: stderr goes to the log service (2>&1)"))
    else:
        out.append(Finding("error", "run: stderr is not sent to the log (add `exec 2>&1` "
                                    "before the exec line): supervise-smtp's events would "
                                    "be lost"))
    wrappers = [k for k in range(loc.prog, len(words))
                if program_name(words[k], env) == "supervise-smtp"
                or words[k].text == "supervise_smtp"]
    chain = [program_name(words[k], env) for k in range(loc.prog, loc.smtpd)]
    for name, instead in (("recordio", "logs every byte, bodies and AUTH secrets, and "
                                       "breaks TLS"),
                          ("fixcrio", "rewrites bare LF silently, hiding broken mailers")):
        if name in chain:
            out.append(Finding("warning", f"run: {name} is still in the chain: it {instead}"))
    if not wrappers:
        return out + [Finding("error", f"run: line {line}: supervise-smtp is not in the "
                                       "qmail-smtpd chain (supervise-smtp wrap-run "
                                       f"{path})")]
    out.append(Finding("ok", f"run: line {words[wrappers[0]].line}: supervise-smtp runs "
                             "qmail-smtpd"))
    if words[wrappers[0]].text != "supervise_smtp":
        script_path = env.get("PATH") if "PATH" in assignments(commands) else None
        out += _check_wrapper(cmd, wrappers[0], env, script_path,
                              _tcpserver_user(cmd, loc.tcpserver, env))
    limits = _limits(cmd, env)
    before = [k for k in limits if k < wrappers[0]]
    after = [k for k in limits if k > wrappers[0]]
    for k in before:
        out.append(Finding("warning", f"run: line {words[k].line}: {words[k].text} comes "
                                      "before supervise-smtp, so its limit binds Python too; "
                                      "move it after supervise-smtp --"))
    if after:
        out.append(Finding("ok", "run: the memory limit comes after supervise-smtp"))
    elif not before:
        out.append(Finding("warning", "run: no softlimit after supervise-smtp: qmail-smtpd "
                                      "runs without a memory limit"))
    return out


def _check_log(directory: str) -> list[Finding]:
    path = os.path.join(directory, "log", "run")
    if not os.path.isfile(path):
        return [Finding("error", "log/run: missing: without a log service the events go to "
                                 "the supervisor's own stderr")]
    out = []
    if not os.access(path, os.X_OK):
        out.append(Finding("error", "log/run: not executable (chmod 755 log/run)"))
    else:
        out.append(Finding("ok", "log/run: present and executable"))
    text = _read(path) or ""
    interp = _interpreter(text)
    if interp is not None and os.path.basename(interp) not in _SHELLS:
        return out
    out.append(_shell_check(path, "log/run"))
    try:
        commands = shell_commands(text)
    except ShellSyntaxError as err:
        return out + [Finding("warning", f"log/run: cannot parse: {err}")]
    env = settings(os.path.join(directory, "log"), commands)
    for cmd in commands:
        words = cmd.args
        for k, w in enumerate(words):
            name = program_name(w, env)
            if name not in _LOGGERS:
                continue
            rest = [resolve(x, env) or "" for x in words[k + 1:]]
            if name == "svlogd":
                stamped = any(re.fullmatch(r"-t{1,3}", a) for a in rest)
            else:
                stamped = any(re.fullmatch(_LOGGERS[name], a) for a in rest)
            if stamped:
                out.append(Finding("ok", f"log/run: {name} stamps each line"))
            else:
                out.append(Finding("warning", f"log/run: {name} without a timestamp option "
                                              f"({_LOGGERS[name].replace('|', ' or ')})"))
            return out
    return out + [Finding("warning", "log/run: no multilog, svlogd or s6-log found")]


def check(directory: str) -> list[Finding]:
    """All findings for a service directory; read-only."""
    return _check_run(directory) + _check_log(directory)


def main(args: list[str]) -> int:
    """``supervise-smtp check-service DIR``: 0 no error, 1 errors, 100 usage."""
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(f"{USAGE}\n\nRead-only checks of a qmail-smtpd service directory "
                         "(run, log/run);\none line per finding: ok:, warning:, error:.\n"
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
