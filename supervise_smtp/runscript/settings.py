"""The settings a service's run script ends up with, worked out without running it.

Run scripts take their settings three ways, and the shipped ones use all
three: an envdir re-exec (``exec envdir ./env "$0"``: daemontools' envdir,
s6-envdir, ``chpst -e``) that puts ``./env`` in the environment before the
script starts again; a sourced file (``. ./conf``, the runit habit); and
defaults that fill what is still unset or empty (``: "${NAME:=default}"``),
some of them by command substitution (``$(id -u qmaild)``, ``$(head -n 1
/var/qmail/control/concurrencyincoming)``).  :func:`service_settings` follows
the script's commands in order and does the same statically: the files are
read, and the few substitutions run scripts use are answered in Python (the
password database for ``id``, a file read for ``head`` and ``cat``).  Nothing
is executed, so a broken conf or a hostile command costs nothing.

Each value keeps where it came from, and a substitution that fails keeps
why (``id: 'qmaild': no such user`` becomes an empty value with the
reason), so that check-service can name the setting to fix and how.  A
value that cannot be known statically (``$(hostname)``) is None.  Branches
are not followed: every ``. FILE`` and default is taken as if its ``if``
were true, as it is in the shipped scripts.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass

from supervise_smtp.argv import CHPST_OPTSTRING, takes_value
from supervise_smtp.runscript.sh import (
    Command,
    ShellSyntaxError,
    Word,
    assignment,
    program_name,
    shell_commands,
    unquote,
    var_name,
)

__all__ = ["Setting", "service_settings", "expand", "expand_word", "known", "where_to_set",
           "word_setting"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# ${NAME:=default} / ${NAME=default}; the default may hold ${X} and $(...) once
_DEFAULT = re.compile(r"\$\{(" + _NAME + r")(:?)=((?:[^{}$]|\$\{[^}]*\}|\$\([^)]*\)|\$)*)\}")
_SUBST = re.compile(r"^\$\((.*)\)$|^`(.*)`$", re.S)
# $NAME, ${NAME}, ${NAME-word}, ${NAME:-word}
_VAR = re.compile(r"\$(?:\{(" + _NAME + r")(?:(:?)-([^}]*))?\}|(" + _NAME + r"))")
_ENVDIRS = ("envdir", "s6-envdir")


@dataclass(frozen=True)
class Setting:
    """One variable as the run script would see it at its exec line."""

    value: str | None    # None: not knowable without running something
    origin: str          # "./conf", "./env/NAME", "run line 22: $(id -u qmaild)"
    problem: str | None = None  # why a command substitution gave nothing
    fix: str | None = None      # how to make it give something


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except OSError:
        return None


def _envdir(directory: str, values: dict[str, Setting]) -> None:
    """envdir(8)'s reading of a directory: the first line of each file, trailing
    blanks dropped, NUL as newline; an empty file unsets the variable."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    rel = os.path.basename(directory.rstrip("/"))
    for name in names:
        if name.startswith(".") or "=" in name:
            continue
        text = _read(os.path.join(directory, name))
        if text is None:
            continue
        if text == "":
            values.pop(name, None)
            continue
        first = text.split("\n", 1)[0].rstrip(" \t").replace("\0", "\n")
        values[name] = Setting(first, f"./{rel}/{name}")


def _substitute(command: str, origin: str) -> Setting:
    """A command substitution run scripts use, answered without running it."""
    try:
        commands = shell_commands(command)
    except ShellSyntaxError:
        return Setting(None, origin)
    if len(commands) != 1:
        return Setting(None, origin)
    words = [w.literal for w in commands[0].args]
    if any(w is None for w in words):
        return Setting(None, origin)
    argv = [w for w in words if w is not None]
    if len(argv) == 3 and argv[0] == "id" and argv[1] in ("-u", "-g"):
        try:
            entry = pwd.getpwnam(argv[2])
        except KeyError:
            return Setting("", origin, f"id: '{argv[2]}': no such user", _useradd(argv[2]))
        return Setting(str(entry.pw_uid if argv[1] == "-u" else entry.pw_gid), origin)
    if argv[:1] == ["head"] and argv[1:-1] in (["-n", "1"], ["-n1"], ["-1"]) or \
            argv[:1] == ["cat"] and len(argv) == 2:
        text = _read(argv[-1])
        if text is None:
            return Setting("", origin, f"{argv[-1]} cannot be read")
        if argv[0] == "head":
            text = text.split("\n", 1)[0]
        return Setting(text.rstrip("\n"), origin)
    return Setting(None, origin)


def _useradd(name: str) -> str:
    """qmail's own accounts (INSTALL.ids) live in the nofiles group."""
    home = "/var/log/qmail" if name == "qmaill" else "/var/qmail"
    return (f"create the user: groupadd -f nofiles && useradd --system -g nofiles "
            f"-d {home} -s /usr/sbin/nologin {name}")


def expand(text: str, values: dict[str, Setting], origin: str) -> Setting:
    """The value of a default or an assignment's right-hand side (``text`` as written).

    A literal, ``$NAME`` / ``${NAME}`` parts (an unset name is empty, as in
    sh), or one command substitution; anything else is unknown (None).
    """
    m = _SUBST.match(text.strip('"'))
    if m:
        inner = m.group(1) if m.group(1) is not None else m.group(2)
        where = f"{origin}: {text.strip(chr(34))}"
        return _substitute(inner, where)
    try:
        plain = unquote(text, keep_expansions=True)
    except ShellSyntaxError:
        return Setting(None, origin)
    if plain is None:
        return Setting(None, origin)
    problems: list[Setting] = []

    def one(m: re.Match[str]) -> str:
        got = values.get(m.group(1) or m.group(4))
        if m.group(3) is not None and (got is None or (m.group(2) and got.value == "")):
            return m.group(3)
        if got is None:
            return ""
        if got.value is None:
            raise _Unknown
        if got.problem:
            problems.append(got)
        return got.value

    try:
        value = _VAR.sub(one, plain)
    except _Unknown:
        return Setting(None, origin)
    if "$" in value or "`" in value:
        return Setting(None, origin)
    if problems:
        return Setting(value, problems[0].origin, problems[0].problem, problems[0].fix)
    return Setting(value, origin)


class _Unknown(Exception):
    pass


def _sourced(cmd: Command, directory: str) -> str | None:
    """The file a ``. FILE`` / ``source FILE`` command reads, as a path."""
    words = cmd.args
    if len(words) == 2 and words[0].text in (".", "source") and words[1].literal:
        return os.path.join(directory, words[1].literal)
    return None


def _envdir_of(cmd: Command, directory: str, values: dict[str, Setting]) -> str | None:
    """The directory an envdir, s6-envdir or ``chpst -e`` in this command loads."""
    words = cmd.args
    for k, w in enumerate(words):
        name = program_name(w, {})
        if name in _ENVDIRS:
            rest = [x.literal for x in words[k + 1:]]
            while rest and rest[0] is not None and rest[0].startswith("-"):
                rest.pop(0)  # s6-envdir's -I -i -n -f flags
            return os.path.join(directory, rest[0]) if rest and rest[0] else None
        if name == "chpst":
            j = k + 1
            while j < len(words) and (words[j].literal or "").startswith("-"):
                opt = words[j].literal or ""
                if opt[1:2] == "e":
                    arg = opt[2:] or (words[j + 1].literal if j + 1 < len(words) else None)
                    return os.path.join(directory, arg) if arg else None
                takes = opt[1:2] in takes_value(CHPST_OPTSTRING)
                j += 2 if takes and len(opt) == 2 else 1
    return None


def _assignment(w: Word) -> tuple[str, str] | None:
    return assignment(w.text)


def _apply_file(path: str, values: dict[str, Setting]) -> None:
    """A sourced file's plain ``NAME=value`` lines (a file sh cannot cut is skipped)."""
    text = _read(path)
    if text is None:
        return
    try:
        commands = shell_commands(text)
    except ShellSyntaxError:
        return
    rel = "./" + os.path.basename(path)
    _walk(commands, values, os.path.dirname(path), rel, envdirs=False)


def _walk(commands: list[Command], values: dict[str, Setting], directory: str,
          label: str, envdirs: bool) -> None:
    for cmd in commands:
        words = cmd.args
        if not words:
            continue
        if envdirs:
            env = _envdir_of(cmd, directory, values)
            if env is not None:
                continue  # loaded before the walk: it is the re-exec'd script's environment
        sourced = _sourced(cmd, directory)
        if sourced is not None:
            _apply_file(sourced, values)
            continue
        if words[0].text == "unset":
            for w in words[1:]:
                values.pop(w.text, None)
            continue
        body = words[1:] if words[0].text in ("export", "readonly") else words
        pairs = [_assignment(w) for w in body]
        if body and all(pairs):
            for w, pair in zip(body, pairs, strict=True):
                assert pair is not None
                name, text = pair
                values[name] = expand(text, values, f"{label} line {w.line}")
            continue
        for w in words:
            for name, colon, default in _DEFAULT.findall(w.text):
                now = values.get(name)
                if now is not None and (now.value != "" or not colon):
                    continue
                values[name] = expand(default, values, f"{label} line {w.line}")


def service_settings(directory: str, commands: list[Command]) -> dict[str, Setting]:
    """The run script's variables at its exec line (see the module docstring).

    ``commands`` is the script cut by :func:`sh.shell_commands`; files it
    sources and envdirs it loads are read relative to ``directory`` (the
    supervisor runs the script there).
    """
    values: dict[str, Setting] = {}
    for cmd in commands:
        env = _envdir_of(cmd, directory, values)
        if env is not None:
            _envdir(env, values)
    _walk(commands, values, directory, "run", envdirs=True)
    return values


def known(values: dict[str, Setting]) -> dict[str, str]:
    """The values that are known, for :func:`sh.resolve`."""
    return {k: s.value for k, s in values.items() if s.value is not None}


def where_to_set(directory: str, name: str) -> str:
    """Where an operator sets ``name`` for this service: ./conf, ./env/NAME or run."""
    if os.path.isfile(os.path.join(directory, "conf")):
        return f"set {name} in {os.path.join(directory, 'conf')}"
    if os.path.isdir(os.path.join(directory, "env")):
        return f"set {name} in {os.path.join(directory, 'env', name)}"
    return f"set {name} in {os.path.join(directory, 'run')}"


def word_setting(word: Word, values: dict[str, Setting]) -> tuple[str, Setting] | None:
    """(NAME, its setting) when ``word`` is just ``$NAME`` and NAME is set."""
    name = var_name(word)
    if name is None or name not in values:
        return None
    return name, values[name]


def expand_word(word: Word, values: dict[str, Setting]) -> list[str] | None:
    """The arguments a word of a command becomes, as sh expands it with these
    settings (an unquoted expansion is split at blanks: an empty
    ``$SUPERVISE_SMTP_OPTS`` is no argument at all); None when unknown."""
    if word.literal is not None:
        return [word.literal]
    got = expand(word.text, values, "")
    if got.value is None:
        return None
    if '"' not in word.text and "'" not in word.text:
        return got.value.split()
    return [got.value]
