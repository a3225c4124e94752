"""check-service's findings on ``log/run``: the logger, its timestamps, its user,
and the directories it must write as that user.

The log service matters to mail: when its logger cannot start (no such
user, a directory it cannot write), the pipe from the mail service fills
up and tcpserver, writing its own lines, blocks.
"""

from __future__ import annotations

import os
import pwd
import re

from supervise_smtp.argv import CHPST_OPTSTRING, takes_value
from supervise_smtp.runscript import host
from supervise_smtp.runscript.check import (
    SUPERVISOR_PATH,
    Finding,
    check_programs,
    interpreter,
    read,
    shell_check,
)
from supervise_smtp.runscript.line import Arg
from supervise_smtp.runscript.settings import (
    Setting,
    expand_word,
    service_settings,
    where_to_set,
)
from supervise_smtp.runscript.sh import SHELLS, Command, ShellSyntaxError, shell_commands

__all__ = ["check_log"]

_LOGGERS = {"multilog": "t", "svlogd": "-t", "s6-log": "t|T"}


def _log_user(cmd_args: list[Arg], k: int) -> tuple[str | None, str | None, str]:
    """(user, group, program) the logger at ``k`` is switched to by the programs
    before it (setuidgid, s6-setuidgid, chpst -u); (None, None, "") when root."""
    for j in range(k):
        name = cmd_args[j].program()
        nxt = cmd_args[j + 1].value if j + 1 < len(cmd_args) else None
        if name in ("setuidgid", "s6-setuidgid"):
            return nxt, None, name
        if name == "chpst":
            i = j + 1
            while i < k:
                v = cmd_args[i].value or ""
                if v.startswith("-u"):
                    spec = v[2:] or (cmd_args[i + 1].value if i + 1 < k else None) or ""
                    user, _, group = spec.partition(":")
                    return user, group.split(":")[0] or None, "chpst"
                i += 2 if v[1:2] in takes_value(CHPST_OPTSTRING) and len(v) == 2 else 1
    return None, None, ""


def _logger_dirs(name: str, rest: list[str]) -> list[str]:
    if name == "svlogd":
        out, i = [], 0
        while i < len(rest):
            if rest[i] in ("-r", "-R", "-l", "-b"):
                i += 2
                continue
            if not rest[i].startswith("-"):
                out.append(rest[i])
            i += 1
        return out
    return [a for a in rest if a.startswith((".", "/"))]


def _check_log_dirs(log_dir: str, commands: list[Command], values: dict[str, Setting],
                    args: list[Arg], k: int) -> list[Finding]:
    out = []
    logger = args[k].program()
    user, group, switch = _log_user(args, k)
    uid, gids = 0, [0]
    fix_user = where_to_set(log_dir, "LOGUSER")
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            home = "/var/log/qmail" if user == "qmaill" else "/nonexistent"
            return [Finding("error", f"log/run: {logger} runs as {user} ({switch}), and there "
                                     f"is no user {user}: the log service fails, and the mail "
                                     "service blocks once its log pipe is full",
                            f"create the user: groupadd -f nofiles && useradd --system -g "
                            f"nofiles -d {home} -s /usr/sbin/nologin {user}, or {fix_user}")]
        uid, gids = entry.pw_uid, [entry.pw_gid]
        if group:
            try:
                gids = [int(group)] if group.isdigit() else [host.grp_gid(group)]
            except KeyError:
                return [Finding("error", f"log/run: {switch} -u {user}:{group}: no group "
                                         f"{group}", f"groupadd {group}")]
        elif switch == "s6-setuidgid":
            gids = os.getgrouplist(user, entry.pw_gid)
        out.append(Finding("ok", f"log/run: {logger} runs as {user} (uid {uid})"))
    out += _check_textfile(args, k, uid, gids, user or "root")
    made = {v for cmd in commands if cmd.args and cmd.args[0].literal == "mkdir"
            for w in cmd.args[1:] for v in (expand_word(w, values) or [])}
    rest = [a.value or "" for a in args[k + 1:]]
    for d in _logger_dirs(logger, rest):
        path = os.path.normpath(os.path.join(log_dir, d))
        who = user or "root"
        if not os.path.isdir(path):
            if d in made:
                out.append(Finding("ok", f"log/run: {path} is missing; log/run creates it"))
            else:
                out.append(Finding("error", f"log/run: {path} does not exist: {logger} "
                                            "cannot start",
                                   f"mkdir -p {path} && chown {who} {path}"))
            continue
        why = host.denied(path, uid, gids, "rwx")
        for name in ("current", "lock"):
            if why is None and os.path.exists(os.path.join(path, name)):
                why = host.denied(os.path.join(path, name), uid, gids, "w")
        if why is not None:
            out.append(Finding("error", f"log/run: {logger} runs as {who} and cannot write "
                                        f"{path}: {why}",
                               f"chown -R {who} {path}"))
        else:
            out.append(Finding("ok", f"log/run: {path} is writable by {who}"))
    return out


def check_log(directory: str) -> list[Finding]:
    log_dir = os.path.join(directory, "log")
    path = os.path.join(log_dir, "run")
    if not os.path.isfile(path):
        return [Finding("error", "log/run: missing: without a log service the events go to "
                                 "the supervisor's own stderr",
                        f"write {path} (see runit/qmail-smtpd/log/run in the source)")]
    out = []
    if not os.access(path, os.X_OK):
        out.append(Finding("error", "log/run: not executable", f"chmod 755 {path}"))
    else:
        out.append(Finding("ok", "log/run: present and executable"))
    text = read(path) or ""
    interp = interpreter(text)
    if interp is not None and os.path.basename(interp) not in SHELLS:
        return out
    out.append(shell_check(path, "log/run"))
    try:
        commands = shell_commands(text)
    except ShellSyntaxError as err:
        return out + [Finding("warning", f"log/run: cannot parse: {err}",
                              f"correct the syntax of {path}")]
    values = service_settings(log_dir, commands)
    got = values.get("PATH")
    search = got.value if got is not None and got.value else SUPERVISOR_PATH
    out += check_programs(commands, values, "log/run", search)
    for cmd in commands:
        args = [Arg(v, w) for w in cmd.args
                for v in _or_unknown(expand_word(w, values))]
        for k, a in enumerate(args):
            name = a.program()
            if name not in _LOGGERS:
                continue
            rest = [x.value or "" for x in args[k + 1:]]
            if name == "svlogd":
                stamped = any(re.fullmatch(r"-t{1,3}", x) for x in rest)
            else:
                stamped = any(re.fullmatch(_LOGGERS[name], x) for x in rest)
            if stamped:
                out.append(Finding("ok", f"log/run: {name} stamps each line"))
            else:
                flag = _LOGGERS[name].replace("|", " or ")
                out.append(Finding("warning", f"log/run: {name} without a timestamp option "
                                              f"({flag})", f"add {flag.split()[0]} to {name}'s "
                                                           "arguments"))
            return out + _check_log_dirs(log_dir, commands, values, args, k)
    return out + [Finding("warning", "log/run: no multilog, svlogd or s6-log found",
                          "log with multilog t, svlogd -tt or s6-log t")]


def _check_textfile(args: list[Arg], k: int, uid: int, gids: list[int],
                    who: str) -> list[Finding]:
    """``supervise-smtp collect --textfile F`` before the logger: F's directory must be
    writable by the log user (collect writes a temporary file there, then renames it)."""
    words = [a.value or "" for a in args[:k]]
    if "collect" not in words:
        return []
    path = None
    for i, word in enumerate(words):
        if word == "--textfile" and i + 1 < len(words):
            path = words[i + 1]
        elif word.startswith("--textfile="):
            path = word.partition("=")[2]
    if not path:
        return []
    directory = os.path.dirname(os.path.abspath(path))
    why = host.denied(directory, uid, gids, "wx")
    if why is None:
        return [Finding("ok", f"log/run: collect's --textfile directory {directory} is "
                              f"writable by {who}")]
    return [Finding("error", f"log/run: collect runs as {who} and cannot write its "
                             f"--textfile in {directory}: {why}: the counters are never "
                             "written", f"mkdir -p {directory} && chown {who} {directory}")]


def _or_unknown(values: list[str] | None) -> list[str | None]:
    return [None] if values is None else list(values)
