"""check-service's findings on ``run``: the command that starts qmail-smtpd as it
would run, and what it would meet on this host.

The settings come from settings.py, the command from line.py
(tcpserver, or supervise-smtp serve in its place), the host's answers from
host.py.  Each check returns its findings; :func:`check_run` runs them
in the order of a connection's life: the script, the server's identity,
the wrapper and its options, qmail-smtpd, the memory limit, the
concurrency, the rules, the programs, the port.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
from dataclasses import dataclass

from supervise_smtp.argv import CHPST_OPTSTRING, SOFTLIMIT_OPTSTRING, SOFTLIMITS, getopt
from supervise_smtp.errors import UsageError
from supervise_smtp.runscript import host
from supervise_smtp.runscript.check import (
    SUPERVISOR_PATH,
    Finding,
    check_programs,
    executable,
    interpreter,
    read,
    shell_check,
    which,
)
from supervise_smtp.runscript.check_child import check_child
from supervise_smtp.runscript.line import Arg, NoServerLine, ServerLine, server_line
from supervise_smtp.runscript.settings import (
    Setting,
    service_settings,
    where_to_set,
    word_setting,
)
from supervise_smtp.runscript.sh import SHELLS, Command, ShellSyntaxError, shell_commands, var_name

__all__ = ["check_run", "MIN_PYTHON_LIMIT_BYTES"]

# The wrapper starts from 14 MB of address space (Python 3.11 on the dev box,
# softlimit -m); twice that leaves room for a session's buffers.
MIN_PYTHON_LIMIT_BYTES = 32_000_000
_INSTALL = "install it with sh scripts/install.sh (it links /usr/local/bin/supervise-smtp)"


@dataclass
class _Run:
    """What the run checks share: the dir, the settings, the line, the identity."""

    directory: str
    values: dict[str, Setting]
    line: ServerLine
    uid: int | None = None   # qmail-smtpd's (None: unknown)
    gids: tuple[int, ...] = (0,)

    def fix_for(self, arg: Arg, what: str) -> str:
        """Where to change the value ``arg`` comes from."""
        named = word_setting(arg.word, self.values)
        if named is not None or var_name(arg.word) is not None:
            return where_to_set(self.directory, named[0] if named else var_name(arg.word) or "")
        return f"change {what} on line {arg.word.line} of {self.path}"

    def denied(self, path: str, want: str) -> str | None:
        """Why qmail-smtpd's uid and gids cannot ``want`` ``path`` (None: they can, or
        the uid is not known)."""
        if self.uid is None:
            return None
        return host.denied(path, self.uid, list(self.gids), want)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, "run")

    @property
    def search_path(self) -> str:
        got = self.values.get("PATH")
        return got.value if got is not None and got.value else SUPERVISOR_PATH


def check_run(directory: str) -> list[Finding]:
    out: list[Finding] = []
    path = os.path.join(directory, "run")
    if not os.path.isfile(path):
        return [Finding("error", "run: missing", f"write {path} (see runit/qmail-smtpd/run "
                                                  "in the source)")]
    if not os.access(path, os.X_OK):
        out.append(Finding("error", "run: not executable", f"chmod 755 {path}"))
    else:
        out.append(Finding("ok", "run: present and executable"))
    text = read(path)
    if text is None:
        return out + [Finding("error", "run: unreadable", f"chmod 755 {path}")]
    interp = interpreter(text)
    if interp is not None and os.path.basename(interp) not in SHELLS:
        return out + [Finding("warning", f"run: written for {interp}, not sh: only the file "
                                         "checks were made", "check the rest by hand")]
    out.append(shell_check(path, "run"))
    try:
        commands = shell_commands(text)
        values = service_settings(directory, commands)
        line = server_line(text, commands, values)
    except ShellSyntaxError as err:
        return out + [Finding("error", f"run: cannot find the tcpserver ... qmail-smtpd "
                                       f"command: {err}", f"correct the syntax of {path}")]
    except NoServerLine as err:
        return out + [Finding("error", f"run: {err}", "start qmail-smtpd with tcpserver ... "
                                                      "supervise-smtp -- qmail-smtpd (see "
                                                      "runit/qmail-smtpd/run in the source)")]
    run = _Run(directory, values, line)
    out += _check_serve_setting(run, text)
    out += _check_structure(run, commands)
    if line.mode == "tcpserver" and line.wrapper is None:
        return out
    out += _check_identity(run)
    out += _check_wrapper(run)
    out += _check_wrapper_options(run)
    out += _check_smtpd(run)
    out += check_child(run)
    out += _check_limits(run)
    out += _check_concurrency(run)
    out += _check_rules(run)
    out += check_programs(commands, values, "run", run.search_path)
    out += _check_port(run)
    return out


def _check_serve_setting(run: _Run, text: str) -> list[Finding]:
    got = run.values.get("SERVE")
    if "${SERVE" not in text or got is None or got.value in (None, "", "0", "1"):
        return []
    return [Finding("error", f"run: SERVE={got.value} ({got.origin}): the run script "
                             "stops with exit 100 and the supervisor restarts it every second",
                    f"{where_to_set(run.directory, 'SERVE')} to 1 for supervise-smtp serve, or "
                    "leave it empty for tcpserver")]


def _check_structure(run: _Run, commands: list[Command]) -> list[Finding]:
    out = []
    line, args = run.line, run.line.args
    n = line.line
    if line.mode == "serve":
        server = "supervise-smtp serve"
        how = " (SERVE=1)" if run.values.get("SERVE", Setting("", "")).value == "1" else ""
        out.append(Finding("ok", f"run: line {n}: supervise-smtp serve{how} takes "
                                 "tcpserver's place"))
    else:
        server = "tcpserver"
    if line.command.words[0].text == "exec":
        out.append(Finding("ok", f"run: line {n}: {server} is started with exec"))
    else:
        out.append(Finding("error", f"run: line {n}: {server} is not started with exec: the "
                                    "supervisor's signals reach sh, and svc -d / sv down / "
                                    f"s6-svc -d leave {server} running",
                           f"write exec before {server} on line {n}"))
    cmd = line.command
    redirected = any(w.redirect and w.text == "2>&1" for w in cmd.words) or any(
        c.args and c.args[0].text == "exec" and len(c.args) == 1 and c.line < n
        and any(w.redirect and w.text == "2>&1" for w in c.words) for c in commands)
    if redirected:
        out.append(Finding("ok", "run: stderr goes to the log service (2>&1)"))
    else:
        out.append(Finding("error", "run: stderr is not sent to the log: supervise-smtp's "
                                    "events would be lost", "add `exec 2>&1` before the exec "
                                                            "line"))
    chain = [a.program() for a in args[line.prog:line.smtpd or len(args)]]
    for name, instead in (("recordio", "logs every byte, bodies and AUTH secrets, and "
                                       "breaks TLS"),
                          ("fixcrio", "rewrites bare LF silently, hiding broken mailers")):
        if name in chain:
            out.append(Finding("warning", f"run: {name} is still in the chain: it {instead}",
                               f"remove {name} from line {n}"))
    if line.mode == "tcpserver":
        if line.wrapper is None:
            out.append(Finding("error", f"run: line {n}: supervise-smtp is not in the "
                                        "qmail-smtpd chain",
                               f"supervise-smtp wrap-run {run.path}"))
        else:
            out.append(Finding("ok", f"run: line {args[line.wrapper].word.line}: "
                                     "supervise-smtp runs qmail-smtpd"))
    return out


# ---------------------------------------------------------------- identity


def _id_value(run: _Run, letter: str) -> tuple[list[Finding], int | None]:
    """The -u or -g value as a number, with the findings about it."""
    what = "uid" if letter == "u" else "gid"
    server = "tcpserver" if run.line.mode == "tcpserver" else "serve"
    arg = run.line.options.get(letter)
    if arg is None:
        if "U" in run.line.flags:
            return [Finding("warning", f"run: -U: the {what} comes from ${what.upper()} at run "
                                       "time and is not checked here",
                            "check what envuidgid sets by hand")], None
        if letter == "u":
            return [Finding("warning", f"run: {server} has no -u: qmail-smtpd runs as root",
                            f"add -u \"$QMAILDUID\" -g \"$NOFILESGID\" on line "
                            f"{run.line.line}")], 0
        return [], None
    value = arg.value
    if value is None:
        return [Finding("warning", f"run: cannot tell statically what {server} -{letter} "
                                   f"{arg.word.text} is", "check it by hand")], None
    if value.isdigit() and value.isascii():
        return [], int(value)
    named = word_setting(arg.word, run.values)
    source = ""
    base = run.fix_for(arg, f"-{letter}")
    fix = f"{base} to the numeric {what} (id -{letter} qmaild)"
    if named is not None:
        name, got = named
        source = f": {name} comes from {got.origin}"
        if got.problem:
            source += f", and {got.problem}"
        if got.fix:
            fix = f"{got.fix}; or {fix}"
    effect = ("serve refuses it: exit 100" if server == "serve" else
              f"tcpserver reads it as 0 and keeps root's {what}")
    shown = "is empty" if value == "" else f"{value!r} is not a number"
    return [Finding("error", f"run: {server} -{letter} {shown}{source} ({effect})", fix)], None


def _check_identity(run: _Run) -> list[Finding]:
    out, uid = _id_value(run, "u")
    more, gid = _id_value(run, "g")
    out += more
    run.uid = uid
    if gid is not None:
        run.gids = (gid,)
    if uid is not None and gid is not None:
        user = host.user_name(uid) or "no user of that uid"
        group = host.group_name(gid) or "no group of that gid"
        level = "warning" if uid == 0 else "ok"
        out.append(Finding(level, f"run: qmail-smtpd runs as uid {uid} ({user}), gid {gid} "
                                  f"({group})",
                           "run it as qmaild (-u $QMAILDUID)" if uid == 0 else None))
    return out


# ----------------------------------------------------------------- programs


def _check_wrapper(run: _Run) -> list[Finding]:
    line = run.line
    assert line.wrapper is not None
    arg = line.args[line.wrapper]
    if arg.word.text == "supervise_smtp":
        return []  # python -m supervise_smtp: the interpreter's own module
    value = arg.value
    fix = f"{_INSTALL}, or {run.fix_for(arg, 'the supervise-smtp path')} to its absolute path"
    if value is None:
        return [Finding("warning", f"run: cannot tell statically which supervise-smtp "
                                   f"{arg.word.text} names", "check it by hand")]
    out = []
    if "/" in value:
        where = value
        if not executable(where):
            return [Finding("error", f"run: supervise-smtp {where} is missing or not "
                                     "executable", fix)]
        out.append(Finding("ok", f"run: supervise-smtp {where} is executable"))
    else:
        explicit = "PATH" in run.values
        search = run.search_path if explicit else os.environ.get("PATH", "")
        hit = shutil.which(value, path=search)
        if hit is None:
            return [Finding("error", f"run: {value} is not on PATH ({search})",
                            f"give its absolute path: {fix}")]
        where = hit
        out.append(Finding("ok", f"run: {value} found on PATH at {hit}"))
        if not explicit:
            out.append(Finding("warning", f"run: {value} was looked up on this shell's PATH; "
                                          "the supervisor's PATH may differ",
                               f"use the absolute path {hit}"))
    interp = interpreter(read(where) or "")
    if interp is not None and not executable(interp):
        out.append(Finding("error", f"run: {where} runs {interp}, which is missing or not "
                                    "executable", fix))
        return out
    # tcpserver runs the wrapper after its -u/-g switch, and serve switches right
    # after binding and imports lazily after that: the user must reach it all.
    for path in [where] + ([interp] if interp else []):
        why = run.denied(path, "x")
        if why is not None:
            out.append(Finding("error", f"run: supervise-smtp runs as uid {run.uid}, which "
                                        f"cannot reach it: {why}",
                               f"{_INSTALL} (world-readable), or make the path searchable"))
            return out
    package = _own_package(interp)
    if package is not None:
        why = run.denied(package, "rx") or run.denied(os.path.join(package, "cli.py"), "r")
        if why is not None:
            out.append(Finding("error", f"run: supervise-smtp runs as uid {run.uid}, which "
                                        f"cannot read its modules: {why}",
                               f"{_INSTALL} (world-readable), or make {package} readable"))
    return out


def _own_package(interp: str | None) -> str | None:
    """This package's directory when ``interp`` is the interpreter running this very
    install (its modules, imported after the user switch, must be readable then)."""
    if interp is None or os.path.abspath(interp) != os.path.abspath(sys.executable):
        return None
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # above runscript/


def _serve_argv(line: ServerLine) -> list[str] | None:
    """serve's command line rebuilt from what was read, for serve's own parser; -u,
    -g and -c stand in as 1 (their own checks judge them); None when unknown."""
    argv = [f"-{f}" for f in sorted(line.flags)]
    for letter, arg in line.options.items():
        argv += [f"-{letter}", "1" if letter in "ugc" else arg.value or ""]
        if arg.value is None and letter not in "ugc":
            return None
    if None in line.long_options or line.host is None or line.port is None or \
            line.host.value is None or line.port.value is None:
        return None
    argv += [v for v in line.long_options if v is not None]
    argv += [line.host.value, line.port.value, "--"]
    argv += [a.value if a.value is not None else "prog" for a in line.args[line.prog:]]
    return argv


def _check_wrapper_options(run: _Run) -> list[Finding]:
    """The options supervise-smtp (or serve) will be given, parsed as it parses them."""
    line = run.line
    assert line.wrapper is not None
    try:
        if line.mode == "serve":
            from supervise_smtp.serve.config import parse_serve

            argv = _serve_argv(line)
            if argv is None:
                return []
            who = "supervise-smtp serve"
            parse_serve(argv)
        else:
            from supervise_smtp.session.options import parse

            rest = [a.value for a in line.args[line.wrapper + 1:]]
            end = rest.index("--") if "--" in rest else len(rest)
            if None in rest[:end]:
                return []
            who = "supervise-smtp"
            problems: list[str] = []  # every one, not just the first the wrapper stops at
            parse([v if v is not None else "prog" for v in rest], problems)
            return [_refused(run, who, problem) for problem in problems]
    except UsageError as err:
        return [_refused(run, who, str(err))]
    return []


def _refused(run: _Run, who: str, problem: str) -> Finding:
    line = run.line
    return Finding("error", f"run: line {line.line}: {who} refuses its options: {problem} "
                            "(exit 100: no mail)",
                   f"correct them ({where_to_set(run.directory, 'SUPERVISE_SMTP_OPTS')} "
                   "for the wrapper's options)")


def _check_smtpd(run: _Run) -> list[Finding]:
    line = run.line
    if line.smtpd is None:
        return []
    arg = line.args[line.smtpd]
    if arg.value is None:
        return [Finding("warning", f"run: cannot tell statically which qmail-smtpd "
                                   f"{arg.word.text} names", "check it by hand")]
    found = which(arg.value, run.search_path)
    if found is None:
        return [Finding("error", f"run: qmail-smtpd {arg.value} is missing or not executable: "
                                 "every connection fails",
                        f"install qmail (netqmail), or "
                        f"{run.fix_for(arg, 'the qmail-smtpd path')} to its path")]
    why = run.denied(found, "x")
    if why is not None:
        return [Finding("error", f"run: qmail-smtpd's uid {run.uid} cannot run it: {why}",
                        f"chmod 755 {found} and its directories")]
    return [Finding("ok", f"run: qmail-smtpd {found} is executable" +
                          (f" by uid {run.uid}" if run.uid is not None else ""))]


def _limit(line: ServerLine, k: int) -> tuple[bool, int | None]:
    """Whether the program at ``k`` limits memory, and its smallest limit in bytes
    (None: unknown or unlimited)."""
    args = line.args
    name = args[k].program()
    optstring, letters = (SOFTLIMIT_OPTSTRING, "mad") if name in SOFTLIMITS else \
        (CHPST_OPTSTRING, "m")
    values = [a.value for a in args]
    end, seen = getopt(values, k + 1, optstring)
    if not set(seen) & set(letters):
        return False, None
    sizes = []
    i = k + 1
    while i < end:
        v = values[i] or ""
        if v[1:2] in letters:
            text = v[2:] or (values[i + 1] if i + 1 < len(values) else None) or ""
            sizes.append(int(text) if text.isdigit() else None)
        i += 2 if v[1:2] + ":" in optstring and len(v) == 2 else 1
    return True, (None if None in sizes or not sizes else min(s for s in sizes if s is not None))


def _check_limits(run: _Run) -> list[Finding]:
    line = run.line
    assert line.wrapper is not None
    wrapper = "supervise-smtp serve" if line.mode == "serve" else "supervise-smtp"
    out = []
    after = False
    for k, a in enumerate(line.args):
        if a.program() not in (*SOFTLIMITS, "chpst"):
            continue
        limits, size = _limit(line, k)
        if not limits:
            continue
        if k > line.wrapper:
            after = True
            continue
        move = (f"move it after {wrapper} --, just before qmail-smtpd (supervise-smtp "
                f"wrap-run {run.path} does that)")
        name = a.value or a.word.text
        if size is not None and size < MIN_PYTHON_LIMIT_BYTES:
            out.append(Finding("error", f"run: line {a.word.line}: {name} limits memory to "
                                        f"{size} bytes before {wrapper}: Python needs more to "
                                        "start, so every connection fails", move))
        else:
            out.append(Finding("warning", f"run: line {a.word.line}: {name} comes before "
                                          f"{wrapper}, so its limit binds Python too", move))
    if after:
        out.append(Finding("ok", f"run: the memory limit comes after {wrapper}"))
    elif not out:
        out.append(Finding("warning", f"run: no softlimit after {wrapper}: qmail-smtpd runs "
                                      "without a memory limit",
                           "add softlimit -m 24000000 just before qmail-smtpd"))
    return out


def _check_concurrency(run: _Run) -> list[Finding]:
    arg = run.line.options.get("c")
    if arg is None or arg.value is None:
        return []
    if arg.value.isdigit() and arg.value.isascii() and int(arg.value) > 0:
        return [Finding("ok", f"run: at most {int(arg.value)} connections at once (-c)")]
    named = word_setting(arg.word, run.values)
    source = f" ({named[0]} from {named[1].origin})" if named else ""
    effect = ("tcpserver reads it as 0 and accepts no connection"
              if run.line.mode == "tcpserver" else "serve refuses it: exit 100")
    # The fallback of the shipped scripts, named only where the script has it.
    shipped = "concurrencyincoming" in (read(run.path) or "")
    default = (" (MAXSMTPD unset: control/concurrencyincoming, else 20)" if shipped
               else ", the most connections at once")
    return [Finding("error", f"run: -c {arg.value!r}{source}: {effect}",
                    f"{run.fix_for(arg, '-c')} to a number{default}")]


def _check_rules(run: _Run) -> list[Finding]:
    line = run.line
    arg = line.options.get("x")
    if arg is None:
        return [Finding("ok", "run: no -x rules: every client is allowed, none gets "
                              "RELAYCLIENT")]
    path = arg.value
    if path is None:
        return [Finding("warning", f"run: cannot tell statically which rules {arg.word.text} "
                                   "names", "check it by hand")]
    path = os.path.join(run.directory, path)
    source = path[:-4] if path.endswith(".cdb") else None
    if source is not None and os.path.isfile(source):
        build = f"tcprules {path} {path}.tmp < {source}"
    else:
        src = source or "the rules file"
        build = (f"write the rules to {src} (e.g. 127.:allow,RELAYCLIENT=\"\" and :allow), "
                 f"then tcprules {path} {path}.tmp < {src}")
    if not os.path.exists(path):
        if "X" in line.flags:
            return [Finding("warning", f"run: rules {path} does not exist: -X lets every "
                                       "client in with no rules (no RELAYCLIENT)", build)]
        server = "tcpserver" if line.mode == "tcpserver" else "serve"
        return [Finding("error", f"run: rules {path} does not exist: {server} drops every "
                                 f"connection (unable to read {path})",
                        f"{build}, or {run.fix_for(arg, '-x')} to the cdb")]
    why = run.denied(path, "r")
    if why is not None:
        return [Finding("error", f"run: rules {path} cannot be read by qmail-smtpd's uid "
                                 f"{run.uid} ({why}): every connection is dropped",
                        f"chmod 644 {path} and make its directories searchable")]
    from supervise_smtp.serve.rules import RulesError, lookup

    try:
        lookup(path, "127.0.0.1")
    except RulesError as err:
        return [Finding("error", f"run: rules {path} is not a readable cdb ({err.strerror}): "
                                 "every connection is dropped", build)]
    out = [Finding("ok", f"run: rules {path} readable" +
                         (f" by uid {run.uid}" if run.uid is not None else ""))]
    if source is not None and os.path.isfile(source) and \
            os.stat(source).st_mtime > os.stat(path).st_mtime:
        out.append(Finding("warning", f"run: {source} is newer than {path}: the rules in force "
                                      "are the old ones", build))
    return out


def _port_number(name: str) -> int | None:
    if name.isdigit() and name.isascii():
        return int(name) if int(name) <= 65535 else None
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        return None


def _check_port(run: _Run) -> list[Finding]:
    line = run.line
    server = "tcpserver" if line.mode == "tcpserver" else "serve"
    if line.host is None or line.port is None:
        return []
    if line.host.value is None or line.port.value is None:
        return [Finding("warning", "run: cannot tell statically which address and port "
                                   f"{server} binds", "check it by hand")]
    port = _port_number(line.port.value)
    if port is None:
        return [Finding("error", f"run: port {line.port.value!r} is not a port number or a "
                                 "service name of /etc/services",
                        f"{run.fix_for(line.port, 'the port')} to a number or smtp")]
    where = host.resolve_address(line.host.value, port)
    if isinstance(where, str):
        return [Finding("error", f"run: {server} cannot bind: {where}",
                        f"{run.fix_for(line.host, 'the address')} to an address of this host "
                        "(0: all)")]
    family, sockaddr = where
    shown = f"{sockaddr[0]} port {port}"
    err = host.bind_error(family, sockaddr)
    if err == 0:
        return [Finding("ok", f"run: {shown} is free")]
    if err == errno.EADDRINUSE:
        here = os.path.realpath(run.directory)
        listening = host.listeners(port)
        own = [x for x in listening if x.cwd and os.path.realpath(x.cwd) == here]
        if own:
            return [Finding("ok", f"run: {shown} is held by this service's own {own[0].name} "
                                  f"(pid {own[0].pid})")]
        who = ", ".join(f"pid {x.pid} ({x.name}, on {x.address})" if x.pid else
                        f"a process this user cannot see (on {x.address})"
                        for x in listening) or "a process this user cannot see"
        return [Finding("error", f"run: {shown} is already in use by {who}: {server} cannot "
                                 "bind, and the supervisor restarts it every second",
                        f"stop that server (systemctl disable --now NAME), or "
                        f"{run.fix_for(line.port, 'the port')}")]
    if err == errno.EADDRNOTAVAIL:
        return [Finding("error", f"run: {line.host.value} is not an address of this host: "
                                 f"{server} cannot bind",
                        f"{run.fix_for(line.host, 'the address')} (0: all addresses)")]
    return [Finding("warning", f"run: cannot test {shown}: {os.strerror(err)}",
                    "run check-service as root")]
