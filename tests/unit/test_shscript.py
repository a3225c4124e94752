"""shscript: the run-script lexer and static $VAR resolution shared by wrap-run and
check-service."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervise_smtp.argv import getopt
from supervise_smtp.runscript.sh import (
    ShellSyntaxError,
    Word,
    assignments,
    program_name,
    resolve,
    shell_commands,
    unquote,
)


def _words(text: str) -> list[list[str]]:
    return [[w.text for w in c.words] for c in shell_commands(text)]


def test_words_offsets_lines_and_redirections():
    """Each word is script[start:end] with its line; redirections are flagged, not args."""
    text = "exec 2>&1\nexec tcpserver \\\n  -v 0 smtp qmail-smtpd >/dev/null\n"
    commands = shell_commands(text)
    assert [[w.text for w in c.args] for c in commands] == [
        ["exec"], ["exec", "tcpserver", "-v", "0", "smtp", "qmail-smtpd"]]
    for w in commands[1].words:
        assert text[w.start:w.end] == w.text
    assert [w.line for w in commands[1].words] == [2, 2, 3, 3, 3, 3, 3]
    assert [w.text for w in commands[1].words if w.redirect] == [">/dev/null"]


def test_operators_reserved_words_and_heredocs():
    """; && || | ( ) end commands, if/then/fi are dropped, <<- bodies are skipped."""
    text = ("if test -x x; then a && b || c | d; fi\n"
            "cat <<-'END'\n\texec tcpserver 0 25 qmail-smtpd\n\tEND\n(e)\n")
    assert _words(text) == [["test", "-x", "x"], ["a"], ["b"], ["c"], ["d"],
                            ["cat", "<<-'END'"], ["e"]]


@pytest.mark.parametrize("text, what, line", [
    ("a\nb 'c\n", "unterminated ' quote", 2),
    ('a "b\n\n', 'unterminated " quote', 1),
    ("a `b\n", "unterminated ` quote", 1),
    ("\n\na $(b 'c)' \n", "unterminated $(", 3),
    ("a ${b\n", "unterminated ${", 1),
])
def test_syntax_errors_name_the_line(text, what, line):
    """An unterminated quote or expansion raises ShellSyntaxError with its line."""
    with pytest.raises(ShellSyntaxError, match=f"^{re.escape(what)} at line") as err:
        shell_commands(text)
    assert err.value.line == line
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("text, literal, kept", [
    ("'a b'", "a b", "a b"),
    ('"a\\"b\\x"', 'a"b\\x', 'a"b\\x'),
    ("a\\ b", "a b", "a b"),
    ('"$(echo "x y")"z', None, '$(echo "x y")z'),
    ("`a 'b'`", None, "`a 'b'`"),
    ('"a"\'b\'c', "abc", "abc"),
])
def test_unquote(text, literal, kept):
    """Quote removal; an expansion makes a word non-literal, or is kept as written."""
    assert unquote(text) == literal
    assert unquote(text, keep_expansions=True) == kept


def test_heredoc_delimiter_with_quotes_inside_an_expansion():
    """A here-document delimiter holding an expansion with quotes is read, not a crash."""
    assert _words('cat <<`a "b`\nbody\n`a "b`\nnext\n') == [["cat", '<<`a "b`'], ["next"]]


def test_assignments_and_resolve():
    """Literal assignments are known, conflicting or computed ones are not; ${X:-d}."""
    commands = shell_commands('A=1\nexport B="x y"\nC=1; C=2\nD=$(pwd)\nE=5 prog\n'
                              'run $A "$B" ${C:-c} ${F:-"f g"} $D\n')
    env = assignments(commands)
    assert env == {"A": "1", "B": "x y"}
    args = commands[-1].args
    assert [resolve(w, env) for w in args] == ["run", "1", "x y", "c", "f g", None]


def test_program_name():
    """Basename of a literal or known $VAR; well-known variable names when unassigned."""
    env = {"T": "/usr/bin/tcpserver"}

    def word(text: str) -> Word:
        return Word(text, 0, len(text), 1)

    assert program_name(word("/var/qmail/bin/qmail-smtpd"), env) == "qmail-smtpd"
    assert program_name(word('"$T"'), env) == "tcpserver"
    assert program_name(word("$SMTPD"), env) == "qmail-smtpd"
    assert program_name(word("$UNKNOWN"), env) == ""


@pytest.mark.parametrize("values, first, letters", [
    (["-vR", "-c", "40", "0", "25"], 3, ["v", "R", "c"]),
    (["-c40", "-x", "f.cdb", "0"], 3, ["c", "x"]),
    (["-v", "--", "-0", "25"], 2, ["v"]),
    (["-v", None, "25"], 1, ["v"]),
])
def test_getopt(values, first, letters):
    """djb sgetopt: clusters, attached and separate arguments, --, an unknown word."""
    assert getopt(values, 0, "vRc:x:") == (first, letters)


_PIECES = ["'", '"', "`", "$(", "${", "}", ")", "(", "\\", "\n", " ", "\t", "a", "X=",
           ":-", "#", "<<", "<<-", "EOF", ";", "&&", "|", "2>&1", ">", "-v", "$X", "if",
           "export", "tcpserver", "qmail-smtpd", "exec"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=20).map("".join))
def test_any_text_is_words_or_a_syntax_error(text):
    """Whatever the text, the lexer and the resolution raise nothing but ShellSyntaxError."""
    try:
        commands = shell_commands(text)
    except ShellSyntaxError:
        return
    env = assignments(commands)
    for cmd in commands:
        for w in cmd.words:
            assert text[w.start:w.end] == w.text
            resolve(w, env)
            program_name(w, env)
            unquote(w.text, keep_expansions=True)


def test_shscript_one_list_of_shells_for_both_tools():
    """check-service and wrap-run name the same shells: a run script written for any of
    them is read, and a tcpserver line that starts any of them is not edited."""
    from supervise_smtp.runscript import check_log, check_run, wrap
    from supervise_smtp.runscript.sh import SHELLS

    assert check_run.SHELLS is check_log.SHELLS is SHELLS
    for shell in SHELLS:
        with pytest.raises(wrap.WrapRefused, match=rf"tcpserver runs a shell \({shell}\)"):
            wrap.wrap(f"exec tcpserver 0 25 {shell} -c 'qmail-smtpd'\n")
