"""Command line: argv by hand, then one connection; the only place that exits.

Usage is parsed without argparse (13 ms of imports, paid by every SMTP
connection).  Exit codes: 100 usage, 111 could not start the child (or fd 0
or 1 closed: no client); after the child ran, its exit code, or its
terminating signal raised on ourselves so that tcpserver's ``end PID status
S`` is the same as without the wrapper.
"""

from __future__ import annotations

import os
import sys

from supervise_smtp.errors import EXIT_TEMP, EXIT_USAGE, TempError, UsageError

__all__ = ["main", "parse", "USAGE", "SUBCOMMANDS"]

USAGE = "usage: supervise-smtp [options] [--] prog [args...]"
HELP = f"""{USAGE}

Runs prog (qmail-smtpd and its chain) on a socketpair, relays the SMTP
connection on fds 0/1 byte for byte, and writes one line per event on fd 2.

options:
  --stderr tag|pass      child's stderr lines as tagged events (default), or
                         passed through byte for byte as whole lines
  --format logfmt|json   event line format (default logfmt)
  --events anomalies|all|none
                         SMTP events logged as they happen (default
                         anomalies: bare LF, smuggling, mid-DATA replies,
                         pipelining violations, TLS alerts...; all adds every
                         command and reply, never a body or a credential)
  --alert-exec PROG      run PROG (no shell, detached) after abnormal verdicts,
                         with SUPERVISE_SMTP_* variables holding the summary
  --alert-on VERDICTS    comma list (default server_crashed,queue_temp_fail,
                         queue_perm_fail,wrapper_error,parent_died)
  --alert-rate N/PERIOD  at most N alerts per PERIOD (e.g. 10/3600s, 5/1m)
                         across connections; needs --state-dir
  --state-dir DIR        where the alert rate state lives (0700)
  --idle-timeout S       no byte either way for S seconds: 421 and close
                         (off by default: qmail-smtpd's own timeout rules)
  --max-session S        whole connection longer than S seconds: same
  --bare-lf observe|fix  observe (default): byte-exact; fix: inside DATA only,
                         bare LF becomes CRLF (as fixcrio) and each fixed
                         message is logged as bare_lf_fixed with its sender
  --capture DIR          keep a redacted, TLS-safe transcript per connection in
                         DIR (0600 files): commands and replies escaped, AUTH
                         and bodies replaced by summaries, TLS as records
  --capture-when LIST    always (default) or verdicts (bare_lf,server_crashed)
  --capture-remote NETS  only for these peers (CIDR list)
  --capture-max-bytes N  bound per transcript (default 1 MiB)
  --capture-body none|headers|full
                         keep the message: none (default: size and anomaly
                         summary only), its headers, or all of it
  --subreaper            become a child subreaper: reap the queue program
                         when qmail-smtpd dies first and report its exit
                         (hides the parent death from qmail-scanner's
                         getppid() check; supervise-smtp reports it instead)
  --linger SECONDS       after the child exits, wait this long for descendants
                         that still hold its stderr (default 1)
  -h, --help             this help
  -V, --version          print the version

subcommands (each with --help):
  supervise-smtp wrap-run PATH      insert supervise-smtp into a run script
  supervise-smtp check-service DIR  sanity-check a qmail-smtpd service dir

exit: 100 usage, 111 cannot start prog (or fd 0/1 closed), else prog's own status.
"""

_CHOICES = {"--stderr": ("tag", "pass"), "--format": ("logfmt", "json"),
            "--events": ("anomalies", "all", "none"), "--bare-lf": ("observe", "fix"),
            "--capture-body": ("none", "headers", "full")}
_VALUED = ("--stderr", "--format", "--linger", "--events", "--bare-lf", "--alert-exec",
           "--alert-on", "--alert-rate", "--state-dir", "--idle-timeout", "--max-session",
           "--capture", "--capture-when", "--capture-remote", "--capture-max-bytes",
           "--capture-body")
_SECONDS = ("--linger", "--idle-timeout", "--max-session")
_FLAGS = ("--subreaper",)


def parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split argv into (options, prog argv); raises UsageError."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-h", "--help", "-V", "--version"):
            opts[arg.lstrip("-")[0].lower()] = ""
            return opts, []
        if not arg.startswith("-") or arg == "-":
            break
        if arg in _FLAGS:
            opts[arg[2:]] = ""
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name not in _VALUED:
            raise UsageError(f"unknown option {arg}")
        if not eq:
            i += 1
            if i >= len(args):
                raise UsageError(f"option {name} needs a value")
            value = args[i]
        if name in _CHOICES and value not in _CHOICES[name]:
            raise UsageError(f"bad value for {name}: {value} (one of {'|'.join(_CHOICES[name])})")
        if name in _SECONDS:
            try:
                if not 0 <= float(value) <= 86400:
                    raise ValueError
            except ValueError:
                raise UsageError(f"bad value for {name}: {value}") from None
        if name == "--alert-rate":
            from supervise_smtp.alert import parse_rate

            parse_rate(value)  # UsageError when malformed
        if name == "--capture-when" and value != "always":
            from supervise_smtp.diagnose import VERDICTS

            bad = [v for v in value.split(",") if v not in VERDICTS]
            if bad:
                raise UsageError(f"bad verdict for --capture-when: {bad[0]}")
        if name == "--capture-remote":
            import ipaddress

            try:
                for net in value.split(","):
                    ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise UsageError(f"bad network for --capture-remote: {value}") from None
        if name == "--capture-max-bytes" and not (value.isdigit() and 0 < int(value) < 1 << 40):
            raise UsageError(f"bad value for --capture-max-bytes: {value}")
        if name == "--alert-on":
            from supervise_smtp.alert import parse_verdicts

            parse_verdicts(value)
        opts[name[2:]] = value
        i += 1
    prog = args[i:]
    if not prog:
        raise UsageError("missing prog")
    for name in ("alert-on", "alert-rate"):
        if name in opts and "alert-exec" not in opts:
            raise UsageError(f"--{name} needs --alert-exec")
    for name in ("capture-when", "capture-remote", "capture-max-bytes", "capture-body"):
        if name in opts and "capture" not in opts:
            raise UsageError(f"--{name} needs --capture")
    if "alert-rate" in opts and "state-dir" not in opts:
        raise UsageError("--alert-rate needs --state-dir")
    return opts, prog


def _say(fd: int, text: str) -> None:
    """One message; on fd 2 only if the log pipe takes it within a second.

    fd 2 is the log service's pipe, shared with tcpserver: a stuck logger
    must not hold a wrapper (and tcpserver's -c slot) forever on its way out.
    """
    data = text.encode("utf-8", "surrogateescape")
    try:
        if fd == 2:
            import select

            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if not poller.poll(1000):
                return
        os.write(fd, data)
    except OSError:
        pass


def _refuse(fmt: str, err: TempError) -> None:
    """Exit 111 before anything started, with the lines a spawn failure gives."""
    from supervise_smtp.output import Output

    out = Output(fmt, background=True)  # never stalls on a stuck log pipe
    out.base = {"remote": os.environ.get("TCPREMOTEIP"), "pid": os.getpid()}
    out.emit("wrapper_error", where="start", error=str(err), errno=err.errno)
    out.emit("summary", verdict="wrapper_error", stage="connect", reason=str(err),
             duration_ms=0, exit=EXIT_TEMP)
    out.close(1.0)
    _say(2, f"supervise-smtp: fatal: {err}\n")
    os._exit(EXIT_TEMP)


# Subcommands: module with ``main(args: list[str]) -> int``, imported only
# when asked for.  A program with one of these names needs ``--`` before it.
SUBCOMMANDS = {
    "wrap-run": "supervise_smtp.wraprun",
    "check-service": "supervise_smtp.checkservice",
}


def _subcommand(name: str, args: list[str]) -> int:
    """Run a subcommand; its UsageError is exit 100, its TempError 111."""
    import importlib

    module = importlib.import_module(SUBCOMMANDS[name])
    try:
        return int(module.main(args))
    except UsageError as err:
        _say(2, f"supervise-smtp {name}: fatal: {err}\n")
        return EXIT_USAGE
    except TempError as err:
        _say(2, f"supervise-smtp {name}: fatal: {err}\n")
        return EXIT_TEMP


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; never returns."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        sys.stdout.flush()
        code = _subcommand(args[0], args[1:])
        sys.stdout.flush()
        os._exit(code)
    from supervise_smtp.process import standard_fds

    bad_fds = standard_fds()  # first of all: fd 2 on /dev/null if it is closed
    try:
        opts, prog = parse(args)
    except UsageError as err:
        _say(2, f"supervise-smtp: fatal: {err} ({USAGE})\n")
        os._exit(EXIT_USAGE)
    if "h" in opts:
        _say(1, HELP)
        os._exit(0)
    if "v" in opts:
        from supervise_smtp import __version__

        _say(1, f"supervise-smtp {__version__}\n")
        os._exit(0)

    if bad_fds is not None:  # fd 0 or 1 closed (no client), or no /dev/null for fd 2
        _refuse(opts.get("format", "logfmt"), bad_fds)
    from supervise_smtp import session

    options = session.Options(
        stderr_mode=opts.get("stderr", "tag"),
        format=opts.get("format", "logfmt"),
        linger_s=float(opts.get("linger", "1")),
        events=opts.get("events", "anomalies"),
        alert_exec=opts.get("alert-exec"),
        alert_on=opts.get("alert-on"),
        alert_rate=opts.get("alert-rate"),
        state_dir=opts.get("state-dir"),
        idle_timeout_s=float(opts.get("idle-timeout", "0")),
        max_session_s=float(opts.get("max-session", "0")),
        subreaper="subreaper" in opts,
        bare_lf=opts.get("bare-lf", "observe"),
        capture=opts.get("capture"),
        capture_when=opts.get("capture-when", "always"),
        capture_remote=opts.get("capture-remote"),
        capture_max_bytes=int(opts.get("capture-max-bytes", str(1 << 20))),
        capture_body=opts.get("capture-body", "none"),
    )
    try:
        status = session.run(options, prog)
    except TempError as err:
        _say(2, f"supervise-smtp: fatal: {err}\n")
        os._exit(EXIT_TEMP)
    if status.signal is not None:
        from supervise_smtp.process import die_like

        die_like(status.signal)
        os._exit(128 + status.signal)
    os._exit(status.code or 0)
