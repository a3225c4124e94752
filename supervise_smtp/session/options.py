"""The wrapper's options: one table that parses argv, renders --help and the man page.

Each option is written once, as a row of ``OPTIONS``; ``parse()`` turns argv
into a fully parsed ``Options`` (networks, verdict sets and rates included),
so a caller that runs many connections parses once and reuses the object.
``help_list()`` renders the rows for ``--help``; docs/render_man.py renders
them for the man page's OPTIONS section.

Start-up is paid by every connection: plain tuples, a dict and a
``__slots__`` class at import; a value's parser imports what it needs
(ipaddress, alert, diagnose) only when its option is given.
"""

from __future__ import annotations

from supervise_smtp.errors import UsageError

TYPE_CHECKING = False  # typing is a costly import per connection; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Callable
    from ipaddress import IPv4Network, IPv6Network

    # spellings, metavar, attribute, default, parser, needs, help text, man text
    Row = tuple[str, str, str, object, Callable[[str, str, str], object] | None,
                tuple[str, ...], str, str]

__all__ = ["OPTIONS", "Options", "InfoRequested", "parse", "help_list", "MAX_SECONDS"]

MAX_SECONDS = 86400
MAX_CAPTURE_BYTES = 1 << 40


class InfoRequested(UsageError):
    """-h or -V: print the help or the version instead of running a connection.

    A UsageError, so that a caller validating options for a run script
    (wrap-run) refuses them rather than putting them on a service's command line.
    """

    def __init__(self, flag: str) -> None:
        super().__init__(f"{flag} prints information: not an option for a connection")
        self.what = "version" if flag in ("-V", "--version") else "help"


# Value parsers: (option name, value, metavar) -> typed value; UsageError when bad.

def _choice(name: str, value: str, metavar: str) -> str:
    choices = metavar.split("|")
    if value not in choices:
        raise UsageError(f"bad value for {name}: {value} (one of {metavar})")
    return value


def _text(name: str, value: str, metavar: str) -> str:
    return value


def _seconds(name: str, value: str, metavar: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_SECONDS:  # also refuses nan
        raise UsageError(f"bad value for {name}: {value}")
    return seconds


def _byte_count(name: str, value: str, metavar: str) -> int:
    count = int(value) if value.isdecimal() else 0
    if not 0 < count < MAX_CAPTURE_BYTES:
        raise UsageError(f"bad value for {name}: {value}")
    return count


def _alert_verdicts(name: str, value: str, metavar: str) -> frozenset[str]:
    from supervise_smtp.session.alert import parse_verdicts

    return parse_verdicts(value)


def _alert_rate(name: str, value: str, metavar: str) -> tuple[int, float]:
    from supervise_smtp.session.alert import parse_rate

    return parse_rate(value)


def _capture_verdicts(name: str, value: str, metavar: str) -> frozenset[str] | None:
    if value == "always":
        return None
    from supervise_smtp.session.diagnose import VERDICTS

    verdicts = value.split(",")
    for verdict in verdicts:
        if verdict not in VERDICTS:
            raise UsageError(f"bad verdict for {name}: {verdict}")
    return frozenset(verdicts)


def _networks(name: str, value: str,
              metavar: str) -> tuple[IPv4Network | IPv6Network, ...]:
    import ipaddress

    try:
        return tuple(ipaddress.ip_network(net, strict=False) for net in value.split(","))
    except ValueError:
        raise UsageError(f"bad network for {name}: {value}") from None


# One row per option:
#   spellings ("-h, --help"); metavar ("" for an option without a value, a
#   flag: its attribute becomes True; a|b|c lists the choices of _choice;
#   UPPERCASE parts are placeholders); Options attribute ("" for -h and -V:
#   parse() raises InfoRequested); default; value parser; the options it
#   needs; --help text; man page text (markdown).  "needs --x" is added to
#   both texts from the needs column.
OPTIONS: tuple[Row, ...] = (
    ("--stderr", "tag|pass", "stderr_mode", "tag", _choice, (),
     "child's stderr lines as tagged events (default), or passed through byte for byte as "
     "whole lines",
     "The child's stderr lines become tagged `child_stderr` events (default), or are passed "
     "through byte for byte as whole lines."),
    ("--format", "logfmt|json", "format", "logfmt", _choice, (),
     "event line format (default logfmt)",
     "Event line format (default logfmt)."),
    ("--events", "anomalies|all|none", "events", "anomalies", _choice, (),
     "SMTP events logged as they happen (default anomalies: bare LF, smuggling, mid-DATA "
     "replies, pipelining violations, TLS alerts...; all adds every command and reply, "
     "never a body or a credential)",
     "SMTP observer events logged as they happen: anomalies only (default: bare LF, "
     "smuggling, replies in the middle of DATA, pipelining violations, over-long lines, "
     "readable TLS alerts, `reject` for a 4xx/5xx reply with the command and address it "
     "answered (the first 10 per connection), `not_smtp` when the client sent 20 unknown "
     "commands in a row...), all (every command, reply and TLS hello; never a body or a "
     "credential), or none.  The summary is written in every case."),
    ("--alert-exec", "PROG", "alert_exec", None, _text, (),
     "run PROG (no shell, detached) after abnormal verdicts, with SUPERVISE_SMTP_* "
     "variables holding the summary",
     "After an abnormal verdict, run *PROG* detached (no shell) with the summary in "
     "`SUPERVISE_SMTP_*` variables."),
    ("--alert-on", "VERDICTS", "alert_on", None, _alert_verdicts, ("--alert-exec",),
     "comma list (default server_crashed, queue_temp_fail, queue_perm_fail, wrapper_error, "
     "parent_died)",
     "The verdicts that call for an alert, a comma list (default server_crashed, "
     "queue_temp_fail, queue_perm_fail, wrapper_error, parent_died); "
     "`client_lost_after_*` stands for every `client_lost_after_<stage>` verdict."),
    ("--alert-rate", "N/PERIOD", "alert_rate", None, _alert_rate,
     ("--alert-exec", "--state-dir"),
     "at most N alerts per PERIOD (e.g. 10/3600s, 5/1m) across connections",
     "At most *N* alerts per *PERIOD* across connections (PERIOD in seconds, or with a "
     "unit s, m, h or d: `10/1h`)."),
    ("--state-dir", "DIR", "state_dir", None, _text, (),
     "where the alert rate state lives (0700; refused when another user could write it)",
     "Where the alert rate state lives (created 0700).  A directory another user could "
     "write (group- or world-writable without the sticky bit, or owned by someone else "
     "than this user or root) is refused: the alert is then `event=alert action=error`."),
    ("--idle-timeout", "S", "idle_timeout_s", 0.0, _seconds, (),
     "no byte either way for S seconds: 421 and close (off by default: qmail-smtpd's own "
     "timeout rules)",
     "Off by default.  When no byte moved either way for *S* seconds: "
     "`421 4.4.2 <host> timeout` to the client, both sides closed, the child stopped "
     "(TERM, then KILL); verdict `timeout`.  Never between the end of a message and the "
     "child's reply to it (the message may be queued): a timer due there fires once that "
     "reply is written to the client.  Inside TLS or after an observer error, held while "
     "the child has not answered the client's last bytes."),
    ("--max-session", "S", "max_session_s", 0.0, _seconds, (),
     "whole connection longer than S seconds: same",
     "Off by default.  The same as **--idle-timeout** when the whole connection lasted "
     "*S* seconds, held back in the same places."),
    ("--bare-lf", "observe|fix", "bare_lf", "observe", _choice, (),
     "observe (default): byte-exact; fix: inside DATA only, bare LF becomes CRLF (as "
     "fixcrio) and each fixed message is logged as bare_lf_fixed with its sender",
     "observe (default): every byte relayed unchanged.  fix: inside a DATA body only "
     "(never in commands, never after STARTTLS), a bare LF becomes CRLF as fixcrio does, "
     "so qmail-smtpd accepts the message; each fixed message is logged as "
     "`event=bare_lf_fixed sender=... count=... first_line=...` and the summary carries "
     "`notes=bare_lf_fixed`.  A lone dot next to a bare LF (`\\n.\\n`, `\\r\\n.\\n`, "
     "`\\n.\\r\\n`) never ends the message: it is kept as a \".\" text line, and only the "
     "client's own `\\r\\n.\\r\\n` ends DATA."),
    ("--capture", "DIR", "capture", None, _text, (),
     "keep a redacted, TLS-safe transcript per connection in DIR (0600 files): commands and "
     "replies escaped, AUTH and bodies replaced by summaries, TLS as records",
     "Keep a transcript per connection in *DIR* (created 0700; files 0600, written to a "
     "temporary name and renamed, named `<time>-<remote>-<pid>.txt`): recordio-style "
     "`PID < text` / `PID > text` lines with timestamps, commands and replies escaped, AUTH "
     "replaced by `[auth redacted]`, the DATA body by its size and anomaly counts, TLS by "
     "record summaries.  A capture failure (missing directory, full disk, or a directory "
     "another user could write: group- or world-writable without the sticky bit, or owned "
     "by someone else than this user or root) is one `capture_error` line and never "
     "touches the SMTP session.  No part of a file name comes from what the client says."),
    ("--capture-when", "always|VERDICTS", "capture_when", None, _capture_verdicts,
     ("--capture",),
     "always (default), or only for these verdicts (comma list: bare_lf,server_crashed)",
     "Keep a transcript always (default), or only for these verdicts (comma list)."),
    ("--capture-remote", "CIDR,...", "capture_remote", None, _networks, ("--capture",),
     "only for these peers (CIDR list)",
     "Capture only connections from these peers."),
    ("--capture-max-bytes", "N", "capture_max_bytes", 1 << 20, _byte_count, ("--capture",),
     "bound per transcript (default 1 MiB)",
     "Bound a transcript to *N* bytes (default 1 MiB)."),
    ("--capture-body", "none|headers|full", "capture_body", "none", _choice, ("--capture",),
     "keep the message: none (default: size and anomaly summary only), its headers, or "
     "all of it",
     "Keep none of the message (default: its size and anomaly counts only), its headers "
     "(up to the first empty line), or all of it, as `PID <` lines."),
    ("--subreaper", "", "subreaper", False, None, (),
     "become a child subreaper: reap the queue program when qmail-smtpd dies first and "
     "report its exit (hides the parent death from qmail-scanner's getppid() check; "
     "supervise-smtp reports it instead)",
     "Become a child subreaper: when qmail-smtpd dies before its queue program, adopt and "
     "reap the queue program, log `event=queue_parent_died` with its exit status, and put "
     "`queue_exit` on the summary.  Off by default, because it hides the parent's death "
     "from qmail-scanner's `getppid() == 1` check."),
    ("--linger", "SECONDS", "linger_s", 1.0, _seconds, (),
     "after the child exits, wait this long for descendants that still hold its stderr "
     "(default 1)",
     f"After the child exits, wait this long (0 to {MAX_SECONDS}, default 1) for "
     "descendants that still hold its stderr."),
    ("-h, --help", "", "", None, None, (),
     "this help",
     "Print the help and exit 0."),
    ("-V, --version", "", "", None, None, (),
     "print the version",
     "Print the version and exit 0."),
)

# Every spelling -> its row; the parser's only lookup.
_BY_NAME = {name: row for row in OPTIONS for name in row[0].split(", ")}


class Options:
    """One connection's settings, fully parsed: what ``parse()`` returns.

    Attributes (defaults in ``OPTIONS``): ``stderr_mode`` tag|pass, ``format``
    logfmt|json, ``linger_s``, ``events`` anomalies|all|none, ``alert_exec``,
    ``alert_on`` (the verdict set of ``alert.parse_verdicts``; None: its
    default list), ``alert_rate`` (``alert.parse_rate``'s ``(count,
    seconds)``; None: no limit), ``state_dir``, ``idle_timeout_s`` and
    ``max_session_s`` (0: off), ``subreaper``, ``bare_lf`` observe|fix,
    ``capture`` (directory or None), ``capture_when`` (verdict set; None:
    always), ``capture_remote`` (ipaddress networks; None: every peer),
    ``capture_max_bytes``, ``capture_body`` none|headers|full.
    """

    __slots__ = tuple(row[2] for row in OPTIONS if row[2])

    stderr_mode: str
    format: str
    linger_s: float
    events: str
    alert_exec: str | None
    alert_on: frozenset[str] | None
    alert_rate: tuple[int, float] | None
    state_dir: str | None
    idle_timeout_s: float
    max_session_s: float
    subreaper: bool
    bare_lf: str
    capture: str | None
    capture_when: frozenset[str] | None
    capture_remote: tuple[IPv4Network | IPv6Network, ...] | None
    capture_max_bytes: int
    capture_body: str

    def __init__(self, **values: object) -> None:
        """The defaults, with ``values`` (attribute=typed value) in their place."""
        for row in OPTIONS:
            if row[2]:
                setattr(self, row[2], values.pop(row[2], row[3]))
        if values:
            raise TypeError(f"unknown option attributes: {', '.join(sorted(values))}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Options({fields})"


def parse(args: list[str], problems: list[str] | None = None) -> tuple[Options, list[str]]:
    """argv -> (Options, prog argv).

    Options come first, ``--name value`` or ``--name=value``; the last of a
    repeated option wins.  They end at ``--``, at ``-`` or at the first word
    not starting with ``-`` (prog).  Raises UsageError for an unknown option,
    a bad value, a missing companion (``needs``) or a missing prog, and
    InfoRequested for -h/--help or -V/--version (checked where they stand:
    an error before them wins).  With ``problems`` (check-service, which
    reports them all), each usage error is appended there and the parse
    goes on past it instead.
    """
    options = Options()
    given: set[str] = set()

    def refuse(message: str) -> None:
        if problems is None:
            raise UsageError(message)
        problems.append(message)

    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        row = _BY_NAME.get(arg)
        if row is not None and not row[1]:  # a flag, or -h/-V
            if not row[2]:
                raise InfoRequested(arg)
            value: object = True
        else:
            name, eq, text = arg.partition("=")
            row = _BY_NAME.get(name)
            if row is None or row[4] is None:
                refuse(f"unknown option {arg}")
                continue
            if not eq:
                if i >= len(args):
                    refuse(f"option {name} needs a value")
                    continue
                text = args[i]
                i += 1
            try:
                value = row[4](name, text, row[1])
            except UsageError as err:
                refuse(str(err))
                continue
        setattr(options, row[2], value)
        given.add(row[0])
    prog = args[i:]
    if not prog:
        refuse("missing prog")
    for row in OPTIONS:  # the companions an option needs, in table order
        if row[0] in given:
            for needed in row[5]:
                if needed not in given:
                    refuse(f"{row[0]} needs {needed}")
    return options, prog


def help_list(width: int = 79, column: int = 25) -> str:
    """The option list of ``--help``: spellings and metavar, then the wrapped help text."""
    import textwrap

    lines = []
    for spellings, metavar, _, _, _, needs, text, _ in OPTIONS:
        if needs:
            text += "; needs " + " and ".join(needs)
        head = f"  {spellings} {metavar}".rstrip()
        body = textwrap.wrap(text, width - column, break_long_words=False,
                             break_on_hyphens=False)
        if len(head) < column - 1:
            lines.append(head.ljust(column) + body.pop(0))
        else:
            lines.append(head)
        lines += [" " * column + line for line in body]
    return "\n".join(lines) + "\n"
