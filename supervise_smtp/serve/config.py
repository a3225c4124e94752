"""``supervise-smtp serve`` command line: tcpserver's options, then the wrapper's.

    serve [tcpserver options] [wrapper --options] host port [--] prog...

tcpserver's options are read as ucspi-tcp 0.88's getopt reads them
(``dDvqQhHrR1UXx:t:u:g:l:b:B:c:pPoO``): letters bundled (``-vRHl0``), a
value attached (``-c40``) or in the next word (``-c 40``), ``--`` or the
first word not starting with ``-`` ends them.  Long options (``--name``)
are the wrapper's own (options.OPTIONS), parsed once here with
``options.parse`` and reused for every connection, plus serve's own
``--drain S``.

Stricter than tcpserver where tcpserver would silently do something else
than its manual says: tcpserver reads numbers with scan_ulong, so
``-u qmaild`` is uid 0 (no switch at all) and ``-c 0`` never accepts; here
a value that is not a number, a zero limit or a port above 65535 is a usage
error (exit 100).  Options of other tcpservers (ucspi-tcp6's -4 -6 -I,
the SSL patches' -s -S -n) are refused with the reason.
"""

from __future__ import annotations

from supervise_smtp.argv import TCPSERVER_OPTSTRING, bundle, takes_value
from supervise_smtp.errors import UsageError
from supervise_smtp.session.options import OPTIONS, InfoRequested, Options, parse

__all__ = ["ServeConfig", "parse_serve", "USAGE", "help_text", "SERVE_LONG", "wrapper_takes_value"]

USAGE = ("usage: supervise-smtp serve [-1UXpPhHrRoOdDqQv] [-c limit] [-x rules.cdb] "
         "[-B banner] [-g gid] [-u uid] [-b backlog] [-l localname] [-t timeout] "
         "[--drain S] [--stats-interval S] [--worker-sessions N] [--spare-workers N] "
         "[--metrics-listen ADDR:PORT] [--metrics-textfile F [--metrics-interval S]] "
         "[--daemon [--pidfile F] [--logfile F]] "
         "[wrapper options] host port [--] prog [args...]")

_TAKES_VALUE = takes_value(TCPSERVER_OPTSTRING)

# Options of other tcpserver builds, refused with what to do instead.
_FOREIGN = {
    "4": "ucspi-tcp6's -4 is not supported: the address family follows the host "
         "(0 or an IPv4 address: IPv4; :: or an IPv6 address: IPv6)",
    "6": "ucspi-tcp6's -6 is not supported: IPv4 clients get PROTO=TCP and IPv4 "
         "addresses, IPv6 clients PROTO=TCP6",
    "I": "ucspi-tcp6's -I is not supported: give a link-local host as fe80::1%eth0",
    "s": "TLS (-s) is not supported: qmail-smtpd's STARTTLS, or sslserver, does TLS",
    "S": "TLS (-S) is not supported",
    "n": "TLS certificates (-n) are not supported",
}

# serve's own long options: --name -> (ServeConfig attribute, kind of value).
SERVE_LONG = {"--drain": ("drain_s", "seconds"),
               "--stats-interval": ("stats_interval_s", "seconds"),
               "--worker-sessions": ("worker_sessions", "count"),
               "--spare-workers": ("spare_workers", "count"),
               "--metrics-listen": ("metrics_listen", "listen"),
               "--metrics-textfile": ("metrics_textfile", "path"),
               "--metrics-interval": ("metrics_interval_s", "seconds"),
               "--daemon": ("daemon", None),
               "--pidfile": ("pidfile", "path"),
               "--logfile": ("logfile", "path")}
_MAX_DRAIN_S = 86400.0
_MAX_COUNT = 1_000_000


class ServeConfig:
    """Everything the parent and its workers need, parsed once.

    Defaults are tcpserver's: verbosity 1 (-Q), remote host and remote info
    looked up (-h, -r), ident timeout 26 s, limit 40, backlog 20, IP options
    killed (-O), Nagle on (-d), no banner, no rules.
    """

    __slots__ = ("verbosity", "remote_host", "paranoid", "remote_info", "timeout_s",
                 "local_name", "rules", "allow_no_rules", "limit", "backlog", "banner",
                 "uid", "gid", "kill_ip_options", "nodelay", "print_port", "host", "port",
                 "options", "prog", "drain_s", "stats_interval_s", "daemon", "pidfile",
                 "logfile", "worker_sessions", "spare_workers", "metrics_listen",
                 "metrics_textfile", "metrics_interval_s")

    def __init__(self) -> None:
        self.verbosity = 1
        self.remote_host = True
        self.paranoid = False
        self.remote_info = True
        self.timeout_s = 26
        self.local_name: str | None = None
        self.rules: str | None = None
        self.allow_no_rules = False
        self.limit = 40
        self.backlog = 20
        self.banner = b""
        self.uid = 0  # 0: no switch, as tcpserver
        self.gid = 0
        self.kill_ip_options = True
        self.nodelay = False
        self.print_port = False
        self.host = ""
        self.port = ""
        self.options = Options()
        self.prog: list[str] = []
        self.drain_s = 0.0
        self.stats_interval_s = 300.0  # event=serve_stats every S seconds; 0: never
        self.daemon = False  # --daemon: detach (python-daemon), for hosts without a supervisor
        self.pidfile: str | None = None
        self.logfile: str | None = None
        self.worker_sessions = 100  # connections a worker serves before a fresh one takes over
        self.spare_workers = 4  # idle workers kept ready
        self.metrics_listen: tuple[str, int] | None = None  # --metrics-listen ADDR:PORT
        self.metrics_textfile: str | None = None  # node_exporter's textfile, rewritten
        self.metrics_interval_s = 15.0  # ... every S seconds


def _number(letter: str, value: str, low: int = 0, high: int = 1 << 32) -> int:
    """A decimal number within [low, high]; tcpserver's scan_ulong takes "" or "x" as 0."""
    if not value.isdigit() or not value.isascii() or not low <= int(value) <= high:
        raise UsageError(f"bad value for -{letter}: {value!r} (a number from {low} to {high})")
    return int(value)


def _env_number(name: str) -> int | None:
    """-U: $UID or $GID as envuidgid sets them; None when unset (tcpserver keeps the default)."""
    import os

    value = os.environ.get(name)
    if value is None:
        return None
    return _number("U", value)


def _apply(cfg: ServeConfig, letter: str, value: str) -> None:
    """One tcpserver option, as tcpserver.c's switch does it."""
    flags = {"d": ("nodelay", False), "D": ("nodelay", True), "v": ("verbosity", 2),
             "q": ("verbosity", 0), "Q": ("verbosity", 1), "P": ("paranoid", False),
             "p": ("paranoid", True), "O": ("kill_ip_options", True),
             "o": ("kill_ip_options", False), "H": ("remote_host", False),
             "h": ("remote_host", True), "R": ("remote_info", False),
             "r": ("remote_info", True), "1": ("print_port", True),
             "X": ("allow_no_rules", True)}
    if letter in flags:
        name, flag = flags[letter]
        setattr(cfg, name, flag)
    elif letter == "U":
        uid, gid = _env_number("UID"), _env_number("GID")
        cfg.uid = cfg.uid if uid is None else uid
        cfg.gid = cfg.gid if gid is None else gid
    elif letter == "c":
        cfg.limit = _number("c", value, 1)
    elif letter == "b":
        cfg.backlog = _number("b", value, 0, 65535)
    elif letter == "t":
        cfg.timeout_s = _number("t", value, 0, 86400)
    elif letter == "u":
        cfg.uid = _number("u", value)
    elif letter == "g":
        cfg.gid = _number("g", value)
    elif letter == "x":
        cfg.rules = value
    elif letter == "B":
        import os

        cfg.banner = os.fsencode(value)
    elif letter == "l":
        cfg.local_name = value


def _short(cfg: ServeConfig, args: list[str], i: int) -> int:
    """One word of bundled short options at args[i]; returns the next index."""
    flags, taker, value = bundle(args[i], _TAKES_VALUE)
    for letter in [*flags, taker] if taker is not None else flags:
        if letter in _FOREIGN:
            raise UsageError(_FOREIGN[letter])
        if letter not in TCPSERVER_OPTSTRING or letter == ":":
            raise UsageError(f"unknown option -{letter}")
    for letter in flags:
        _apply(cfg, letter, "")
    if taker is not None:
        if value is None:
            if i + 1 >= len(args):
                raise UsageError(f"option -{taker} needs a value")
            i += 1
            value = args[i]
        _apply(cfg, taker, value)
    return i + 1


def wrapper_takes_value(name: str) -> bool:
    """Whether the wrapper's long option ``name`` takes a value (session/options.py)."""
    for row in OPTIONS:
        if name in row[0].split(", "):
            return bool(row[1])
    return False  # unknown: options.parse will say so


def _long(cfg: ServeConfig, args: list[str], i: int, wrapper: list[str]) -> int:
    """One ``--name[=value]`` at args[i]: serve's own, or collected for the wrapper."""
    name, eq, value = args[i].partition("=")
    if name in ("--help", "--version"):
        raise InfoRequested(name)
    if name in SERVE_LONG:
        attr, kind = SERVE_LONG[name]
        if kind is None:
            if eq:
                raise UsageError(f"option {name} takes no value")
            setattr(cfg, attr, True)
            return i + 1
        if not eq:
            if i + 1 >= len(args):
                raise UsageError(f"option {name} needs a value")
            i += 1
            value = args[i]
        if kind == "path":
            if not value:
                raise UsageError(f"bad value for {name}: an empty path")
            setattr(cfg, attr, value)
            return i + 1
        if kind == "listen":
            from supervise_smtp.logs.http import parse_listen

            try:
                setattr(cfg, attr, parse_listen(value))
            except ValueError as err:
                raise UsageError(f"bad value for {name}: {err}") from None
            return i + 1
        if kind == "count":
            fewest = 1 if attr == "worker_sessions" else 0
            if not (value.isdigit() and value.isascii() and fewest <= int(value) <= _MAX_COUNT):
                raise UsageError(f"bad value for {name}: {value!r} "
                                 f"(a number from {fewest} to {_MAX_COUNT})")
            setattr(cfg, attr, int(value))
            return i + 1
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        low = 0.1 if attr == "metrics_interval_s" else 0.0  # 0 would rewrite it in a loop
        if not low <= seconds <= _MAX_DRAIN_S:
            raise UsageError(f"bad value for {name}: {value}")
        setattr(cfg, attr, seconds)
        return i + 1
    wrapper.append(args[i])
    if not eq and wrapper_takes_value(name) and i + 1 < len(args):
        i += 1
        wrapper.append(args[i])
    return i + 1


def parse_serve(args: list[str]) -> ServeConfig:
    """serve's argv (after the word ``serve``) -> ServeConfig; UsageError when bad."""
    cfg = ServeConfig()
    wrapper: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            i = _long(cfg, args, i, wrapper)
        else:
            i = _short(cfg, args, i)
    rest = args[i:]
    if len(rest) < 2:
        raise UsageError("missing host and port")
    cfg.host, cfg.port = rest[0], rest[1]
    prog = rest[2:]
    if prog[:1] == ["--"]:
        prog = prog[1:]
    if not prog:
        raise UsageError("missing prog")
    cfg.options, cfg.prog = parse([*wrapper, "--", *prog])
    if (cfg.pidfile or cfg.logfile) and not cfg.daemon:
        raise UsageError("--pidfile and --logfile go with --daemon (a supervisor keeps "
                         "the pid and the log otherwise)")
    return cfg


def help_text() -> str:
    """What ``supervise-smtp serve --help`` prints."""
    return f"""{USAGE}

A resident tcpserver: listens on host port, and for each connection forks a
worker that sets tcpserver's environment, applies the rules and runs the same
session as the per-connection wrapper (`supervise-smtp [wrapper options] --
prog`).  tcpserver's options mean what tcpserver(1) says:
  -c limit     at most limit connections at once (default 40); the rest wait
  -x rules.cdb tcprules(1) rules, read afresh for each connection; -X: allow
               when the file does not exist (else the connection is dropped)
  -B banner    written to the client first
  -u uid -g gid -U
               switch to uid/gid ($UID/$GID with -U) after binding
  -b backlog   listen backlog (default 20)
  -l name      TCPLOCALHOST=name, no DNS lookup of the local name
  -h -H        look up TCPREMOTEHOST in DNS (default) or not; -p -P paranoid
               (the name must map back to the address) or not (default)
  -r -R        TCPREMOTEINFO from ident (default, -t timeout, 26 s) or not
  -d -D        Nagle on (default) or TCP_NODELAY; -o -O keep or kill IP options
  -1           print the local port on stdout
  -v -Q -q     lines: every status line, errors only (default), none
  --drain S    on SIGTERM, wait up to S seconds for running sessions (default 0;
               they finish in any case, as under tcpserver)
  --stats-interval S
               an event=serve_stats line every S seconds (default 300; 0: none):
               connections accepted, denied, active, the parent's RSS and fds,
               the workers' total USS
  --worker-sessions N
               connections a worker serves, one after the other, before it
               exits and a fresh fork takes over (default 100; 1: a new
               worker per connection)
  --spare-workers N
               idle workers kept ready for the next connections (default 4)
  --metrics-listen ADDR:PORT
               Prometheus metrics at http://ADDR:PORT/metrics, answered by the
               parent's own loop (IPv4, [IPv6], or :PORT for every address)
  --metrics-textfile F [--metrics-interval S]
               the same metrics written to F (node_exporter's textfile
               collector, mode 0644) every S seconds (default 15) and at exit
  --daemon [--pidfile F] [--logfile F]
               detach (umask 022, directory /), write the pid to F, append the
               lines to F (0600); for hosts without a supervisor, never under
               daemontools, runit, s6 or systemd
Wrapper options: see `supervise-smtp --help`.

exit: 100 usage, 111 cannot bind or switch user, 0 after SIGTERM.
"""
