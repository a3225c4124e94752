"""``wrap-run --serve``: the ``tcpserver ... supervise-smtp [OPTS] -- prog`` line turned
into ``supervise-smtp serve [tcpserver options] [OPTS] host port -- prog``; pure.

Over wrap.py's reading of the script (:func:`wrap.locate`, its operands) and,
for a line without supervise-smtp yet, :func:`wrap.wrap` first.
"""

from __future__ import annotations

from supervise_smtp.errors import UsageError
from supervise_smtp.runscript.sh import (
    Command,
    Word,
    assignments,
    program_name,
    resolve,
    shell_commands,
    var_name,
)
from supervise_smtp.runscript.wrap import (
    Location,
    Operands,
    Result,
    WrapRefused,
    locate,
    operands,
    single_line,
    wrap,
)

__all__ = ["to_serve"]



def to_serve(text: str, wrapper: str = "supervise-smtp",
             options: tuple[str, ...] = ()) -> Result:
    """Turn the ``tcpserver ... qmail-smtpd`` command into ``supervise-smtp serve``; pure.

    A line without supervise-smtp is wrapped first (:func:`wrap`: a memory
    softlimit before tcpserver moves after the wrapper part), then tcpserver's
    word becomes ``WRAPPER serve``, the wrapper's options move before the
    host, and the wrapper word and its ``--`` leave the program, which keeps
    a ``--`` in front of it.  Whether serve can carry tcpserver's options is
    decided by serve's own parser (:func:`serve.config.parse_serve`).  Raises
    WrapRefused or ShellSyntaxError.
    """
    commands = shell_commands(text)
    env = assignments(commands)
    existing = _serve_command(commands, env)
    if existing is not None:
        notes = []
        try:
            both = locate(text)
        except WrapRefused:
            pass
        else:
            notes.append(f"line {both.command.line}: a tcpserver line is there too (line "
                         f"{existing.line} runs serve): the shipped service dirs choose "
                         "between them with SERVE=1 in ./conf or ./env")
        return Result(text, False, True, notes, existing.line)
    wrapped = wrap(text, wrapper, options)
    notes = list(wrapped.warnings)
    text = wrapped.text
    loc = locate(text)
    words = loc.command.args
    line = loc.command.line
    if wrapped.already and options:
        notes.append(f"line {line}: the options after -- are not used: the line already "
                     "runs supervise-smtp, whose own options serve takes over")
    ops = operands(loc.command, loc.tcpserver, loc.env)
    _check_serve_options(ops, [], line)  # tcpserver's own options first
    # the word wrap() just inserted, or the supervise-smtp already there
    w = loc.prog if not wrapped.already else next(
        k for k in range(loc.prog, len(words))
        if loc.name(k) == "supervise-smtp" or words[k].text == "supervise_smtp")
    if w != loc.prog or words[w].text == "supervise_smtp":
        before = loc.name(loc.prog) or words[loc.prog].text
        raise WrapRefused(f"line {line}: {before} runs before supervise-smtp in tcpserver's "
                          "program: serve would run it after the session starts; convert "
                          "it by hand")
    end, chain, wrapper_opts = _wrapper_options(loc, w)
    _check_serve_options(ops, wrapper_opts, line)
    edits = [(words[loc.tcpserver].start, words[loc.tcpserver].end, f"{words[w].text} serve"),
             (words[w].start, words[chain].start, "-- ")]
    if end > w + 1:
        moved = single_line(text[words[w + 1].start:words[end - 1].end]) + " "
        at = ops.host
        if ops.dashdash is not None:
            if words[ops.dashdash].literal != "--":
                raise WrapRefused(f"line {line}: tcpserver's -- comes from "
                                  f"{words[ops.dashdash].text}: convert it by hand")
            at = ops.dashdash
        edits.append((words[at].start, words[at].start, moved))
    out = text
    for start, stop, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[stop:]
    return Result(out, True, False, notes, words[loc.tcpserver].line)


def _serve_command(commands: list[Command], env: dict[str, str]) -> Command | None:
    """The command running ``supervise-smtp serve ... qmail-smtpd``, if any."""
    for cmd in commands:
        words = cmd.args
        names = [program_name(w, env) for w in words]
        if "qmail-smtpd" not in names:
            continue
        for k in range(len(words) - 1):
            if (names[k] == "supervise-smtp" or words[k].text == "supervise_smtp") and \
                    resolve(words[k + 1], env) == "serve":
                return cmd
    return None


def _split(words: list[Word], env: dict[str, str]) -> list[tuple[str | None, int]]:
    """(value, index of its word): a $VAR we know, unquoted, split as the shell would."""
    out: list[tuple[str | None, int]] = []
    for k, w in enumerate(words):
        v = resolve(w, env)
        if v is not None and w.literal is None and not w.text.startswith('"'):
            out.extend((part, k) for part in v.split())
        else:
            out.append((v, k))
    return out


def _wrapper_options(loc: Location, w: int) -> tuple[int, int, list[str | None]]:
    """After the supervise-smtp word ``w``: (end of its options, first word of its
    program, the options' values).

    An unquoted $VAR we cannot resolve counts as options (``$SUPERVISE_SMTP_OPTS``)
    unless it names a program we know (``$SMTPD``).
    """
    from supervise_smtp.session.options import OPTIONS

    takes_value = {name for row in OPTIONS if row[1] for name in row[0].split(", ")}
    words = loc.command.args
    values = _split(words, loc.env)
    i = next(n for n, (_, k) in enumerate(values) if k > w)
    while i < len(values) and values[i][1] <= loc.smtpd:
        v, k = values[i]
        if v == "--" or (v is None and loc.name(k)) or \
                (v is not None and (not v.startswith("-") or v == "-")):
            if any(k2 == k for _, k2 in values[:i] if k2 > w):
                break  # the options end in the middle of a word
            opts = [v2 for v2, k2 in values[:i] if k2 > w]
            return k, k + 1 if v == "--" else k, opts
        if v is None and not (var_name(words[k]) and not words[k].text.startswith('"')):
            raise WrapRefused(f"line {words[k].line}: cannot tell whether {words[k].text} "
                              "is a supervise-smtp option or its program: convert it by hand")
        i += 2 if v is not None and "=" not in v and v in takes_value else 1
    raise WrapRefused(f"line {loc.command.line}: cannot find where supervise-smtp's options "
                      "end: convert it by hand")


def _check_serve_options(ops: Operands, wrapper_opts: list[str | None], line: int) -> None:
    """Refuse what serve's own parser refuses in tcpserver's options (and the wrapper's).

    Option values we cannot resolve ($VARs set at run time) stand in as "1",
    which every tcpserver option taking a value accepts.
    """
    from supervise_smtp.serve.config import parse_serve

    options = ["1" if v is None else v for v in ops.options]
    if options[-1:] == ["--"]:
        options.pop()
    if any(v is None for v in wrapper_opts):
        wrapper_opts = []  # set at run time: the wrapper takes them today, serve alike
    try:
        parse_serve([*options, *(v for v in wrapper_opts if v is not None),
                     "0", "25", "--", "qmail-smtpd"])
    except UsageError as err:
        raise WrapRefused(f"line {line}: serve cannot take tcpserver's place here: "
                          f"{err}") from None


