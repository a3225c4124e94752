"""The command a run script starts qmail-smtpd with, as it would run: which server
(tcpserver, or ``supervise-smtp serve`` in its place), its options, host, port
and program chain, with every word expanded from the service's settings.

Two shapes are understood, the two that the shipped run scripts choose
between with ``SERVE`` and that ``wrap-run`` writes::

    tcpserver [options] host port [supervise-smtp [options] --] prog...
    supervise-smtp serve [tcpserver options] [wrapper options] host port [--] prog...

When a script holds both (the shipped ones, in a ``case`` on ``SERVE``), the
serve line is the one that runs when ``SERVE`` is 1, the tcpserver line
otherwise.  tcpserver's options are read as its getopt reads them
(``TCPSERVER_OPTSTRING``); serve's long options as serve/config.py reads them.
Pure: the caller passes the settings, nothing here looks at the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from supervise_smtp.argv import TCPSERVER_OPTSTRING, bundle, takes_value
from supervise_smtp.runscript.settings import Setting, expand_word
from supervise_smtp.runscript.sh import Command, Word, program_name
from supervise_smtp.runscript.wrap import WrapRefused, locate

__all__ = ["Arg", "ServerLine", "server_line", "NoServerLine"]

_TAKES = takes_value(TCPSERVER_OPTSTRING)


class NoServerLine(Exception):
    """No tcpserver ... qmail-smtpd or serve ... qmail-smtpd command to check."""


@dataclass(frozen=True)
class Arg:
    """One argument of the command after expansion: its value (None: unknown) and
    the word of the script it comes from."""

    value: str | None
    word: Word

    def program(self) -> str:
        """The basename of the program this argument names ('' when unknown)."""
        if self.value is not None:
            return os.path.basename(self.value)
        return program_name(self.word, {})

    def is_program(self, name: str) -> bool:
        """Whether it names ``name``: by its value, or by the variable it comes from
        (``$SMTPD`` is qmail-smtpd even when it points at a test double)."""
        return self.program() == name or program_name(self.word, {}) == name


@dataclass
class ServerLine:
    """The server command, expanded (indexes are into ``args``)."""

    mode: str                 # "tcpserver" or "serve"
    command: Command
    args: list[Arg]
    server: int               # tcpserver, or the supervise-smtp word running serve
    options: dict[str, Arg] = field(default_factory=dict)  # tcpserver option letter -> value
    flags: set[str] = field(default_factory=set)           # tcpserver flags given
    long_options: list[str | None] = field(default_factory=list)  # serve: --name [value]
    host: Arg | None = None
    port: Arg | None = None
    prog: int = 0             # first word of the program chain
    wrapper: int | None = None  # the supervise-smtp word (serve: == server)
    smtpd: int | None = None  # the qmail-smtpd word

    @property
    def line(self) -> int:
        return self.command.line



def _expand(cmd: Command, values: dict[str, Setting]) -> list[Arg]:
    out = []
    for w in cmd.args:
        got = expand_word(w, values)
        if got is None:
            out.append(Arg(None, w))
        else:
            out.extend(Arg(v, w) for v in got)
    return out


def _long_takes_value(name: str) -> bool:
    """Whether serve's command line takes the next word as ``--name``'s value."""
    # serve's own tables (read, never changed): serve's options, then the wrapper's
    from supervise_smtp.serve.config import SERVE_LONG, wrapper_takes_value

    if name in SERVE_LONG:
        return SERVE_LONG[name][1] is not None
    return wrapper_takes_value(name)


def _walk_options(line: ServerLine, start: int) -> int:
    """tcpserver's getopt (serve: and its long options) from ``start``; returns the
    index of the first operand."""
    args = line.args
    i = start
    while i < len(args):
        v = args[i].value
        if v is None:
            if args[i].word.text.startswith("-"):
                i += 1  # an option we cannot read: skipped
                continue
            break
        if v == "--":
            return i + 1
        if not v.startswith("-") or v == "-":
            break
        if v.startswith("--"):
            name, eq, _ = v.partition("=")
            line.long_options.append(v)
            if line.mode == "serve" and not eq and _long_takes_value(name) and \
                    i + 1 < len(args):
                i += 1
                line.long_options.append(args[i].value)
            i += 1
            continue
        flags, taker, value = bundle(v, _TAKES)
        line.flags.update(flags)
        if taker is not None:
            if value is not None:
                line.options[taker] = Arg(value, args[i].word)
            elif i + 1 < len(args):
                i += 1
                line.options[taker] = args[i]
        i += 1
    return i


def _is_wrapper(arg: Arg) -> bool:
    return arg.is_program("supervise-smtp") or arg.word.text == "supervise_smtp"


def _serve_commands(commands: list[Command], values: dict[str, Setting]) -> list[Command]:
    """The commands running ``supervise-smtp serve ... qmail-smtpd``."""
    found = []
    for cmd in commands:
        args = _expand(cmd, values)
        if not any(a.is_program("qmail-smtpd") for a in args):
            continue
        if any(_is_wrapper(args[k]) and args[k + 1].value == "serve"
               for k in range(len(args) - 1)):
            found.append(cmd)
    return found


def _tcpserver(cmd: Command, values: dict[str, Setting]) -> ServerLine:
    args = _expand(cmd, values)
    t = next(k for k, a in enumerate(args) if a.is_program("tcpserver"))
    line = ServerLine("tcpserver", cmd, args, t)
    first = _walk_options(line, t + 1)
    if first + 2 > len(args):
        raise NoServerLine(f"line {cmd.line}: cannot find tcpserver's host and port")
    line.host, line.port, line.prog = args[first], args[first + 1], first + 2
    wrappers = [k for k in range(line.prog, len(args)) if _is_wrapper(args[k])]
    line.wrapper = wrappers[0] if wrappers else None
    line.smtpd = _smtpd(args, line.prog)
    return line


def _serve(cmd: Command, values: dict[str, Setting]) -> ServerLine:
    args = _expand(cmd, values)
    w = next(k for k in range(len(args) - 1)
             if _is_wrapper(args[k]) and args[k + 1].value == "serve")
    line = ServerLine("serve", cmd, args, w, wrapper=w)
    first = _walk_options(line, w + 2)
    if first + 2 > len(args):
        raise NoServerLine(f"line {cmd.line}: cannot find serve's host and port")
    line.host, line.port = args[first], args[first + 1]
    line.prog = first + 2
    if line.prog < len(args) and args[line.prog].value == "--":
        line.prog += 1
    line.smtpd = _smtpd(args, line.prog)
    return line


def _smtpd(args: list[Arg], start: int) -> int | None:
    hits = [k for k in range(start, len(args)) if args[k].is_program("qmail-smtpd")]
    return hits[0] if hits else None


def server_line(text: str, commands: list[Command], values: dict[str, Setting]) -> ServerLine:
    """The command that starts qmail-smtpd, as it would run with these settings.

    Raises NoServerLine (with the reason) when there is none to check, and
    ShellSyntaxError when the script cannot be read.
    """
    serve = _serve_commands(commands, values)
    try:
        tcp: Command | None = locate(text).command
        refused = ""
    except WrapRefused as err:
        tcp, refused = None, str(err)
    if len(serve) > 1:
        lines = ", ".join(str(c.line) for c in serve)
        raise NoServerLine(f"several supervise-smtp serve ... qmail-smtpd commands "
                           f"(lines {lines})")
    if serve and (tcp is None or values.get("SERVE", Setting("", "")).value == "1"):
        return _serve(serve[0], values)
    if tcp is None:
        raise NoServerLine(f"cannot find the tcpserver ... qmail-smtpd command: {refused}")
    return _tcpserver(tcp, values)
