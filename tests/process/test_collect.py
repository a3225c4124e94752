"""supervise-smtp collect in front of a real logger process, on real pipes.

The logger is tests/fakes/fake-logger (it copies its stdin to a file and
notes every signal it gets), ``cat`` or ``sh``; the lines go in through a
pipe this test holds, as a supervisor's log pipe.  What is checked is what
an operator sees: the bytes the logger wrote, the textfile and /metrics as
prometheus-client's parser reads them, the signals the logger noted, the
exit status.  No fixed sleeps: every wait is for a condition.
"""

from __future__ import annotations

import errno
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import FAKES, free_port, wrapper_argv
from prometheus_client.parser import text_string_to_metric_families

from supervise_smtp.session.output import format_json, format_logfmt

LOGGER = [str(FAKES / "fake-logger")]
TIMEOUT_S = 15.0


def summary(verdict: str = "ok", stage: str = "quit", **more: object) -> bytes:
    fields: dict[str, object] = {"event": "summary", "remote": "10.0.0.1", "pid": 100,
                                 "verdict": verdict, "stage": stage, "bytes_in": 10,
                                 "bytes_out": 20, "duration_ms": 5, "exit": 0}
    fields.update(more)
    return format_logfmt(fields)


def wait_for(what: str, fn: Callable[[], object], timeout: float = TIMEOUT_S) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def counters(text: str) -> dict[str, float]:
    """``name{a="b",...}`` -> value of every sample, labels sorted; parsed by prometheus-client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def read_counters(path: Path) -> dict[str, float]:
    try:
        return counters(path.read_text())
    except FileNotFoundError:
        return {}


class Collect:
    """``supervise-smtp collect OPTS -- LOGGER`` reading a pipe whose write end we hold."""

    def __init__(self, tmp_path: Path, *opts: str, logger: list[str] | None = None,
                 **env: str) -> None:
        self.out = tmp_path / "logged"
        self.signals = tmp_path / "signals"
        self.ready = tmp_path / "ready"
        self.err = tmp_path / "collect.err"
        r, self.w = os.pipe()
        self.r = os.dup(r)  # our copy of the read end: what collect leaves stays readable
        environ = dict(os.environ, FAKE_LOGGER_OUT=str(self.out),
                       FAKE_LOGGER_SIGNALS=str(self.signals), FAKE_LOGGER_READY=str(self.ready),
                       **env)
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [*wrapper_argv(), "collect", *opts, "--", *(logger or LOGGER)],
                stdin=r, stdout=subprocess.DEVNULL, stderr=err, env=environ)
        os.close(r)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view):]

    def close(self) -> int:
        """End of input; collect's exit status."""
        if self.w >= 0:
            os.close(self.w)
            self.w = -1
        return self.proc.wait(TIMEOUT_S)

    def logged(self) -> bytes:
        try:
            return self.out.read_bytes()
        except FileNotFoundError:
            return b""

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT_S)
        for fd in (self.w, self.r):
            if fd >= 0:
                os.close(fd)
        self.w = self.r = -1


@pytest.fixture
def collect(tmp_path):
    started: list[Collect] = []

    def start(*opts: str, logger: list[str] | None = None, **env: str) -> Collect:
        c = Collect(tmp_path, *opts, logger=logger, **env)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_collect_relays_every_byte_and_counts_the_summary_lines(collect, tmp_path):
    """The logger gets the stream byte for byte (foreign lines, binary junk, a 100 KB
    line, an unterminated last line); the textfile counts each summary once."""
    prom = tmp_path / "m.prom"
    c = collect("--textfile", str(prom))
    stream = b"".join([
        b"tcpserver: status: 1/20\ntcpserver: pid 100 from 10.0.0.1\n",
        summary("bare_lf", "data_body", bare_lf=3, queue="parent_died",
                last_reply=b"451 See http://pobox.com/~djb/docs/smtplf.html.", exit=1),
        b"junk \x00\xff\r\x1b[31m not ours\r\n",
        summary("ok", "quit", queued="yes", queue_exit=0, last_reply=b"221 bye"),
        b"X" * 100_000 + b"\n",
        format_json({"event": "summary", "verdict": "server_crashed", "stage": "mail",
                     "bytes_in": 5, "bytes_out": 7, "duration_ms": 1, "signal": "SIGSEGV"}),
        b'event=summary verdict="ok stage=quit\n',  # a quote never closed: unreadable
        b"tcpserver: end 100 status 0\n",
        summary("rejected", "rcpt", last_reply=b"553 sorry", rejects=1).rstrip(b"\n"),
    ])
    for i in range(0, len(stream), 1500):  # pieces that cut lines anywhere
        c.write(stream[i:i + 1500])
    assert c.close() == 0
    assert c.logged() == stream
    got = read_counters(prom)
    assert {k: v for k, v in got.items() if k.startswith("supervise_smtp_connections_total")
            and v} == {
        'supervise_smtp_connections_total{stage="data_body",verdict="bare_lf"}': 1,
        'supervise_smtp_connections_total{stage="quit",verdict="ok"}': 1,
        'supervise_smtp_connections_total{stage="mail",verdict="server_crashed"}': 1,
        'supervise_smtp_connections_total{stage="rcpt",verdict="rejected"}': 1,
    }
    assert got["supervise_smtp_summaries_unreadable_total"] == 1
    assert got['supervise_smtp_scanner_parent_died_total{verdict="bare_lf"}'] == 1
    assert got['supervise_smtp_replies_total{code="553"}'] == 1
    assert got['supervise_smtp_child_exit_total{status="SIGSEGV"}'] == 1
    assert got['supervise_smtp_bytes_total{direction="in"}'] == 35
    assert got["supervise_smtp_session_duration_seconds_count"] == 4
    assert (prom.stat().st_mode & 0o777) == 0o644
    assert c.stderr() == ""


def test_collect_passes_signals_on_to_the_logger(collect):
    """HUP ALRM CONT INT QUIT USR1 USR2 sent to collect reach the logger, each one."""
    c = collect("--listen", f"127.0.0.1:{free_port()}")
    wait_for("the logger's handlers", c.ready.exists)
    sent = ["SIGHUP", "SIGALRM", "SIGCONT", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2"]
    for i, name in enumerate(sent):
        c.proc.send_signal(getattr(signal, name))
        wait_for(name, lambda n=i + 1: c.signals.exists()
                 and len(c.signals.read_text().split()) == n)
    c.write(b"still here\n")
    assert c.close() == 0
    assert c.signals.read_text().split() == sent
    assert c.logged() == b"still here\n"


def test_collect_term_ends_the_logger_at_a_line_end_and_leaves_the_rest(collect):
    """TERM: collect reads to the end of the current line, gives the logger all it read
    and closes its stdin (no TERM passed on: nothing in flight is lost); the unread rest
    stays in the supervisor's pipe for the next logger."""
    c = collect("--listen", f"127.0.0.1:{free_port()}")
    c.write(b"one\ntwo-part")
    wait_for("the first bytes", lambda: c.logged() == b"one\ntwo-part")
    c.proc.send_signal(signal.SIGTERM)
    c.write(b"ial\nthree\nfour\n")
    assert c.proc.wait(TIMEOUT_S) == 0
    assert c.logged() == b"one\ntwo-partial\n"
    assert not c.signals.exists()  # the logger ended at its end of input
    os.set_blocking(c.r, False)
    assert os.read(c.r, 100) == b"three\nfour\n"


def test_collect_term_is_passed_on_to_a_logger_that_does_not_finish(collect, tmp_path):
    """A second TERM is passed on at once: a logger stuck on a full disk is stopped."""
    c = collect("--listen", f"127.0.0.1:{free_port()}",
                FAKE_LOGGER_HOLD=str(tmp_path / "never"))
    wait_for("the logger's handlers", c.ready.exists)
    c.write(b"line\n")
    c.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the first TERM alone does not stop it
    assert c.proc.poll() is None
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(TIMEOUT_S) == 0
    assert c.signals.read_text().split() == ["SIGTERM"]


@pytest.mark.parametrize("logger, close_input, status", [
    (["sh", "-c", "cat >/dev/null; exit 7"], True, 7),  # its status at the end of input
    (["sh", "-c", "exit 3"], False, 3),  # it ended on its own: so does collect
    (["sh", "-c", "kill -USR1 $$; sleep 30"], False, 128 + signal.SIGUSR1),
])
def test_collect_exits_with_the_loggers_status(collect, tmp_path, logger, close_input, status):
    """collect's status is the logger's, 128+N when signal N killed it (as sh says)."""
    c = collect("--textfile", str(tmp_path / "m.prom"), logger=logger)
    if close_input:
        assert c.close() == status
    else:
        assert c.proc.wait(TIMEOUT_S) == status


def test_collect_forwarded_signal_that_kills_the_logger_is_its_status(collect, tmp_path):
    """USR1 is passed on; cat dies of it; collect exits 128+10."""
    c = collect("--textfile", str(tmp_path / "m.prom"), logger=["cat"])
    c.write(b"a line\n")
    wait_for("the textfile", (tmp_path / "m.prom").exists)
    c.proc.send_signal(signal.SIGUSR1)
    assert c.proc.wait(TIMEOUT_S) == 128 + signal.SIGUSR1


def test_collect_logger_that_cannot_start_is_111(tmp_path):
    """A logger that is not there: exit 111 with the reason, as the wrapper's spawn."""
    proc = subprocess.run([*wrapper_argv(), "collect", "--textfile", str(tmp_path / "m.prom"),
                           "--", str(tmp_path / "no-such-logger")],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 111
    assert proc.stderr.decode() == (f"supervise-smtp collect: fatal: unable to spawn "
                                    f"{tmp_path / 'no-such-logger'}: No such file or directory\n")


@pytest.mark.parametrize("args, message", [
    (["--", "cat"], "--textfile or --listen wanted"),
    (["--textfile", "x.prom"], "no logger to run"),
    (["--bogus", "--", "cat"], "unknown option --bogus"),
    (["--listen", "localhost:9100", "--", "cat"], "not a numeric address"),
    (["--listen", "127.0.0.1:99999", "--", "cat"], "ADDR:PORT wanted"),
    (["--interval", "5", "--listen", ":9100", "--", "cat"], "--interval without --textfile"),
    (["--textfile", "x.prom", "--interval", "0", "--", "cat"], "--interval wants seconds"),
    (["--textfile"], "--textfile needs a value"),
])
def test_collect_usage_errors_exit_100(args, message):
    """A bad command line is exit 100 before anything runs."""
    proc = subprocess.run([*wrapper_argv(), "collect", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 100
    assert proc.stderr.decode().startswith("supervise-smtp collect: fatal: ")
    assert message in proc.stderr.decode()


def test_collect_unwritable_textfile_never_stops_the_log(collect, tmp_path):
    """A textfile that cannot be written: one warning on stderr, every line still logged;
    once the directory exists the textfile appears, with everything counted."""
    prom = tmp_path / "later" / "m.prom"
    c = collect("--textfile", str(prom), "--interval", "0.1")
    wait_for("the warning", lambda: "warning" in c.stderr())
    lines = b"".join(summary() for _ in range(50))
    c.write(lines)
    wait_for("the lines", lambda: c.logged() == lines)
    time.sleep(0.35)  # several intervals go by: still one warning
    assert c.stderr() == (f"supervise-smtp collect: warning: unable to write {prom}: "
                          f"No such file or directory; retrying every 0.1 s\n")
    prom.parent.mkdir()
    got = wait_for("the textfile", lambda: read_counters(prom))
    assert got['supervise_smtp_connections_total{stage="quit",verdict="ok"}'] == 50
    assert c.close() == 0
    assert c.stderr().endswith(f"supervise-smtp collect: info: wrote {prom} again\n")


def _http(port: int, method: str = "GET", path: str = "/metrics") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _scrape(port: int) -> dict[str, float]:
    try:
        status, _, body = _http(port)
    except OSError:
        return {}
    return counters(body.decode()) if status == 200 else {}


def test_collect_listen_serves_metrics_and_blocks_rather_than_drops(collect, tmp_path):
    """/metrics over HTTP, answered even while a stuck logger holds the relay back; the
    writer is held back (the pipe fills) instead of lines being dropped, and every
    byte arrives once the logger reads again."""
    port = free_port()
    hold = tmp_path / "go"
    c = collect("--listen", f"127.0.0.1:{port}", FAKE_LOGGER_HOLD=str(hold))
    wait_for("the listener", lambda: _scrape(port))
    status, headers, body = _http(port)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert _http(port, "HEAD")[::2] == (200, b"")
    assert _http(port, "GET", "/nope")[0] == 404
    assert _http(port, "POST")[0] == 405

    line = summary()
    os.set_blocking(c.w, False)
    sent = 0
    try:  # fill every pipe between us and the stuck logger
        while True:
            sent += os.write(c.w, line)
    except BlockingIOError:
        pass
    os.set_blocking(c.w, True)
    assert sent < 256 * 1024  # held back: collect does not read (and buffer) without end
    counted = _scrape(port)['supervise_smtp_connections_total{stage="quit",verdict="ok"}']
    assert 0 < counted < sent / len(line)  # what it read is counted; the rest waits
    hold.touch()
    rest = line * 2000
    c.write(rest)
    assert c.close() == 0
    assert sent % len(line) == 0  # a write under PIPE_BUF goes in whole or not at all
    assert c.logged() == line * (sent // len(line)) + rest


def test_collect_listen_port_taken_still_logs(collect):
    """A port it cannot bind is one warning, and the lines keep flowing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        c = collect("--listen", f"127.0.0.1:{port}")
        c.write(summary())
        wait_for("the line", lambda: c.logged() == summary())
        assert c.close() == 0
    err = c.stderr()
    assert err.count("\n") == 1 and f"unable to listen on 127.0.0.1:{port}" in err
    assert os.strerror(errno.EADDRINUSE) in err


@pytest.mark.parametrize("supervisor", ["daemontools", "runit", "s6"])
def test_collect_shipped_log_run_line_runs_the_same_logger(supervisor, tmp_path):
    """Each shipped log/run carries a commented-out collect line that, switched on, is
    valid sh and runs the very logger command of the active line behind collect."""
    import shlex

    path = Path(__file__).resolve().parents[2] / supervisor / "qmail-smtpd" / "log" / "run"
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("#exec "))
    end = start + 1
    while lines[end - 1].rstrip("\n").endswith("\\"):
        end += 1
    switched = lines[:start] + [line[1:] for line in lines[start:end]] + lines[end:]
    script = tmp_path / "run"
    script.write_text("".join(switched))
    assert subprocess.run(["sh", "-n", str(script)], timeout=TIMEOUT_S).returncode == 0
    collect_cmd = shlex.split("".join(line[1:] for line in lines[start:end]).replace("\\\n", ""))
    active = shlex.split(lines[end])
    assert active[0] == collect_cmd[0] == "exec"
    switch = active.index("$LOGUSER") + 1  # chpst -u, setuidgid, s6-setuidgid
    assert collect_cmd[:switch] == active[:switch]
    assert collect_cmd[switch:switch + 3] == ["/usr/local/bin/supervise-smtp", "collect",
                                              "--textfile"]
    assert collect_cmd[collect_cmd.index("--") + 1:] == active[switch:]
