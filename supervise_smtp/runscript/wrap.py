"""``supervise-smtp wrap-run PATH``: insert supervise-smtp into a run script.

The core is pure (text in, text out, warnings list): :mod:`sh` cuts a
POSIX sh script into simple commands and words with their offsets,
:func:`locate` finds the one ``tcpserver ... qmail-smtpd`` command and the
place where tcpserver's program starts, and :func:`wrap` inserts
``supervise-smtp [OPTIONS] --`` there; with ``--serve``, wrap_serve.to_serve
turns the command into ``supervise-smtp serve [tcpserver options] [OPTIONS]
host port -- prog...``.  The script is never executed: ``$VAR``
words are resolved only from literal assignments made in the script itself.

The I/O shell (:func:`main`) shows a unified diff and writes only with
``--yes`` or a "y" typed on a terminal; it keeps a backup next to the script
(``PATH.bak-supervise-smtp``, then ``.1``, ``.2``... so an earlier backup is
never overwritten) and replaces the script atomically with the same mode and
owner.  Without ``--yes`` and without a terminal, it prints the diff, writes
nothing and exits 1.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass

from supervise_smtp.argv import (
    CHPST_OPTSTRING,
    SOFTLIMIT_OPTSTRING,
    SOFTLIMITS,
    TCPSERVER_OPTSTRING,
    getopt,
)
from supervise_smtp.errors import TempError, UsageError
from supervise_smtp.runscript.sh import (
    SHELLS,
    Command,
    ShellSyntaxError,
    assignments,
    first_program,
    program_name,
    resolve,
    shell_commands,
    unquote,
    var_name,
)

__all__ = [
    "Location",
    "Result",
    "WrapRefused",
    "Operands",
    "locate",
    "operands",
    "single_line",
    "wrap",
    "main",
    "BACKUP_SUFFIX",
]

BACKUP_SUFFIX = ".bak-supervise-smtp"

# softlimit options that only limit memory: moving them from before tcpserver
# to after supervise-smtp keeps their meaning for qmail-smtpd.
_MEMORY_LIMITS = set("amdslr")

_UNSUPPORTED_SERVERS = ("tcpsvd", "sslserver", "tcpserver-ssl", "s6-tcpserver",
                        "s6-tcpserver4", "s6-tcpserver6", "inetd", "xinetd")
_PORTISH = re.compile(r"^(\d+|smtp|submission|submissions|smtps|urd)$")


class WrapRefused(Exception):
    """No safe place to insert supervise-smtp (the shell maps it to exit 100)."""


@dataclass(frozen=True)
class Location:
    """Where the qmail-smtpd chain sits inside its command."""

    command: Command
    tcpserver: int          # index into command.args
    prog: int               # index of the first word of tcpserver's program
    smtpd: int              # index of the qmail-smtpd word
    wrapped: bool           # supervise-smtp is already in the program chain
    env: dict[str, str]

    def name(self, index: int) -> str:
        """Basename of the program word at ``index`` (resolved through $VARs)."""
        return program_name(self.command.args[index], self.env)


@dataclass
class Result:
    """Outcome of :func:`wrap`."""

    text: str
    changed: bool
    already: bool
    warnings: list[str]
    line: int


# --------------------------------------------------------------------------
# The core.

def locate(text: str) -> Location:
    """Find the ``tcpserver ... qmail-smtpd`` command.

    Raises WrapRefused when there is no single safe place, ShellSyntaxError
    when the script cannot be read.
    """
    commands = shell_commands(text)
    env = assignments(commands)
    cmd, t = _the_candidate(commands, env)
    words = cmd.args
    names = [program_name(w, env) for w in words]
    if names.count("tcpserver") > 1:
        raise WrapRefused(f"line {cmd.line}: tcpserver appears twice in one command")
    prog = _program_index(cmd, t, env)
    smtpd = names.index("qmail-smtpd")
    if smtpd < prog:
        raise WrapRefused(f"line {cmd.line}: qmail-smtpd is not in tcpserver's program")
    p = names[prog]
    if p in SHELLS or p == "eval":
        raise WrapRefused(f"line {cmd.line}: tcpserver runs a shell ({p}): "
                          "too complex to edit safely, wrap it by hand")
    wrapped = any(n == "supervise-smtp" or words[k].text == "supervise_smtp"
                  for k, n in enumerate(names) if k >= prog)
    return Location(cmd, t, prog, smtpd, wrapped, env)


def _the_candidate(commands: list[Command], env: dict[str, str]) -> tuple[Command, int]:
    """The one command that runs tcpserver ... qmail-smtpd, and tcpserver's index."""
    candidates: list[tuple[Command, int]] = []
    smtpd_seen: list[Command] = []
    for cmd in commands:
        words = cmd.args
        names = [program_name(w, env) for w in words]
        if "qmail-smtpd" not in names:
            if words and first_program(words) in ("echo", "printf", ":"):
                continue
            for w in words:
                if "qmail-smtpd" in w.text and re.search(r"\s", unquote(w.text, True) or ""):
                    raise WrapRefused(
                        f"line {w.line}: qmail-smtpd is inside a quoted string "
                        "(sh -c or eval): too complex to edit safely, wrap it by hand")
            continue
        smtpd_seen.append(cmd)
        if words and words[0].text == "eval":
            raise WrapRefused(f"line {cmd.line}: qmail-smtpd is run through eval: "
                              "too complex to edit safely, wrap it by hand")
        if "tcpserver" in names:
            candidates.append((cmd, names.index("tcpserver")))
    if not smtpd_seen:
        raise WrapRefused("no qmail-smtpd command found")
    if not candidates:
        cmd = smtpd_seen[0]
        other = [n for n in _UNSUPPORTED_SERVERS
                 if n in (program_name(w, env) for w in cmd.args)]
        how = f" ({other[0]} is not supported yet)" if other else ""
        raise WrapRefused(f"line {cmd.line}: qmail-smtpd is not run by tcpserver{how}; "
                          "wrap it by hand")
    if len(candidates) > 1:
        lines = ", ".join(str(c.line) for c, _ in candidates)
        raise WrapRefused(f"several tcpserver ... qmail-smtpd commands (lines {lines}): "
                          "wrap the one you mean by hand")
    return candidates[0]


def _program_index(cmd: Command, t: int, env: dict[str, str]) -> int:
    """Index in ``cmd.args`` of the first word of tcpserver's program.

    tcpserver's options, then host and port.  An unquoted $VAR we know is
    split like the shell would; one we do not know counts as one word.
    """
    return operands(cmd, t, env).prog


@dataclass(frozen=True)
class Operands:
    """tcpserver's command line cut into options, host, port and program."""

    options: list[str | None]  # option values (None: unknown), "--" included
    host: int                  # index in cmd.args of the host word
    prog: int                  # index in cmd.args of the program's first word
    dashdash: int | None       # index in cmd.args of the word giving "--" before the host


def operands(cmd: Command, t: int, env: dict[str, str]) -> Operands:
    """:func:`_program_index`, with where the options end and the host starts."""
    words = cmd.args
    values: list[str | None] = []
    owner: list[int] = []  # the word each value comes from
    for k in range(t + 1, len(words)):
        w = words[k]
        v = resolve(w, env)
        if v is not None and w.literal is None and not w.text.startswith('"') and \
                len(v.split()) != 1:
            for part in v.split():
                values.append(part)
                owner.append(k)
            continue
        if v is None and re.match(r"-[A-Za-z0-9]", w.text):
            v = w.text  # -x$CDB: an option with its argument attached
        values.append(v)
        owner.append(k)
    first, _ = getopt(values, 0, TCPSERVER_OPTSTRING)
    if first + 2 >= len(values):
        raise WrapRefused(f"line {cmd.line}: cannot find tcpserver's host, port and program")
    host, prog_v = first, first + 2
    if owner[host] == owner[prog_v - 1] or len(set(owner[first:prog_v + 1])) != 3:
        raise WrapRefused(f"line {cmd.line}: tcpserver's host, port or program comes from "
                          "a variable holding several words: wrap it by hand")
    host_word = words[owner[host]]
    if values[host] is None and var_name(host_word) and \
            _PORTISH.match(values[host + 1] or "") and \
            (values[prog_v] or "") and _PORTISH.match(values[prog_v] or ""):
        raise WrapRefused(f"line {cmd.line}: cannot tell whether {host_word.text} holds "
                          "tcpserver options or the host: wrap it by hand")
    dashdash = owner[first - 1] if first > 0 and values[first - 1] == "--" else None
    return Operands(values[:first], owner[host], owner[prog_v], dashdash)


def _softlimit_before(loc: Location) -> tuple[int, int, list[str]] | None:
    """(first, end) word indexes and letters of a softlimit before tcpserver."""
    words = loc.command.args
    for k in range(loc.tcpserver):
        if loc.name(k) in SOFTLIMITS:
            values = [resolve(w, loc.env) for w in words]
            end, letters = getopt(values, k + 1, SOFTLIMIT_OPTSTRING)
            if end == loc.tcpserver:
                return k, end, letters
            return None
    return None


def wrap(text: str, wrapper: str = "supervise-smtp", options: tuple[str, ...] = ()) -> Result:
    """Insert ``wrapper [options] --`` before tcpserver's program; pure.

    Raises WrapRefused or ShellSyntaxError (see :func:`locate`).
    """
    loc = locate(text)
    words = loc.command.args
    warnings: list[str] = []
    line = words[loc.prog].line
    chain = [loc.name(k) for k in range(loc.prog, loc.smtpd)]
    if "recordio" in chain:
        warnings.append(
            f"line {line}: recordio is still in the chain (left in place): it logs every "
            "byte, message bodies and AUTH secrets included, and breaks TLS; remove it "
            "once supervise-smtp's events are enough (--capture DIR keeps redacted, TLS-safe "
            "transcripts of the connections you choose)")
    if "fixcrio" in chain:
        warnings.append(
            f"line {line}: fixcrio is still in the chain (left in place): it rewrites bare "
            "LF silently, so supervise-smtp never sees a bare-LF session; remove it to "
            "let the events name the broken mailers (--bare-lf fix rewrites bare LF as fixcrio "
            "does, inside DATA only, and logs each message it fixed)")
    if loc.wrapped:
        return Result(text, False, True, warnings, line)

    if not (words[0].text == "exec"):
        warnings.append(f"line {loc.command.line}: the tcpserver command is not run with "
                        "exec: svc/sv/s6-svc signals will reach sh, not tcpserver")
    for k in range(loc.tcpserver):
        if loc.name(k) == "chpst":
            values = [resolve(w, loc.env) for w in words]
            _, letters = getopt(values, k + 1, CHPST_OPTSTRING)
            if "m" in letters:
                warnings.append(
                    f"line {words[k].line}: chpst -m before tcpserver also limits "
                    "supervise-smtp (Python needs ~20 MB more); move the memory limit to a "
                    "softlimit after supervise-smtp --")

    insert = " ".join([shlex.quote(wrapper), *map(shlex.quote, options), "--"]) + " "
    edits: list[tuple[int, int, str]] = []
    moved = _softlimit_before(loc)
    if moved is not None:
        first, end, letters = moved
        if set(letters) <= _MEMORY_LIMITS:
            span = text[words[first].start:words[end - 1].end]
            edits.append((words[first].start, words[end].start, ""))
            insert += single_line(span) + " "
            warnings.append(
                f"line {words[first].line}: moved `{single_line(span)}` from before "
                "tcpserver to after supervise-smtp, so that the limit binds qmail-smtpd "
                "and not the Python interpreter (tcpserver itself is no longer limited)")
        else:
            warnings.append(
                f"line {words[first].line}: softlimit before tcpserver also limits "
                "supervise-smtp (left in place because it sets more than memory limits); "
                "make sure -m leaves Python ~20 MB, or move it after supervise-smtp --")
    edits.append((words[loc.prog].start, words[loc.prog].start, insert))
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    return Result(out, True, False, warnings, line)


def single_line(span: str) -> str:
    return re.sub(r"\s*\\\n\s*", " ", span)


# --------------------------------------------------------------------------
# The I/O shell.

USAGE = ("usage: supervise-smtp wrap-run PATH [--serve] [--dry-run] [--yes] "
         "[--wrapper PROG] [-- OPTIONS]")
HELP = f"""{USAGE}

Insert supervise-smtp into the qmail-smtpd command of a run script, right
after tcpserver's host and port (before softlimit, rblsmtpd, fixcrio,
recordio and qmail-smtpd).  Shows a unified diff first.  The script is read,
never run.

  --serve         turn the tcpserver command (wrapped or not) into
                  `supervise-smtp serve [tcpserver options] [OPTIONS] host port
                  -- prog...`: serve takes tcpserver's place (docs/serve.md);
                  a tcpserver option serve refuses is a refusal (exit 100)
  --dry-run       show the diff and the notes, write nothing (exit 0)
  -y, --yes       write without asking
  --wrapper PROG  the command to insert (default: supervise-smtp's absolute
                  path on PATH, else "supervise-smtp")
  -- OPTIONS      supervise-smtp options to insert before its "--"

Without --yes, asks on a terminal; with no terminal, prints the diff, writes
nothing and exits 1.  Writing keeps a backup, PATH{BACKUP_SUFFIX} (then .1,
.2, ...), and keeps the script's mode and owner.

exit: 0 written, already wrapped (--serve: already serve), or --dry-run; 1 not written (declined, or
no terminal and no --yes); 100 usage or no safe place to insert (nothing
written); 111 cannot read or write the files.
"""


def _parse(args: list[str]) -> tuple[str, bool, bool, str | None, list[str], bool]:
    path: str | None = None
    dry = yes = serve = False
    wrapper: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            opts = args[i + 1:]
            break
        if a in ("-h", "--help"):
            raise _Help
        if a == "--dry-run":
            dry = True
        elif a == "--serve":
            serve = True
        elif a in ("-y", "--yes"):
            yes = True
        elif a == "--wrapper" or a.startswith("--wrapper="):
            if "=" in a:
                wrapper = a.split("=", 1)[1]
            else:
                i += 1
                if i == len(args):
                    raise UsageError(f"option --wrapper needs a value ({USAGE})")
                wrapper = args[i]
        elif a.startswith("-") and a != "-":
            raise UsageError(f"unknown option {a} ({USAGE})")
        elif path is None:
            path = a
        else:
            raise UsageError(f"one PATH only ({USAGE})")
        i += 1
    else:
        opts = []
    if path is None:
        raise UsageError(f"missing PATH ({USAGE})")
    if opts:
        from supervise_smtp.session.options import parse

        parse([*opts, "qmail-smtpd"])  # the options must be valid for the wrapper
    return path, dry, yes, wrapper, opts, serve


class _Help(Exception):
    pass


def _default_wrapper() -> str:
    import shutil

    return shutil.which("supervise-smtp") or "supervise-smtp"


def _backup_path(path: str) -> str:
    candidate = path + BACKUP_SUFFIX
    n = 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}{BACKUP_SUFFIX}.{n}"
    return candidate


def _write(path: str, old: str, new: str) -> str:
    """Backup, then atomic replace keeping mode and owner; returns the backup path."""
    st = os.stat(path)
    backup = _backup_path(path)
    tmp = os.path.join(os.path.dirname(path) or ".",
                       f".{os.path.basename(path)}.supervise-smtp.tmp")
    try:
        _write_file(backup, old, st)
        _write_file(tmp, new, st)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise TempError(f"unable to write {path}: {err.strerror}", err.errno) from err
    return backup


def _write_file(path: str, text: str, st: os.stat_result) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape",
                       newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, st.st_mode & 0o7777)
        try:
            os.chown(path, st.st_uid, st.st_gid)
        except PermissionError:
            pass
    except BaseException:
        os.unlink(path)
        raise


def main(args: list[str]) -> int:
    """``supervise-smtp wrap-run``: returns the exit code (see HELP)."""
    try:
        path, dry, yes, wrapper, opts, serve = _parse(args)
    except _Help:
        sys.stdout.write(HELP)
        return 0
    real = os.path.realpath(path)
    try:
        with open(real, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            old = fh.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory (give the run script: {path}/run)") from None
    except OSError as err:
        raise TempError(f"unable to read {path}: {err.strerror}", err.errno) from err
    try:
        from supervise_smtp.runscript.wrap_serve import to_serve

        convert = to_serve if serve else wrap
        result = convert(old, wrapper or _default_wrapper(), tuple(opts))
    except (WrapRefused, ShellSyntaxError) as err:
        raise UsageError(f"{path}: {err}; nothing changed") from None
    for note in result.warnings:
        sys.stderr.write(f"supervise-smtp wrap-run: warning: {path}: {note}\n")
    if result.already:
        what = "runs supervise-smtp serve" if serve else "wrapped"
        sys.stdout.write(f"{path}: already {what} (line {result.line}); nothing changed\n")
        return 0
    import difflib

    diff = difflib.unified_diff(old.splitlines(keepends=True),
                                result.text.splitlines(keepends=True),
                                fromfile=path,
                                tofile=f"{path} ({'serve' if serve else 'wrapped'})")
    sys.stdout.writelines(line if line.endswith("\n") else line + "\n" for line in diff)
    sys.stdout.flush()
    if dry:
        return 0
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            sys.stderr.write(f"supervise-smtp wrap-run: {path} not written: no terminal to "
                             "confirm on; re-run with --yes to write it\n")
            return 1
        sys.stdout.write(f"Write {path}? [y/N] ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            sys.stdout.write(f"{path} not written\n")
            return 1
    backup = _write(real, old, result.text)
    sys.stdout.write(f"wrote {path} (backup: {backup}); restart the service to use it "
                     "(svc -t DIR, sv restart DIR or s6-svc -r DIR)\n")
    return 0
