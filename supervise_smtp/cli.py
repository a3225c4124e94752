"""Command line: argv by hand, then one connection; the only place that exits.

Options are parsed by hand from the table in options.py (argparse is a
costly import, paid by every SMTP connection: docs/performance.md).  Exit codes: 100 usage, 111
could not start the child (or fd 0 or 1 closed: no client); after the child
ran, its exit code, or its terminating signal raised on ourselves so that
tcpserver's ``end PID status S`` is the same as without the wrapper.
"""

from __future__ import annotations

import os
import sys

from supervise_smtp.errors import EXIT_TEMP, EXIT_USAGE, TempError, UsageError, say
from supervise_smtp.session.options import OPTIONS, InfoRequested, parse

__all__ = ["main", "parse", "help_text", "USAGE", "SUBCOMMANDS"]

USAGE = "usage: supervise-smtp [options] [--] prog [args...]"

# The options that take a value (tests/process/test_manpage.py checks the page names each).
_VALUED = tuple(name for row in OPTIONS if row[1] for name in row[0].split(", "))


def help_text() -> str:
    """What ``--help`` prints: usage, the option table, subcommands, exit codes."""
    from supervise_smtp.session.options import help_list

    return f"""{USAGE}

Runs prog (qmail-smtpd and its chain) on a socketpair, relays the SMTP
connection on fds 0/1 byte for byte, and writes one line per event on fd 2.

options:
{help_list()}
subcommands (each with --help):
  supervise-smtp serve [tcpserver options] [options] host port prog...
                                    resident mode: tcpserver's place, a fork per
                                    connection, the same session and lines
  supervise-smtp wrap-run PATH      insert supervise-smtp into a run script
  supervise-smtp check-service DIR  sanity-check a qmail-smtpd service dir
  supervise-smtp report [FILES...]  pflogsumm-style report of the summary lines
  supervise-smtp collect [--textfile PATH] [--listen ADDR:PORT] -- logger...
                                    log-stage filter: lines on to the logger
                                    unchanged, Prometheus counters from them

exit: 100 usage, 111 cannot start prog (or fd 0/1 closed), else prog's own status.
"""


def _refuse(fmt: str, err: TempError) -> None:
    """Exit 111 before anything started, with the lines a spawn failure gives."""
    from supervise_smtp.session.output import Output
    from supervise_smtp.session.run import say_refused

    out = Output(fmt, background=True)  # never stalls on a stuck log pipe
    out.base = {"remote": os.environ.get("TCPREMOTEIP"), "pid": os.getpid()}
    say_refused(out, "start", err, 0)
    say(f"supervise-smtp: fatal: {err}\n")
    os._exit(EXIT_TEMP)


# Subcommands: module with ``main(args: list[str]) -> int``, imported only
# when asked for.  A program with one of these names needs ``--`` before it.
SUBCOMMANDS = {
    "wrap-run": "supervise_smtp.runscript.wrap",
    "check-service": "supervise_smtp.runscript.check",
    "serve": "supervise_smtp.serve.server",
    "report": "supervise_smtp.logs.report",
    "collect": "supervise_smtp.logs.collect",
}


def _subcommand(name: str, args: list[str]) -> int:
    """Run a subcommand; its UsageError is exit 100, its TempError 111."""
    import importlib

    module = importlib.import_module(SUBCOMMANDS[name])
    try:
        return int(module.main(args))
    except UsageError as err:
        say(f"supervise-smtp {name}: fatal: {err}\n")
        return EXIT_USAGE
    except TempError as err:
        say(f"supervise-smtp {name}: fatal: {err}\n")
        return EXIT_TEMP


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; never returns."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        sys.stdout.flush()
        code = _subcommand(args[0], args[1:])
        sys.stdout.flush()
        os._exit(code)
    from supervise_smtp.session.process import standard_fds

    bad_fds = standard_fds()  # first of all: fd 2 on /dev/null if it is closed
    try:
        options, prog = parse(args)
    except InfoRequested as asked:
        if asked.what == "help":
            say(help_text(), fd=1)
        else:
            from supervise_smtp import __version__

            say(f"supervise-smtp {__version__}\n", fd=1)
        os._exit(0)
    except UsageError as err:
        hint = ""
        if not [a for a in args if a != "--"]:  # nothing at all: say what there is
            hint = f"; or supervise-smtp {'|'.join(SUBCOMMANDS)} ...; see --help"
        say(f"supervise-smtp: fatal: {err} ({USAGE}{hint})\n")
        os._exit(EXIT_USAGE)

    if bad_fds is not None:  # fd 0 or 1 closed (no client), or no /dev/null for fd 2
        _refuse(options.format, bad_fds)
    from supervise_smtp.session import run as session

    try:
        status = session.run(options, prog)
    except TempError as err:
        say(f"supervise-smtp: fatal: {err}\n")
        os._exit(EXIT_TEMP)
    passed_on = status.passed_on()  # the child's code or signal; a lost status is 111
    if os.WIFSIGNALED(passed_on):
        from supervise_smtp.session.process import die_like

        die_like(os.WTERMSIG(passed_on))
        os._exit(128 + os.WTERMSIG(passed_on))
    os._exit(os.WEXITSTATUS(passed_on))
