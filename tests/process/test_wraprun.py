"""wrap-run: the pure core on a corpus of real-world-shaped run scripts, and the I/O shell.

Each ``tests/fixtures/runscripts/<name>/`` holds ``run`` (the script as found
in the wild: Life with qmail, notqmail/netqmail docs, runit, qmailtoaster...),
and either ``expected`` (the script after wrap-run with the wrapper
``/usr/local/bin/supervise-smtp``) plus ``warnings`` (one note per line), or
``refusal`` (a part of the message that must explain why it refused).  For
``wrap-run --serve``, ``expected-serve`` and ``warnings-serve`` (the script
turned into ``supervise-smtp serve``), or ``refusal-serve``.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from supervise_smtp.errors import UsageError
from supervise_smtp.runscript import wrap as wraprun
from supervise_smtp.runscript.sh import ShellSyntaxError, shell_commands
from supervise_smtp.runscript.wrap import WrapRefused, wrap
from supervise_smtp.runscript.wrap_serve import to_serve

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "fixtures" / "runscripts"
WRAPPER = "/usr/local/bin/supervise-smtp"
GOOD = sorted(p.name for p in CORPUS.iterdir() if (p / "expected").exists())
REFUSED = sorted(p.name for p in CORPUS.iterdir() if (p / "refusal").exists())
SERVE_GOOD = sorted(p.name for p in CORPUS.iterdir() if (p / "expected-serve").exists())
SERVE_REFUSED = sorted(p.name for p in CORPUS.iterdir() if (p / "refusal-serve").exists())


def test_wraprun_corpus_is_big_enough():
    """The corpus has at least 8 scripts to wrap and some to refuse."""
    assert len(GOOD) >= 8 and len(REFUSED) >= 5


@pytest.mark.parametrize("name", GOOD)
def test_wraprun_corpus_expected_output(name):
    """Each corpus script is wrapped exactly as in its ``expected`` file, with its notes."""
    result = wrap((CORPUS / name / "run").read_text(), WRAPPER)
    assert result.changed and not result.already
    assert result.text == (CORPUS / name / "expected").read_text()
    assert result.warnings == (CORPUS / name / "warnings").read_text().splitlines()


@pytest.mark.parametrize("name", GOOD)
def test_wraprun_corpus_idempotent(name):
    """Wrapping a wrapped script changes nothing and says it is already wrapped."""
    wrapped = (CORPUS / name / "expected").read_text()
    result = wrap(wrapped, WRAPPER)
    assert result.already and not result.changed and result.text == wrapped


@pytest.mark.parametrize("name", GOOD)
def test_wraprun_corpus_result_passes_sh_n(name):
    """The wrapped script still parses with ``sh -n``."""
    run = subprocess.run(["sh", "-n", str(CORPUS / name / "expected")], capture_output=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("name", REFUSED)
def test_wraprun_corpus_refusals(name):
    """Scripts with no single safe insertion point are refused with a reason."""
    with pytest.raises(WrapRefused) as err:
        wrap((CORPUS / name / "run").read_text(), WRAPPER)
    assert (CORPUS / name / "refusal").read_text().strip() in str(err.value)


@pytest.mark.parametrize("suite", ["daemontools", "runit", "s6"])
def test_wraprun_shipped_service_dirs_already_wrapped(suite):
    """The shipped run scripts are recognised as wrapped ($SUPERVISE_SMTP, $SMTPD)."""
    result = wrap((REPO / suite / "qmail-smtpd" / "run").read_text(), WRAPPER)
    assert result.already and result.warnings == []


def test_wraprun_inserts_quoted_options():
    """Options after ``--`` are inserted shell-quoted, before the wrapper's own ``--``."""
    text = "#!/bin/sh\nexec tcpserver -v 0 smtp /var/qmail/bin/qmail-smtpd 2>&1\n"
    result = wrap(text, "/opt/x y/supervise-smtp", ("--format", "json", "--linger", "0.5"))
    assert result.text == ("#!/bin/sh\nexec tcpserver -v 0 smtp '/opt/x y/supervise-smtp' "
                           "--format json --linger 0.5 -- /var/qmail/bin/qmail-smtpd 2>&1\n")


@pytest.mark.parametrize("line, before", [
    ("tcpserver -B '220 hi' -c 5 0 25 qmail-smtpd", "qmail-smtpd"),
    ("tcpserver -vRc5 -l0 0 25 fixcrio qmail-smtpd", "fixcrio qmail-smtpd"),
    ("tcpserver -b 20 -t 5 -- 0 25 qmail-smtpd", "qmail-smtpd"),
    ("tcpserver -x$CDB -u \"$U\" -g \"$G\" \"$IP\" \"$PORT\" qmail-smtpd", "qmail-smtpd"),
    ("tcpserver -v 0 smtp argv0 qmail-smtpd qmail-smtpd", "argv0 qmail-smtpd qmail-smtpd"),
])
def test_wraprun_tcpserver_options_and_operands(line, before):
    """tcpserver's options with arguments (c x t u g l b B), clusters and -- are skipped."""
    result = wrap(f"exec {line}\n", "W")
    assert result.text == f"exec {line.replace(' ' + before, ' W -- ' + before, 1)}\n"


def test_wraprun_resolves_literal_variables():
    """Options held in a variable the script assigns are split as the shell would."""
    text = 'OPTS="-v -c 40"\nexec tcpserver $OPTS 0 smtp /var/qmail/bin/qmail-smtpd\n'
    assert "0 smtp W -- /var/qmail/bin/qmail-smtpd" in wrap(text, "W").text


def test_wraprun_warns_without_exec():
    """A tcpserver line without exec is wrapped, with a note on signals."""
    result = wrap("tcpserver 0 25 qmail-smtpd 2>&1\n", "W")
    assert result.text == "tcpserver 0 25 W -- qmail-smtpd 2>&1\n"
    assert any("not run with exec" in w for w in result.warnings)


def test_wraprun_keeps_softlimit_with_other_limits_in_place():
    """A softlimit that also sets -o/-p before tcpserver is left there, with a warning."""
    text = "exec softlimit -m 9000000 -o 40 tcpserver 0 25 qmail-smtpd\n"
    result = wrap(text, "W")
    assert result.text == "exec softlimit -m 9000000 -o 40 tcpserver 0 25 W -- qmail-smtpd\n"
    assert any("left in place" in w for w in result.warnings)


@pytest.mark.parametrize("text, why", [
    ("exec tcpserver 0 25 sh -c 'exec qmail-smtpd'\n", "quoted string"),
    ("exec tcpserver 0 25 sh /var/qmail/bin/qmail-smtpd\n", "runs a shell"),
    ("exec tcpserver -v 0 /var/qmail/bin/qmail-smtpd\n", "host, port and program"),
    ("exec tcpserver -v 0 25 qmail-smtpd tcpserver\n", "twice"),
    ("exec tcpserver $OPTS 0 smtp qmail-smtpd\n", "tcpserver options or the host"),
])
def test_wraprun_refuses_unsafe_shapes(text, why):
    """Shapes where an insertion could be wrong are refused with the reason."""
    with pytest.raises(WrapRefused, match=why):
        wrap(text, "W")


def test_wraprun_syntax_error_is_not_a_refusal():
    """A script the lexer cannot cut raises ShellSyntaxError (with its line) from wrap."""
    with pytest.raises(ShellSyntaxError, match="unterminated ' quote at line 2") as err:
        wrap("#!/bin/sh\nexec tcpserver 0 25 'unterminated qmail-smtpd\n", "W")
    assert not isinstance(err.value, WrapRefused) and err.value.line == 2


def test_wraprun_lexer_skips_heredocs_comments_and_quotes():
    """Here-documents, comments and quoted text are not taken for commands."""
    text = ("cat <<EOF\nexec tcpserver 0 25 qmail-smtpd\nEOF\n"
            "# exec tcpserver 0 26 qmail-smtpd\n"
            "echo 'tcpserver 0 27 qmail-smtpd' \\\n  more\n"
            "exec tcpserver 0 28 qmail-smtpd\n")
    commands = shell_commands(text)
    assert [c.args[0].text for c in commands] == ["cat", "echo", "exec"]
    assert commands[1].args[-1].text == "more"
    assert "0 28 W -- qmail-smtpd" in wrap(text, "W").text


# ---------------------------------------------------------------------------
# The I/O shell: wraprun.main(args) -> exit code.

LWQ = (CORPUS / "lwq" / "run").read_text()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.write_text(LWQ)
    path.chmod(0o750)
    return path


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_wraprun_main_dry_run_writes_nothing(script, capsys):
    """--dry-run prints the unified diff and the notes and exits 0 without writing."""
    assert wraprun.main([str(script), "--dry-run", "--wrapper", WRAPPER]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"--- {script}\n+++ {script} (wrapped)\n")
    assert f"+        -u \"$QMAILDUID\" -g \"$NOFILESGID\" 0 smtp {WRAPPER} -- " in out
    assert "warning:" in err and "moved" in err
    assert script.read_text() == LWQ
    assert not list(script.parent.glob("*.bak*"))


def test_wraprun_main_without_tty_or_yes_exits_1(script, capsys, monkeypatch):
    """With no terminal and no --yes, the diff is shown, nothing is written, exit 1."""
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert wraprun.main([str(script), "--wrapper", WRAPPER]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("--- ") and "re-run with --yes" in err
    assert script.read_text() == LWQ


def test_wraprun_main_yes_writes_with_backup_and_mode(script, capsys):
    """--yes writes atomically, keeps the mode and a PATH.bak-supervise-smtp backup."""
    assert wraprun.main([str(script), "--yes", "--wrapper", WRAPPER]) == 0
    assert script.read_text() == (CORPUS / "lwq" / "expected").read_text()
    backup = script.parent / "run.bak-supervise-smtp"
    assert backup.read_text() == LWQ
    assert stat.S_IMODE(script.stat().st_mode) == 0o750
    assert f"backup: {backup}" in capsys.readouterr().out
    assert sorted(p.name for p in script.parent.iterdir()) == ["run", "run.bak-supervise-smtp"]


def test_wraprun_main_second_backup_gets_a_number(script):
    """An existing backup is never overwritten: the next one is .bak-supervise-smtp.1."""
    (script.parent / "run.bak-supervise-smtp").write_text("older\n")
    assert wraprun.main([str(script), "--yes", "--wrapper", WRAPPER]) == 0
    assert (script.parent / "run.bak-supervise-smtp").read_text() == "older\n"
    assert (script.parent / "run.bak-supervise-smtp.1").read_text() == LWQ


def test_wraprun_main_already_wrapped_exits_0(script, capsys):
    """A second run reports "already wrapped", writes nothing and makes no backup."""
    assert wraprun.main([str(script), "--yes", "--wrapper", WRAPPER]) == 0
    before = script.read_text()
    capsys.readouterr()
    assert wraprun.main([str(script), "--yes", "--wrapper", WRAPPER]) == 0
    assert "already wrapped" in capsys.readouterr().out
    assert script.read_text() == before
    assert not (script.parent / "run.bak-supervise-smtp.1").exists()


@pytest.mark.parametrize("answer, code", [("y\n", 0), ("n\n", 1), ("", 1)])
def test_wraprun_main_asks_on_a_terminal(script, monkeypatch, capsys, answer, code):
    """On a terminal it asks; only y/yes writes."""
    monkeypatch.setattr("sys.stdin", _Tty(answer))
    monkeypatch.setattr("sys.stdout", _Tty())
    assert wraprun.main([str(script), "--wrapper", WRAPPER]) == code
    assert "Write " in sys_stdout_text()
    assert (script.read_text() != LWQ) == (code == 0)


def sys_stdout_text() -> str:
    import sys

    assert isinstance(sys.stdout, io.StringIO)
    return sys.stdout.getvalue()


def test_wraprun_main_follows_symlinks(script, tmp_path):
    """A symlinked run script is edited at its target; the link stays a link."""
    link = tmp_path / "link-run"
    link.symlink_to(script)
    assert wraprun.main([str(link), "--yes", "--wrapper", WRAPPER]) == 0
    assert link.is_symlink() and WRAPPER in script.read_text()


@pytest.mark.parametrize("args, message", [
    ([], "missing PATH"),
    (["a", "b"], "one PATH only"),
    (["--bogus", "x"], "unknown option --bogus"),
    (["x", "--wrapper"], "needs a value"),
    (["x", "--", "--format", "xml"], "bad value for --format"),
])
def test_wraprun_main_usage_errors(args, message, tmp_path):
    """Bad command lines raise UsageError (exit 100 in cli)."""
    with pytest.raises(UsageError, match=message):
        wraprun.main(args)


def test_wraprun_main_refusal_is_usage_error(tmp_path):
    """A refused script is a UsageError naming the file; the file is untouched."""
    path = tmp_path / "run"
    text = (CORPUS / "refuse-eval" / "run").read_text()
    path.write_text(text)
    with pytest.raises(UsageError, match=r"run: line 4: .*eval.*nothing changed"):
        wraprun.main([str(path), "--yes"])
    assert path.read_text() == text and os.listdir(tmp_path) == ["run"]


def test_wraprun_main_syntax_error_is_usage_error(tmp_path):
    """wrap-run turns a shell syntax error into its refusal: exit 100, nothing written."""
    path = tmp_path / "run"
    text = "#!/bin/sh\nexec tcpserver 0 25 \"$(echo qmail-smtpd)\n"
    path.write_text(text)
    with pytest.raises(UsageError, match=r"run: unterminated \" quote at line 2; nothing changed"):
        wraprun.main([str(path), "--yes"])
    assert path.read_text() == text and os.listdir(tmp_path) == ["run"]


def test_wraprun_cli_exit_codes(wrapper, tmp_path):
    """Through the command line: 100 and a fatal line on refusal, 0 on --dry-run."""
    path = tmp_path / "run"
    path.write_text((CORPUS / "refuse-tcpsvd" / "run").read_text())
    run = subprocess.run([*wrapper, "wrap-run", str(path)], capture_output=True, timeout=30)
    assert run.returncode == 100
    assert run.stderr.startswith(b"supervise-smtp wrap-run: fatal: ")
    path.write_text(LWQ)
    run = subprocess.run([*wrapper, "wrap-run", str(path), "--dry-run"], capture_output=True,
                         timeout=30)
    assert run.returncode == 0 and run.stdout.startswith(b"--- ")
    missing = subprocess.run([*wrapper, "wrap-run", str(tmp_path / "nope")],
                             capture_output=True, timeout=30)
    assert missing.returncode == 100 and b"no such file" in missing.stderr


# ---------------------------------------------------------------------------
# The shipped service dirs' SERVE=1 setting: the run script executed with stub
# programs that print their argv (nothing listens, nothing is bound).

_ARGV_STUB = "#!/bin/sh\nprintf '%s\\n' \"$(basename \"$0\")\" \"$@\"\n"


def _run_shipped(suite: str, tmp_path: Path, serve: str | None,
                 opts: str = "") -> subprocess.CompletedProcess[str]:
    """Run the shipped ``suite/qmail-smtpd/run`` with its settings and stubs."""
    import shutil

    svc = tmp_path / suite
    shutil.copytree(REPO / suite / "qmail-smtpd", svc)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("tcpserver", "supervise-smtp"):
        (bin_dir / name).write_text(_ARGV_STUB)
        (bin_dir / name).chmod(0o755)
    values = {"SUPERVISE_SMTP": str(bin_dir / "supervise-smtp"), "SUPERVISE_SMTP_OPTS": opts,
              "QMAILDUID": "71", "NOFILESGID": "80", "MAXSMTPD": "7", "IP": "127.0.0.1",
              "PORT": "2525"}
    if serve is not None:
        values["SERVE"] = serve
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    if suite == "runit":
        with open(svc / "conf", "a") as fh:
            fh.writelines(f"{k}='{v}'\n" for k, v in values.items())
    else:
        for k, v in values.items():
            (svc / "env" / k).write_text(v + "\n")
        env["SUPERVISE_SMTP_ENVDIR"] = "./env"  # as after envdir: read them from the env
        env.update(values)
        env.update({f.name: f.read_text().strip() for f in (svc / "env").iterdir()
                    if f.name not in values and f.read_text().strip()})
    return subprocess.run(["sh", "./run"], cwd=svc, env=env, capture_output=True, text=True,
                          timeout=30)


_SUITES = ["daemontools", "runit", "s6"]


@pytest.mark.parametrize("suite", _SUITES)
@pytest.mark.parametrize("serve", [None, "", "0"])
def test_shipped_run_without_serve_execs_tcpserver(suite, serve, tmp_path):
    """SERVE unset, empty or 0: today's tcpserver ... supervise-smtp -- softlimit line."""
    run = _run_shipped(suite, tmp_path, serve)
    assert run.returncode == 0, run.stderr
    soft = "s6-softlimit" if suite == "s6" else "softlimit"
    assert run.stdout.splitlines() == [
        "tcpserver", "-v", "-R", "-l", "0", "-x", "/etc/tcp.smtp.cdb", "-c", "7", "-u", "71",
        "-g", "80", "127.0.0.1", "2525", str(tmp_path / "bin" / "supervise-smtp"), "--",
        soft, "-m", "24000000", "/var/qmail/bin/qmail-smtpd"]


@pytest.mark.parametrize("suite", _SUITES)
def test_shipped_run_serve_1_execs_serve_with_the_same_options(suite, tmp_path):
    """SERVE=1: supervise-smtp serve, tcpserver's options then the wrapper's, host, port,
    ``--``, softlimit; exactly what serve's own parser reads as the tcpserver line."""
    from supervise_smtp.serve.config import parse_serve

    plain = _run_shipped(suite, tmp_path / "plain", None, "--format json --bare-lf fix")
    run = _run_shipped(suite, tmp_path / "serve", "1", "--format json --bare-lf fix")
    assert plain.returncode == 0 and run.returncode == 0, plain.stderr + run.stderr
    soft = "s6-softlimit" if suite == "s6" else "softlimit"
    tail = ["--", soft, "-m", "24000000", "/var/qmail/bin/qmail-smtpd"]
    opts = ["-v", "-R", "-l", "0", "-x", "/etc/tcp.smtp.cdb", "-c", "7", "-u", "71", "-g", "80"]
    wrapper_opts = ["--format", "json", "--bare-lf", "fix"]
    argv = run.stdout.splitlines()
    assert argv == ["supervise-smtp", "serve", *opts, *wrapper_opts, "127.0.0.1", "2525",
                    *tail]
    assert plain.stdout.splitlines()[1:] == [
        *opts, "127.0.0.1", "2525", str(tmp_path / "plain" / "bin" / "supervise-smtp"),
        *wrapper_opts, *tail]
    cfg = parse_serve(argv[2:])
    assert (cfg.verbosity, cfg.remote_info, cfg.local_name, cfg.rules, cfg.limit, cfg.uid,
            cfg.gid, cfg.host, cfg.port) == (2, False, "0", "/etc/tcp.smtp.cdb", 7, 71, 80,
                                             "127.0.0.1", "2525")
    assert cfg.options.format == "json" and cfg.prog == tail[1:]


@pytest.mark.parametrize("suite", _SUITES)
def test_shipped_run_refuses_other_serve_values(suite, tmp_path):
    """SERVE=yes is neither mode: the run script says so and exits 100, nothing started."""
    run = _run_shipped(suite, tmp_path, "yes")
    # exec 2>&1: the message goes to the log service, on stdout here
    assert run.returncode == 100 and run.stdout.splitlines() == [
        "qmail-smtpd run: SERVE=yes: set SERVE=1 for supervise-smtp serve, or leave it unset"]


# ---------------------------------------------------------------------------
# wrap-run --serve: the tcpserver command becomes supervise-smtp serve.

def test_serve_corpus_covers_every_wrappable_script():
    """Every script wrap-run wraps has its serve form too, and some are refused."""
    assert set(GOOD) <= set(SERVE_GOOD) and len(SERVE_REFUSED) >= 3


@pytest.mark.parametrize("name", SERVE_GOOD)
def test_serve_corpus_expected_output(name):
    """Each corpus script, wrapped or not, turns into its ``expected-serve``, with its notes."""
    result = to_serve((CORPUS / name / "run").read_text(), WRAPPER)
    assert result.changed and not result.already
    assert result.text == (CORPUS / name / "expected-serve").read_text()
    assert result.warnings == (CORPUS / name / "warnings-serve").read_text().splitlines()


@pytest.mark.parametrize("name", GOOD)
def test_serve_of_the_wrapped_script_is_the_same(name):
    """Converting the wrap-run output gives the same serve line as converting the original."""
    result = to_serve((CORPUS / name / "expected").read_text(), WRAPPER)
    assert result.text == (CORPUS / name / "expected-serve").read_text()


@pytest.mark.parametrize("name", SERVE_GOOD)
def test_serve_corpus_idempotent_and_sh_n(name):
    """The serve form parses with ``sh -n``; converting it again changes nothing."""
    converted = (CORPUS / name / "expected-serve").read_text()
    result = to_serve(converted, WRAPPER)
    assert result.already and not result.changed and result.text == converted
    run = subprocess.run(["sh", "-n", str(CORPUS / name / "expected-serve")],
                         capture_output=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("name", SERVE_GOOD)
def test_serve_corpus_line_keeps_tcpservers_options(name):
    """Right after ``serve`` come tcpserver's options, word for word and in order (as
    tcpserver's getopt read them), then the wrapper's; serve's parser takes the line."""
    from supervise_smtp.argv import TCPSERVER_OPTSTRING, getopt
    from supervise_smtp.runscript.sh import assignments, resolve
    from supervise_smtp.serve.config import parse_serve

    def values_after(text: str, program: str) -> list[str | None]:
        commands = shell_commands(text)
        env = assignments(commands)
        for cmd in commands:
            names = [resolve(w, env) or "" for w in cmd.args]
            ks = [k for k, n in enumerate(names) if n.endswith(program) and k > 0 and
                  names[0] != "echo"]
            if ks:
                out: list[str | None] = []
                for w in cmd.args[ks[0] + 1:]:
                    v = resolve(w, env)
                    split = v is not None and w.literal is None and not w.text.startswith('"')
                    out.extend(v.split() if split and v is not None else [v])
                return out
        raise AssertionError(f"no {program} command")

    before = values_after((CORPUS / name / "run").read_text(), "tcpserver")
    end, _ = getopt(before, 0, TCPSERVER_OPTSTRING)
    options = before[:end - 1] if before[end - 1:end] == ["--"] else before[:end]
    after = values_after((CORPUS / name / "expected-serve").read_text(), "serve")
    assert after[:len(options)] == options
    if None not in after:
        parse_serve(after)


@pytest.mark.parametrize("name", SERVE_REFUSED)
def test_serve_corpus_refusals(name):
    """A tcpserver option serve refuses, or a chain it cannot keep, is refused with the reason."""
    with pytest.raises(WrapRefused) as err:
        to_serve((CORPUS / name / "run").read_text(), WRAPPER)
    assert (CORPUS / name / "refusal-serve").read_text().strip() in str(err.value)


@pytest.mark.parametrize("option, why", [
    ("-s", "TLS (-s) is not supported"),
    ("-6", "ucspi-tcp6's -6 is not supported"),
    ("-I eth0", "ucspi-tcp6's -I is not supported"),
    ("-c 0", "bad value for -c: '0'"),
    ("-g nofiles", "bad value for -g: 'nofiles'"),
    ("-b x", "bad value for -b: 'x'"),
])
def test_serve_refusals_come_from_serves_own_parser(option, why):
    """The reason is serve_opts.parse_serve's own message, for each refused option."""
    import re

    from supervise_smtp.serve.config import parse_serve

    with pytest.raises(UsageError, match=re.escape(why)):
        parse_serve([*option.split(), "0", "25", "qmail-smtpd"])
    with pytest.raises(WrapRefused,
                       match=re.escape(f"serve cannot take tcpserver's place here: {why}")):
        to_serve(f"exec tcpserver -v {option} 0 25 supervise-smtp -- qmail-smtpd\n", "W")


def test_serve_unknown_values_are_not_refused():
    """$VAR values set at run time (-c "$MAXSMTPD", -u "$QMAILDUID") are left to serve."""
    text = 'exec tcpserver -c "$MAXSMTPD" -u "$U" -g "$G" -x$CDB 0 25 qmail-smtpd\n'
    assert to_serve(text, "W").text == \
        'exec W serve -c "$MAXSMTPD" -u "$U" -g "$G" -x$CDB 0 25 -- qmail-smtpd\n'


@pytest.mark.parametrize("line, serve", [
    ("tcpserver -v 0 25 qmail-smtpd", "W serve -v 0 25 -- qmail-smtpd"),
    ("tcpserver -v 0 25 supervise-smtp qmail-smtpd", "supervise-smtp serve -v 0 25 -- qmail-smtpd"),
    ("tcpserver -v 0 25 supervise-smtp --format=json --linger 2 qmail-smtpd",
     "supervise-smtp serve -v --format=json --linger 2 0 25 -- qmail-smtpd"),
    ("tcpserver -b 20 -- 0 25 \"$SUPERVISE_SMTP\" $SUPERVISE_SMTP_OPTS -- \"$SMTPD\"",
     "\"$SUPERVISE_SMTP\" serve -b 20 $SUPERVISE_SMTP_OPTS -- 0 25 -- \"$SMTPD\""),
])
def test_serve_moves_the_wrapper_and_its_options(line, serve):
    """The wrapper word replaces tcpserver's, its options go before the host (or
    tcpserver's ``--``), and the program keeps a ``--`` in front."""
    assert to_serve(f"exec {line}\n", "W").text == f"exec {serve}\n"


def test_serve_options_after_dashdash_for_an_unwrapped_line():
    """``wrap-run --serve PATH -- OPTIONS`` puts the OPTIONS before the host."""
    result = to_serve("exec tcpserver -v 0 25 qmail-smtpd\n", "W", ("--format", "json"))
    assert result.text == "exec W serve -v --format json 0 25 -- qmail-smtpd\n"
    again = to_serve("exec tcpserver -v 0 25 supervise-smtp -- qmail-smtpd\n", "W",
                     ("--format", "json"))
    assert again.text == "exec supervise-smtp serve -v 0 25 -- qmail-smtpd\n"
    assert any("options after -- are not used" in w for w in again.warnings)


@pytest.mark.parametrize("suite", _SUITES)
def test_serve_shipped_service_dirs_say_serve_1(suite):
    """The shipped run scripts already hold a serve line: nothing to convert, SERVE=1 named."""
    result = to_serve((REPO / suite / "qmail-smtpd" / "run").read_text(), WRAPPER)
    assert result.already and not result.changed
    assert len(result.warnings) == 1 and "SERVE=1" in result.warnings[0]


def test_wraprun_main_serve_dry_run_and_yes(script, capsys):
    """--serve --dry-run shows the diff and writes nothing; --serve --yes writes the
    serve form with a backup, then says it already runs serve."""
    assert wraprun.main([str(script), "--serve", "--dry-run", "--wrapper", WRAPPER]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"--- {script}\n+++ {script} (serve)\n")
    assert f"+exec {WRAPPER} serve -v -R " in out and "moved" in err
    assert script.read_text() == LWQ and not list(script.parent.glob("*.bak*"))
    assert wraprun.main([str(script), "--serve", "--yes", "--wrapper", WRAPPER]) == 0
    assert script.read_text() == (CORPUS / "lwq" / "expected-serve").read_text()
    assert (script.parent / "run.bak-supervise-smtp").read_text() == LWQ
    capsys.readouterr()
    assert wraprun.main([str(script), "--serve", "--yes"]) == 0
    assert "already runs supervise-smtp serve (line 21)" in capsys.readouterr().out
    assert not (script.parent / "run.bak-supervise-smtp.1").exists()


def test_wraprun_cli_serve_refusal_exits_100(wrapper, tmp_path):
    """Through the command line: a tcpserver option serve cannot carry is exit 100 with
    the reason, and the script is untouched."""
    path = tmp_path / "run"
    text = (CORPUS / "serve-refuse-ssl" / "run").read_text()
    path.write_text(text)
    run = subprocess.run([*wrapper, "wrap-run", "--serve", str(path), "--yes"],
                         capture_output=True, timeout=30)
    assert run.returncode == 100, run.stderr
    assert run.stderr.startswith(b"supervise-smtp wrap-run: fatal: ")
    assert b"TLS (-s) is not supported" in run.stderr and b"nothing changed" in run.stderr
    assert path.read_text() == text and os.listdir(tmp_path) == ["run"]
