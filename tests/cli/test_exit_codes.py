"""Golden checks of the command line: exact stderr and exit status.

In the rts.tests tradition of daemontools and s6: 100 for usage, 111 when the
child cannot start, otherwise the child's own status (or its signal, raised
on the wrapper itself); plus the environment, signal forwarding and the
child's stderr as tagged, passed or JSON lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import event, events, read_fd_until, wrapper_argv

from supervise_smtp import __version__
from supervise_smtp.session.output import parse_logfmt

USAGE = "usage: supervise-smtp [options] [--] prog [args...]"
TIMEOUT_S = 30


def _run(args: list[str], **kw) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([*wrapper_argv(), *args], capture_output=True, timeout=TIMEOUT_S, **kw)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing prog"),
        (["--"], "missing prog"),
        (["--bogus", "sh"], "unknown option --bogus"),
        (["-x", "sh"], "unknown option -x"),
        (["--stderr", "bogus", "sh"], "bad value for --stderr: bogus (one of tag|pass)"),
        (["--stderr=bogus", "sh"], "bad value for --stderr: bogus (one of tag|pass)"),
        (["--format", "xml", "sh"], "bad value for --format: xml (one of logfmt|json)"),
        (["--stderr"], "option --stderr needs a value"),
        (["--linger", "-1", "sh"], "bad value for --linger: -1"),
    ],
    ids=["no-args", "only-dashes", "unknown-long", "unknown-short", "bad-stderr",
         "bad-stderr-eq", "bad-format", "missing-value", "bad-linger"],
)
def test_cli_usage_error_exits_100(args, message):
    """A usage error exits 100 with exactly one fatal line on stderr and nothing on stdout."""
    run = _run(args)
    assert run.returncode == 100
    assert run.stdout == b""
    hint = ""
    if args in ([], ["--"]):  # nothing to run: the subcommands and --help are named
        hint = "; or supervise-smtp wrap-run|check-service|serve|report|collect ...; see --help"
    assert run.stderr.decode() == f"supervise-smtp: fatal: {message} ({USAGE}{hint})\n"


MISSING = "/nonexistent/supervise-smtp-prog"


def test_cli_missing_program_exits_111():
    """A program that does not exist exits 111 with a wrapper_error event and a fatal line."""
    run = _run(["--", MISSING, "arg"])
    assert run.returncode == 111
    assert run.stdout == b""
    lines = run.stderr.decode().splitlines()
    strerror = os.strerror(2)
    assert lines[-1] == f"supervise-smtp: fatal: unable to spawn {MISSING}: {strerror}"
    assert len(lines) == 3
    err = parse_logfmt(lines[0])
    assert err["event"] == "wrapper_error"
    assert err["where"] == "spawn"
    assert err["errno"] == "2"
    assert err["error"] == f"unable to spawn {MISSING}: {strerror}"
    summary = parse_logfmt(lines[1])
    assert (summary["event"], summary["verdict"], summary["exit"]) == (
        "summary", "wrapper_error", "111")


def test_cli_program_not_on_path_exits_111():
    """A bare program name not found on PATH exits 111 and says so."""
    run = _run(["no-such-supervise-smtp-prog"])
    assert run.returncode == 111
    assert run.stderr.decode().endswith(
        f"supervise-smtp: fatal: unable to spawn no-such-supervise-smtp-prog: {os.strerror(2)}\n")
    assert event(run.stderr, "wrapper_error")["errno"] == "2"


def test_cli_non_executable_program_exits_111(tmp_path):
    """A program file without execute permission exits 111 with EACCES's strerror."""
    prog = tmp_path / "not-executable"
    prog.write_text("#!/bin/sh\nexit 0\n")
    prog.chmod(0o644)
    run = _run(["--", str(prog)])
    assert run.returncode == 111
    assert run.stderr.decode().endswith(
        f"supervise-smtp: fatal: unable to spawn {prog}: {os.strerror(13)}\n")
    assert event(run.stderr, "wrapper_error")["errno"] == "13"


def test_cli_child_exit_code_passed_on():
    """``sh -c 'exit 3'`` exits 3; its lines: connect, child_exit, disconnect, summary."""
    run = _run(["--", "sh", "-c", "exit 3"])
    assert run.returncode == 3
    assert run.stdout == b""
    assert [e["event"] for e in events(run.stderr)] == [
        "connect", "child_exit", "disconnect", "summary"]
    assert len(run.stderr.splitlines()) == 4
    assert event(run.stderr, "child_exit")["exit"] == "3"
    assert event(run.stderr, "disconnect")["exit"] == "3"


def test_cli_child_signal_raised_on_wrapper():
    """A child killed by SIGTERM makes the wrapper die by SIGTERM too."""
    run = _run(["--", "sh", "-c", "kill -TERM $$"])
    assert run.returncode == -signal.SIGTERM
    child_exit = event(run.stderr, "child_exit")
    assert child_exit["signal"] == "SIGTERM"
    assert "exit" not in child_exit


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_cli_help_exits_0_on_stdout(flag):
    """``--help`` prints the usage on stdout and exits 0 without starting anything."""
    run = _run([flag, "--", "sh", "-c", "exit 9"])
    assert run.returncode == 0
    assert run.stderr == b""
    assert run.stdout.decode().startswith(USAGE + "\n")


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_cli_version_exits_0_on_stdout(flag):
    """``--version`` prints the version on stdout and exits 0."""
    run = _run([flag])
    assert (run.returncode, run.stdout, run.stderr) == (
        0, f"supervise-smtp {__version__}\n".encode(), b"")


@pytest.mark.parametrize(
    "args",
    [["sh", "-c", "echo hi"], ["--", "sh", "-c", "echo hi"],
     ["--stderr", "pass", "sh", "-c", "echo hi"], ["--format=json", "--", "sh", "-c", "echo hi"]],
    ids=["bare", "dashes", "option-bare", "option-dashes"],
)
def test_cli_double_dash_optional(args):
    """``--`` may be left out when prog does not start with ``-``."""
    run = _run(args)
    assert (run.returncode, run.stdout) == (0, b"hi\n")


def _env_of_child(env: dict[bytes, bytes]) -> dict[bytes, bytes]:
    run = _run(["--", "env", "-0"], env=env)
    assert run.returncode == 0, run.stderr
    entries = [e for e in run.stdout.split(b"\0") if e]
    return dict(e.split(b"=", 1) for e in entries)


QMAIL_ENV = {
    b"TCPREMOTEIP": b"192.0.2.7",
    b"TCPREMOTEPORT": b"40000",
    b"TCPLOCALIP": b"192.0.2.1",
    b"RELAYCLIENT": b"",
    b"QMAILQUEUE": b"/var/qmail/bin/qmail-scanner-queue.pl",
    b"NOT_UTF8": b"caf\xe9 \xff\xfe \x80",
}


def test_cli_environment_reaches_child_unchanged():
    """The child's environment is exactly the wrapper's, non-UTF-8 bytes included."""
    env = {b"PATH": os.environb[b"PATH"], b"LANG": b"C.UTF-8", **QMAIL_ENV}
    assert _env_of_child(env) == env


def test_cli_environment_without_locale_reaches_child_unchanged():
    """With no locale variables (runsv, env -i), the child gets no locale variable either."""
    env = {b"PATH": os.environb[b"PATH"], **QMAIL_ENV}
    assert _env_of_child(env) == env


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 7), (signal.SIGHUP, 8), (signal.SIGINT, 9), (signal.SIGALRM, 10)],
    ids=["TERM", "HUP", "INT", "ALRM"],
)
def test_cli_signal_forwarded_to_child(signum, code, tmp_path):
    """A signal sent to the wrapper reaches the child, and the wrapper exits with its status."""
    name = signal.Signals(signum).name[3:]
    script = (f'trap "echo got-{name} >&2; exit {code}" {name}; echo ready; '
              "while :; do sleep 0.05; done")
    err_path = tmp_path / "err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([*wrapper_argv(), "--", "sh", "-c", script],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        assert read_fd_until(proc.stdout.fileno(), b"ready\n") == b"ready\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=TIMEOUT_S) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    log = err_path.read_bytes()
    assert [e["text"] for e in events(log) if e["event"] == "child_stderr"] == [f"got-{name}"]
    assert event(log, "child_exit")["exit"] == str(code)


_WRITE_STDERR = (
    "import sys, time\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "half = len(data) // 2\n"
    "sys.stderr.buffer.write(data[:half]); sys.stderr.buffer.flush()\n"
    "time.sleep(0.05)\n"
    "sys.stderr.buffer.write(data[half:]); sys.stderr.buffer.flush()\n"
)


def test_cli_forwarded_signal_kills_untrapped_child_and_wrapper(tmp_path):
    """SIGTERM to the wrapper kills a child that does not trap it, and then the wrapper alike."""
    proc = subprocess.Popen(
        [*wrapper_argv(), "--", "sh", "-c", "echo ready; while :; do sleep 0.05; done"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert read_fd_until(proc.stdout.fileno(), b"ready\n") == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGTERM
    assert event(err, "child_exit")["signal"] == "SIGTERM"


def test_cli_forwarded_signal_never_waits_for_the_next_io():
    """A TERM that lands just before the relay's poll() is still passed on at once.

    The race: Python runs a handler between bytecodes, so a signal taken after
    the last check and before poll() entered the kernel waited for the next
    I/O, which a quiet child never makes (svc -d hung).  Bursts of ALRM (passed
    on, ignored by the child) make the relay re-enter poll() again and again,
    and two busy loops make it likely to be preempted right there.
    """
    child = "trap '' ALRM; echo ready; exec sleep 1000"  # the ignored ALRM survives exec
    load = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
    hung = []
    try:
        for attempt in range(120):
            proc = subprocess.Popen([*wrapper_argv(), "--", "sh", "-c", child],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            try:
                assert proc.stdout is not None
                assert read_fd_until(proc.stdout.fileno(), b"ready\n") == b"ready\n"
                for _ in range(1 + attempt % 24):
                    proc.send_signal(signal.SIGALRM)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    hung.append(attempt)
                    proc.send_signal(signal.SIGTERM)  # the next signal wakes it
                    proc.communicate(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=10)
            assert proc.returncode == -signal.SIGTERM
    finally:
        for p in load:
            p.kill()
            p.wait()
    assert not hung, f"still running 5 s after SIGTERM in attempts {hung}"


def _child_stderr(tmp_path, lines: list[bytes], *opts: str) -> subprocess.CompletedProcess[bytes]:
    """Run the wrapper around a child writing ``lines`` on its stderr (in two writes)."""
    payload = tmp_path / "stderr.bin"
    payload.write_bytes(b"".join(line + b"\n" for line in lines))
    run = _run([*opts, "--", sys.executable, "-c", _WRITE_STDERR, str(payload)])
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_cli_child_stderr_tagged_and_escaped(tmp_path):
    """Each child stderr line is one escaped event line; a 1 MB line is truncated, none lost."""
    lines = [b"cr\rhere", b"nul\x00here", b" key=value ", b'quote"here',
             b"latin \xe9 byte \xff", b"A" * 1048576, b"after the long line"]
    run = _run_tagged = _child_stderr(tmp_path, lines)
    raw = _run_tagged.stderr
    assert all(0x20 <= b < 0x7F for b in raw.replace(b"\n", b"")), "raw control byte in output"
    assert all(line.startswith(b"event=") for line in raw.splitlines())
    said = [e for e in events(raw) if e["event"] == "child_stderr"]
    assert [e["text"] for e in said] == [
        "cr\\rhere", "nul\\x00here", " key=value ", 'quote"here', "latin \\xe9 byte \\xff",
        "A" * 1024, "after the long line",
    ]
    assert all(e["source"] == "child" for e in said)
    assert all("key" not in e for e in said), "a child forged a key"
    long = said[5]
    assert (long["line_bytes"], long["truncated"]) == ("1048576", "true")
    assert not any("truncated" in e for i, e in enumerate(said) if i != 5)
    # line_bytes is the true length of every line, as the child wrote it
    assert [int(e["line_bytes"]) for e in said][:5] == [len(b"cr\rhere"), len(b"nul\x00here"),
                                                        len(b" key=value "), len(b'quote"here'),
                                                        len(b"latin \xe9 byte \xff")]
    assert [e["event"] for e in events(raw)] == [
        "connect", *["child_stderr"] * len(lines), "child_exit", "disconnect", "summary"]
    assert run.stdout == b""


def test_cli_child_stderr_escaped_overflow_flagged(tmp_path):
    """A short line of control bytes whose escaped text exceeds the cap is flagged truncated."""
    line = b"\x01" * 500  # under the 1024-byte line cap, 2000 characters once escaped
    run = _child_stderr(tmp_path, [line])
    said = event(run.stderr, "child_stderr")
    assert "\\x01" * 500 != said["text"]
    assert ("\\x01" * 500).startswith(said["text"])
    assert said.get("truncated") == "true"


def test_cli_child_stderr_pass_is_byte_exact(tmp_path):
    """``--stderr pass`` gives the child's lines byte for byte, never mixed with event lines."""
    lines = [b"plain line", b"cr\r nul\x00 high\xff\xe9 \"q\" key=value", b"", b"C" * 60000,
             b"D" * 100000, b"last"]
    run = _child_stderr(tmp_path, lines, "--stderr", "pass")
    out = run.stderr.split(b"\n")
    assert out[-1] == b""
    theirs = [line for line in out[:-1] if not line.startswith(b"event=")]
    ours = [parse_logfmt(line.decode("ascii")) for line in out[:-1] if line.startswith(b"event=")]
    # A line over 64 KiB is passed on cut into pieces of 65536 bytes: nothing is lost.
    assert theirs == [*lines[:4], b"D" * 65536, b"D" * (100000 - 65536), b"last"]
    assert [e["event"] for e in ours] == ["connect", "child_exit", "disconnect", "summary"]
    assert out[0].startswith(b"event=connect ")


def test_cli_json_format_lines_parse(tmp_path):
    """``--format json`` writes one JSON object per line, escaped text included."""
    run = _child_stderr(tmp_path, [b'x\x00y"z \xff'], "--format", "json")
    objs = [json.loads(line) for line in run.stderr.decode("ascii").splitlines()]
    assert [o["event"] for o in objs] == [
        "connect", "child_stderr", "child_exit", "disconnect", "summary"]
    assert objs[1]["text"] == 'x\\x00y"z \\xff'
    assert objs[2]["exit"] == 0
    assert objs[3]["first_close"] in ("client", "server")
    assert all(o["pid"] == objs[0]["pid"] for o in objs)


def test_plain_session_loads_only_what_it_needs(tmp_path):
    """Start-up is paid per connection: a quiet session without AUTH, DATA or child
    stderr never imports the AUTH decoder, procfs, the stderr splitter or classifier."""
    child = tmp_path / "child"
    child.write_text("#!/bin/sh\nprintf '220 x ESMTP\\r\\n'; read l; printf '221 x\\r\\n'\n")
    child.chmod(0o755)
    argv = wrapper_argv()
    if argv[0] != sys.executable:  # the launcher script: run it with -X importtime
        argv = [sys.executable, *argv]
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:], "--", str(child)],
                          input=b"QUIT\r\n", capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    loaded = {line.rsplit(b"|", 1)[-1].strip().decode() for line in proc.stderr.splitlines()
              if line.startswith(b"import time:")}
    assert "supervise_smtp.observer.protocol" in loaded  # the check itself works
    for lazy in ("supervise_smtp.observer.auth", "supervise_smtp.session.procfs",
                 "supervise_smtp.session.linesplit", "supervise_smtp.session.stderr",
                 "supervise_smtp.observer.tls", "supervise_smtp.session.capture",
                 "supervise_smtp.session.alert", "supervise_smtp.session.barelf",
                 "supervise_smtp.session.safedir", "supervise_smtp.serve.fds",
                 "json", "re", "subprocess", "argparse", "psutil",
                 "supervise_smtp.serve.rules", "cdblib", "daemon", "prometheus_client",
                 "setproctitle", "supervise_smtp.serve.title",
                 "supervise_smtp.serve.server", "supervise_smtp.serve.stats",
                 "supervise_smtp.logs.metrics", "supervise_smtp.logs.tally",
                 "supervise_smtp.logs.http", "supervise_smtp.logs.collect",
                 "supervise_smtp.runscript.check", "supervise_smtp.runscript.check_run",
                 "supervise_smtp.runscript.settings", "supervise_smtp.runscript.host",
                 "supervise_smtp.logs.report", "supervise_smtp.logs.report_text",
                 "supervise_smtp.logs.stamps", "supervise_smtp.logs.parse",
                 "supervise_smtp.logs.inputs", "supervise_smtp.logs.topk"):
        assert lazy not in loaded, lazy
