"""Reading a sh run script without running it: words, $VARs, program names.

:func:`shell_commands` cuts a POSIX sh script into simple commands and words
with their offsets (just enough of sh for run scripts: quotes, expansions,
continuations, comments, here-documents, operators, redirections);
:func:`assignments` and :func:`resolve` give ``$VAR`` words the values the
script itself assigns literally; :func:`program_name` says which program a
word names (a program's options are read by argv.getopt, djb's sgetopt).
Nothing is executed.  A script the lexer cannot cut raises
:class:`ShellSyntaxError`.  Shared by ``wrap-run`` and ``check-service``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

__all__ = [
    "ShellSyntaxError",
    "Word",
    "Command",
    "shell_commands",
    "unquote",
    "assignment",
    "assignments",
    "SHELLS",
    "resolve",
    "var_name",
    "program_name",
    "first_program",
]


_RESERVED = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until",
             "for", "case", "esac", "in", "!", "{", "}", "time"}
_REDIRECT = re.compile(r"<<-?|<&|>&|>>|<>|>\||<|>")
_VAR_WORD = re.compile(r'^"?\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}'
                       r'|([A-Za-z_][A-Za-z0-9_]*))"?$')
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
# The shells a run script may be written for, or that a command line may start
# (which wrap-run will not edit): the one list, for check-service and wrap-run.
SHELLS = ("sh", "bash", "dash", "ksh", "mksh", "posh", "zsh", "busybox")

# Variable names taken to mean these programs when the script does not assign
# them (they come from envdir / a sourced conf file).
_VAR_PROGRAMS = {
    "SMTPD": "qmail-smtpd", "QMAIL_SMTPD": "qmail-smtpd", "QMAILSMTPD": "qmail-smtpd",
    "TCPSERVER": "tcpserver", "SUPERVISE_SMTP": "supervise-smtp",
    "RBLSMTPD": "rblsmtpd",
}


class ShellSyntaxError(ValueError):
    """The script cannot be cut into words (an unterminated quote or ``$(``)."""

    def __init__(self, what: str, line: int) -> None:
        super().__init__(f"{what} at line {line}")
        self.line = line


@dataclass(frozen=True)
class Word:
    """One shell word as written: ``text`` is ``script[start:end]``."""

    text: str
    start: int
    end: int
    line: int
    redirect: bool = False

    @property
    def literal(self) -> str | None:
        """The word after quote removal, or None if it holds an expansion."""
        return unquote(self.text)


@dataclass
class Command:
    """A simple command: its words (redirections flagged) in script order."""

    words: list[Word] = field(default_factory=list)

    @property
    def args(self) -> list[Word]:
        """The words that are not redirections."""
        return [w for w in self.words if not w.redirect]

    @property
    def line(self) -> int:
        return self.words[0].line if self.words else 0


# --------------------------------------------------------------------------
# The lexer: just enough of POSIX sh to find words and their offsets.

def shell_commands(text: str) -> list[Command]:
    """Simple commands of a sh script, with each word's offsets.

    Handles quotes, ``$(...)``, backquotes, ``${...}``, backslash-newline
    continuations, comments, here-documents, operators (``; & | && || ( )``)
    and redirections (``2>&1``, ``>file``: flagged, not arguments).  Reserved
    words that open or close a compound command are dropped, so the body of
    an ``if`` is seen as ordinary commands.  Raises ShellSyntaxError.
    """
    commands: list[Command] = []
    words: list[Word] = []
    heredocs: list[tuple[str, bool]] = []  # (delimiter, <<- strips tabs)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and text.startswith("\\\n", i):
            i += 2
        elif c in " \t":
            i += 1
        elif c == "\n":
            words = _finish(words, commands)
            i = _skip_heredocs(text, i + 1, heredocs)
            heredocs = []
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in ";&|()":
            words = _finish(words, commands)
            i += 2 if text[i:i + 2] in (";;", "&&", "||") else 1
        else:
            end, redirect = _word_or_redirection(text, i, heredocs)
            if end == i:  # a lone character we do not model
                i += 1
                continue
            words.append(Word(text[i:end], i, end, _line_of(text, i), redirect))
            i = end
    _finish(words, commands)
    return commands


def _finish(words: list[Word], commands: list[Command]) -> list[Word]:
    """End the current command (reserved words dropped); a fresh word list."""
    k = 0
    while k < len(words) and not words[k].redirect and words[k].text in _RESERVED:
        k += 1
    if words[k:]:
        commands.append(Command(words[k:]))
    return []


def _skip_heredocs(text: str, i: int, heredocs: list[tuple[str, bool]]) -> int:
    """Index after the bodies of the here-documents opened on the line before ``i``."""
    n = len(text)
    for delim, strip in heredocs:
        while i < n:
            end = text.find("\n", i)
            end = n if end < 0 else end
            line = text[i:end]
            i = end + 1
            if (line.lstrip("\t") if strip else line) == delim:
                break
    return i


def _word_or_redirection(text: str, i: int,
                         heredocs: list[tuple[str, bool]]) -> tuple[int, bool]:
    """(end, is a redirection) of the word at ``i``; a ``<<`` adds its here-document.

    A redirection is optional fd digits, an operator and its target word.
    """
    j = i
    while j < len(text) and text[j].isdigit():
        j += 1
    op = _REDIRECT.match(text, j)
    if op is None:
        return _word_end(text, i), False
    j = op.end()
    while j < len(text) and text[j] in " \t":
        j += 1
    end = _word_end(text, j)
    if op.group(0).startswith("<<"):
        heredocs.append((unquote(text[j:end], keep_expansions=True) or "",
                         op.group(0) == "<<-"))
    return end, True


def _word_end(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\n;&|()<>":
            return i
        if c == "\\":
            if text.startswith("\\\n", i):
                return i
            i += 2
            continue
        if c in "'\"`" or text.startswith("$(", i) or text.startswith("${", i):
            i = _skip_quoted(text, i)
            continue
        i += 1
    return i


def _skip_quoted(text: str, i: int) -> int:
    """Index after the quoted/expanded construct starting at ``text[i]``."""
    c = text[i]
    if c == "'":
        j = text.find("'", i + 1)
        if j < 0:
            raise ShellSyntaxError("unterminated ' quote", _line_of(text, i))
        return j + 1
    if c in "\"`":
        return _skip_double_or_back_quote(text, i)
    if text.startswith("$(", i) or text.startswith("${", i):
        return _skip_expansion(text, i)
    return i + 1


def _skip_double_or_back_quote(text: str, i: int) -> int:
    c = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == c:
            return j + 1
        if c == '"' and (text.startswith("$(", j) or text[j] == "`"):
            j = _skip_quoted(text, j)
            continue
        j += 1
    raise ShellSyntaxError(f"unterminated {c} quote", _line_of(text, i))


def _skip_expansion(text: str, i: int) -> int:
    """Index after ``$(...)`` or ``${...}`` (nested and quoted parts skipped)."""
    opener = text[i + 1]
    close = ")" if opener == "(" else "}"
    depth = 1
    j = i + 2
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch in "'\"`":
            j = _skip_quoted(text, j)
            continue
        if ch == opener:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise ShellSyntaxError(f"unterminated ${opener}", _line_of(text, i))


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def unquote(text: str, keep_expansions: bool = False) -> str | None:
    """Quote removal; None when the word holds an expansion ($, `).

    With ``keep_expansions``, expansions are kept as written.  ``text`` is a
    word :func:`shell_commands` cut; anything else may raise ShellSyntaxError.
    """
    return _unquote(text, 0, len(text), keep_expansions, False)


_DOUBLE_QUOTED_ESCAPES = ("$", "`", '"', "\\", "\n")


def _unquote(text: str, i: int, end: int, keep_expansions: bool,
             in_double: bool) -> str | None:
    """:func:`unquote` of ``text[i:end]``, or of the inside of double quotes."""
    out = []
    while i < end:
        c = text[i]
        j = i + 1
        if c == "\\":
            if not in_double or text[j:j + 1] in _DOUBLE_QUOTED_ESCAPES:
                c, j = text[j:j + 1], j + 1
        elif c in "$`":
            if not keep_expansions:
                return None
            # inside double quotes the lexer skips only $(...) and `...`
            if not in_double or c == "`" or text.startswith("$(", i):
                j = _skip_quoted(text, i)
            c = text[i:j]
        elif c in "'\"" and not in_double:
            j = _skip_quoted(text, i)  # the lexer's own walk: raises if unterminated
            inner = text[i + 1:j - 1] if c == "'" else \
                _unquote(text, i + 1, j - 1, keep_expansions, True)
            if inner is None:
                return None
            c = inner
        out.append(c)
        i = j
    return "".join(out)


# --------------------------------------------------------------------------
# Resolution of $VARs and program names (static: never runs anything).

def assignments(commands: list[Command]) -> dict[str, str]:
    """Literal ``NAME=value`` assignments made by the script (a name assigned
    two different values, or a non-literal value, is left out)."""
    seen: dict[str, str | None] = {}
    for cmd in commands:
        words = cmd.args
        if words and words[0].text in ("export", "readonly"):
            words = words[1:]
        elif not all(_ASSIGN.match(w.text) for w in words):
            continue  # NAME=value prefixing a command: not a shell variable
        for w in words:
            m = _ASSIGN.match(w.text)
            if not m:
                continue
            value = unquote(m.group(2))
            name = m.group(1)
            if name in seen and seen[name] != value:
                seen[name] = None
            else:
                seen[name] = value
    return {k: v for k, v in seen.items() if v is not None}


def resolve(word: Word, env: dict[str, str]) -> str | None:
    """The word's value if it is a literal or a single $VAR we know."""
    lit = word.literal
    if lit is not None:
        return lit
    m = _VAR_WORD.match(word.text)
    if m:
        name = m.group(1) or m.group(3)
        if name in env:
            return env[name]
        if m.group(2) is not None:
            try:
                return unquote(m.group(2))
            except ShellSyntaxError:  # a quote the pattern cut in half: unknown
                return None
    return None


def var_name(word: Word) -> str | None:
    """NAME when the word is just ``$NAME`` or ``${NAME...}`` (quoted or not)."""
    m = _VAR_WORD.match(word.text)
    return (m.group(1) or m.group(3)) if m else None


def assignment(text: str) -> tuple[str, str] | None:
    """(NAME, value) of a ``NAME=value`` word, or None: the one reading of an assignment."""
    m = _ASSIGN.match(text)
    return (m.group(1), m.group(2)) if m else None


def program_name(word: Word, env: dict[str, str]) -> str:
    """Basename of the program a word names ('' when unknown)."""
    value = resolve(word, env)
    if value is not None:
        return os.path.basename(value)
    return _VAR_PROGRAMS.get(var_name(word) or "", "")


def first_program(words: list[Word]) -> str:
    """The command's program word as written, after exec and NAME=value prefixes."""
    for w in words:
        if w.text == "exec" or _ASSIGN.match(w.text):
            continue
        return w.text
    return ""
