"""The option table: argv to a typed Options, usage errors (100), --help and the man page."""

from __future__ import annotations

import ipaddress
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wrapper_argv

from supervise_smtp.cli import parse
from supervise_smtp.errors import UsageError
from supervise_smtp.session.options import MAX_SECONDS, OPTIONS, InfoRequested, Options

REPO = Path(__file__).resolve().parents[2]
ATTRIBUTES = [row[2] for row in OPTIONS if row[2]]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*wrapper_argv(), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def test_options_defaults_are_those_of_a_plain_connection():
    """No option given: the settings a connection always had (session.Options' defaults)."""
    options, prog = parse(["qmail-smtpd"])
    assert prog == ["qmail-smtpd"]
    assert {name: getattr(options, name) for name in ATTRIBUTES} == {
        "stderr_mode": "tag", "format": "logfmt", "linger_s": 1.0, "events": "anomalies",
        "alert_exec": None, "alert_on": None, "alert_rate": None, "state_dir": None,
        "idle_timeout_s": 0.0, "max_session_s": 0.0, "subreaper": False,
        "bare_lf": "observe", "capture": None, "capture_when": None, "capture_remote": None,
        "capture_max_bytes": 1 << 20, "capture_body": "none",
    }


def test_options_class_declares_exactly_the_table_attributes():
    """Options' slots and typed attributes are the table's attribute column, no more, no less."""
    assert list(Options.__slots__) == ATTRIBUTES
    assert set(Options.__annotations__) == set(ATTRIBUTES)
    assert Options(linger_s=3.0).linger_s == 3.0
    with pytest.raises(TypeError, match="unknown option attributes: nope"):
        Options(nope=1)


NET = ipaddress.ip_network
PARSED = [
    (["--stderr", "pass"], "stderr_mode", "pass"),
    (["--format=json"], "format", "json"),
    (["--events", "all"], "events", "all"),
    (["--alert-exec", "/bin/alert"], "alert_exec", "/bin/alert"),
    (["--alert-exec", "a", "--alert-on", "stopped,client_lost_after_*"], "alert_on",
     None),  # the expected set is computed in the test from alert's own names
    (["--alert-exec", "a", "--state-dir", "/s", "--alert-rate", "5/1m"], "alert_rate",
     (5, 60.0)),
    (["--state-dir", "/var/run/s"], "state_dir", "/var/run/s"),
    (["--idle-timeout", "30"], "idle_timeout_s", 30.0),
    (["--max-session", "2.5"], "max_session_s", 2.5),
    (["--subreaper"], "subreaper", True),
    (["--bare-lf", "fix"], "bare_lf", "fix"),
    (["--capture", "/c"], "capture", "/c"),
    (["--capture", "/c", "--capture-when", "stopped,bare_lf"], "capture_when",
     frozenset({"stopped", "bare_lf"})),
    (["--capture", "/c", "--capture-remote", "10.1.2.3/8,2001:db8::/32"], "capture_remote",
     (NET("10.0.0.0/8"), NET("2001:db8::/32"))),
    (["--capture", "/c", "--capture-max-bytes", "4096"], "capture_max_bytes", 4096),
    (["--capture", "/c", "--capture-body", "headers"], "capture_body", "headers"),
    (["--linger", "0"], "linger_s", 0.0),
]


@pytest.mark.parametrize(("args", "attribute", "expected"), PARSED,
                         ids=[case[1] for case in PARSED])
def test_options_each_parses_to_its_typed_value(args, attribute, expected):
    """Each option comes out parsed: numbers, verdict sets, rates and networks included."""
    from supervise_smtp.session.alert import parse_verdicts

    options, prog = parse([*args, "--", "qmail-smtpd", "-x"])
    assert prog == ["qmail-smtpd", "-x"]
    if attribute == "alert_on":
        expected = parse_verdicts("stopped,client_lost_after_*")
        assert "stopped" in expected and len(expected) > 2
    value = getattr(options, attribute)
    assert value == expected and type(value) is type(expected)


def test_options_every_table_attribute_has_a_parse_case():
    """The cases above cover every row of the table that sets an attribute."""
    assert sorted(case[1] for case in PARSED) == sorted(ATTRIBUTES)


def test_options_the_last_of_a_repeated_option_wins():
    """--format json --format logfmt: logfmt; prog starts at the first word without a dash."""
    options, prog = parse(["--format", "json", "--format=logfmt", "sh", "--format", "json"])
    assert (options.format, prog) == ("logfmt", ["sh", "--format", "json"])
    assert parse(["-", "x"])[1] == ["-", "x"]


def test_options_capture_when_always_is_none():
    """--capture-when always (the default) is None: no verdict filter."""
    options, _ = parse(["--capture", "/c", "--capture-when", "always", "sh"])
    assert options.capture_when is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--subreaper=yes"], "unknown option --subreaper=yes"),
        (["-h=1"], "unknown option -h=1"),
        (["--stderr=bogus"], "bad value for --stderr: bogus (one of tag|pass)"),
        (["--events", "some"], "bad value for --events: some (one of anomalies|all|none)"),
        (["--capture-body", "x"], "bad value for --capture-body: x (one of none|headers|full)"),
        (["--linger", "-1"], "bad value for --linger: -1"),
        (["--linger", str(MAX_SECONDS + 1)], f"bad value for --linger: {MAX_SECONDS + 1}"),
        (["--max-session", "nan"], "bad value for --max-session: nan"),
        (["--idle-timeout", "soon"], "bad value for --idle-timeout: soon"),
        (["--alert-exec", "a", "--alert-on", "ok,bogus"], "bad verdict in --alert-on: 'bogus'"),
        (["--alert-exec", "a", "--state-dir", "/s", "--alert-rate", "5"],
         "bad value for --alert-rate: '5' (N/PERIOD"),
        (["--capture", "/c", "--capture-when", "always,ok"],
         "bad verdict for --capture-when: always"),
        (["--capture", "/c", "--capture-remote", "10.0.0.0/33"],
         "bad network for --capture-remote: 10.0.0.0/33"),
        (["--capture", "/c", "--capture-max-bytes", "0"], "bad value for --capture-max-bytes: 0"),
        (["--capture", "/c", "--capture-max-bytes", "\u00b2"],
         "bad value for --capture-max-bytes: \u00b2"),
        (["--capture", "/c", "--capture-max-bytes", str(1 << 40)],
         f"bad value for --capture-max-bytes: {1 << 40}"),
        (["--alert-on", "ok"], "--alert-on needs --alert-exec"),
        (["--alert-rate", "1/1h"], "--alert-rate needs --alert-exec"),
        (["--alert-exec", "a", "--alert-rate", "1/1h"], "--alert-rate needs --state-dir"),
        (["--capture-remote", "::1"], "--capture-remote needs --capture"),
        (["--capture-max-bytes", "1"], "--capture-max-bytes needs --capture"),
        (["--capture-body", "full"], "--capture-body needs --capture"),
        (["--format", "xml", "-h"], "bad value for --format: xml (one of logfmt|json)"),
    ],
)
def test_options_bad_input_is_a_usage_error(args, message):
    """Each bad option, value or missing companion raises UsageError naming it."""
    with pytest.raises(UsageError) as caught:
        parse([*args, "qmail-smtpd"])
    assert not isinstance(caught.value, InfoRequested)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("args", "message"), [
    (["--stderr"], "option --stderr needs a value"), ([], "missing prog"),
    (["--"], "missing prog"), (["--format", "json"], "missing prog")])
def test_options_value_or_prog_missing(args, message):
    """The last option's value, or prog, missing at the end of argv."""
    with pytest.raises(UsageError, match=f"^{message}$"):
        parse(args)


@pytest.mark.parametrize(("args", "what"), [
    (["-h", "--bogus"], "help"), (["--format", "json", "--help"], "help"),
    (["-V"], "version"), (["--version", "sh"], "version")])
def test_options_help_and_version_stop_the_parse(args, what):
    """-h/-V where they stand: InfoRequested, a UsageError for wrap-run's check."""
    with pytest.raises(InfoRequested) as caught:
        parse(args)
    assert caught.value.what == what
    assert isinstance(caught.value, UsageError)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--capture-when", "bare_lf", "true"], "--capture-when needs --capture"),
        (["--capture", "/tmp/x", "--capture-when", "bogus", "true"],
         "bad verdict for --capture-when: bogus"),
        (["--capture", "/tmp/x", "--capture-remote", "10.0.0.0/33", "true"],
         "bad network for --capture-remote"),
        (["--capture", "/tmp/x", "--capture-max-bytes", "-1", "true"],
         "bad value for --capture-max-bytes"),
        (["--bare-lf", "rewrite", "true"], "bad value for --bare-lf: rewrite"),
        (["--idle-timeout", "soon", "true"], "bad value for --idle-timeout: soon"),
        (["--alert-rate", "5/1m", "--alert-exec", "/bin/true", "true"],
         "--alert-rate needs --state-dir"),
    ],
)
def test_options_usage_errors(args, message):
    """Each bad option gives exit 100 and one fatal line naming the problem."""
    proc = _run(args)
    assert proc.returncode == 100
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("supervise-smtp: fatal: ")
    assert message in lines[0]


def test_options_help_lists_every_table_entry():
    """--help shows each row: its spellings and metavar, then the start of its help text."""
    proc = _run(["--help"])
    assert (proc.returncode, proc.stderr) == (0, "")
    text = " ".join(proc.stdout.split())  # undo the wrapping
    for spellings, metavar, _, _, _, needs, help_text, _ in OPTIONS:
        assert f" {spellings} {metavar}".rstrip() + " " + " ".join(help_text.split()) in text
        for needed in needs:
            assert f"needs {needed}" in text or f"and {needed}" in text


def _markdown_options() -> str:
    page = (REPO / "docs" / "supervise-smtp.8.md").read_text(encoding="utf-8")
    match = re.search(r"^# OPTIONS\n\n(.*?)\n(?=# )", page, re.M | re.S)
    assert match, "no OPTIONS section in docs/supervise-smtp.8.md"
    return match.group(1)


def test_options_man_page_source_is_rendered_from_the_table():
    """The markdown's OPTIONS section is exactly what the table renders (run render_man.py)."""
    render_man = runpy.run_path(str(REPO / "docs" / "render_man.py"))
    assert _markdown_options() == render_man["options_markdown"](), (
        "docs/supervise-smtp.8.md is stale: run `python docs/render_man.py` and commit it")


def test_options_man_page_lists_exactly_the_table_options():
    """The OPTIONS of the man page (troff) name each spelling of the table, in its order."""
    page = (REPO / "docs" / "supervise-smtp.8").read_text(encoding="utf-8")
    section = page.split("\n.SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    lines = section.splitlines()
    terms = [line for i, line in enumerate(lines) if i and lines[i - 1] == ".TP"]
    named = [re.findall(r"\\fB(.*?)\\fR", term) for term in terms]
    assert [[n.replace("\\-", "-") for n in names] for names in named] == [
        row[0].split(", ") for row in OPTIONS]


def _modules_loaded(code: str) -> set[str]:
    slow = "{'dataclasses', 'enum', 'typing', 're', 'argparse', 'ipaddress', 'textwrap'}"
    proc = subprocess.run([sys.executable, "-S", "-c", f"import sys; {code}; "
                           f"print(' '.join(sorted({slow} & set(sys.modules))))"],
                          capture_output=True, text=True, check=True, cwd=str(REPO))
    return set(proc.stdout.split())


def test_options_parse_costs_no_slow_import():
    """Start-up budget: importing cli and parsing a full argv loads no slow module;
    ipaddress only when --capture-remote is given."""
    parse_call = ("from supervise_smtp.cli import parse; parse(['--format', 'json', "
                  "'--linger', '2', '--idle-timeout', '30', '--bare-lf', 'fix', '--subreaper', "
                  "'--capture', '/c', '--capture-body', 'headers', '--', 'qmail-smtpd'])")
    assert _modules_loaded(parse_call) == set()
    remote = parse_call.replace("'--', ", "'--capture-remote', '::1', '--', ")
    assert _modules_loaded(remote) == {"ipaddress"}
