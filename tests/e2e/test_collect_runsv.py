"""collect as the log service of a real runsv, in front of a real svlogd.

The lines are real: three supervise-smtp sessions under a real tcpserver
(a message queued, a bare-LF reject, a client gone after EHLO), whose
stderr (tcpserver's lines and the wrapper's) is then written into the
service's log pipe by the service itself (``cat`` of a FIFO, the service's
stdout being runsv's pipe to ./log).  ./log/run is the shipped
runit/qmail-smtpd/log/run with its commented-out collect line switched on:
``chpst -u LOGUSER supervise-smtp collect --textfile F -- svlogd -tt ./main``.
Checked: ``current`` holds every line unchanged after svlogd's timestamp,
the textfile parses with prometheus-client's parser and has the counts the
strict reader finds in the same lines, ``sv alarm`` makes svlogd rotate and
``sv hup`` makes it reread its config (both signals go to collect, which
passes them on), and ``sv term`` in the middle of a stream loses no line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need
from helpers import SMTPD, SmtpClient, double_env, events, wrapper_argv
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHIPPED_TEXTFILE = "/var/lib/prometheus/node-exporter/supervise_smtp.prom"
STAMP = re.compile(rb"^\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d\.\d{5} ", re.M)
TIMEOUT_S = 20.0


def _poll(what: str, fn: Callable[[], object], timeout: float = TIMEOUT_S) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _sessions(tcpserver, wrapper, tmp_path: Path) -> bytes:
    """What three real sessions write on tcpserver's stderr (the service's log stream)."""
    server = tcpserver([*wrapper, "--", SMTPD], env=double_env(tmp_path))
    c = SmtpClient(server)
    assert c.message()[0] == 250
    c.cmd(b"QUIT", 221)
    c.close()
    c = SmtpClient(server)
    assert c.message(b"bare\nLF body\r\n")[0] == 451
    c.close()
    c = SmtpClient(server)
    assert c.reply()[0] == 220
    c.cmd(b"EHLO client.test", 250)
    c.hang_up()
    server.end_statuses(3)
    log = server.log().encode()
    assert log.endswith(b"\n")
    return log


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data`` into the FIFO (a write to a pipe may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _counters(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _logged(main: Path) -> bytes:
    """Every line svlogd wrote (rotated files, oldest first, then current), unstamped."""
    files = sorted(main.glob("@*")) + [main / "current"]
    data = b"".join(f.read_bytes() for f in files if f.exists())
    return STAMP.sub(b"", data)


class Runsv:
    """``runsv DIR`` in its own session; stopped with ``sv exit``, then killed if need be."""

    def __init__(self, service: Path) -> None:
        self.service = service
        self.proc = subprocess.Popen(["runsv", str(service)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def sv(self, *args: str) -> None:
        subprocess.run(["sv", *args], check=True, capture_output=True, timeout=TIMEOUT_S)

    def pid(self, which: str) -> int:
        """The pid runsv reports for the service or its log, once it is up."""
        def up() -> int:
            try:
                return int((self.service / which / "supervise" / "pid").read_text() or 0)
            except (FileNotFoundError, ValueError):
                return 0
        return int(_poll(f"{which} up", up))

    def stop(self) -> None:
        subprocess.run(["sv", "exit", str(self.service), str(self.service / "log")],
                       capture_output=True, timeout=TIMEOUT_S)
        try:
            self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
        self.proc.wait(TIMEOUT_S)


def shipped_collect_line(log_run: str) -> str:
    """The shipped log/run with its commented-out collect line switched on."""
    lines = log_run.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("#exec "))
    end = start + 1
    while lines[end - 1].rstrip("\n").endswith("\\"):
        end += 1
    lines[start:end] = [line[1:] for line in lines[start:end]]
    return "".join(lines)


@pytest.fixture
def runsv_service(tmp_path):
    """A runit service dir: ./run cats a FIFO to runsv's log pipe; ./log/run is the shipped
    runit/qmail-smtpd/log/run with its collect line switched on (LOGUSER root)."""
    for binary in ("runsv", "sv", "svlogd", "chpst"):
        need(binary)
    service = tmp_path / "svc"
    (service / "log" / "main").mkdir(parents=True)
    os.mkfifo(service / "feed")
    run = service / "run"
    run.write_text("#!/bin/sh\nexec 2>&1\nexec cat 0<>./feed\n")
    prom = tmp_path / "textfile" / "supervise_smtp.prom"
    prom.parent.mkdir()
    shipped = shipped_collect_line((REPO / "runit" / "qmail-smtpd" / "log" / "run").read_text())
    assert shipped.count("/usr/local/bin/supervise-smtp collect") == 1
    assert shipped.count(SHIPPED_TEXTFILE) == 1
    log_run = service / "log" / "run"
    log_run.write_text(shipped.replace("/usr/local/bin/supervise-smtp", " ".join(wrapper_argv()))
                       .replace(SHIPPED_TEXTFILE, f"{prom} --interval 0.1"))
    (service / "log" / "conf").write_text("LOGUSER=root\n")
    run.chmod(0o755)
    log_run.chmod(0o755)
    supervisor = Runsv(service)
    try:
        supervisor.pid("log")
        supervisor.pid(".")
        yield supervisor, service, prom
    finally:
        supervisor.stop()


def test_collect_runsv_svlogd_lines_counters_and_signals(runsv_service, tcpserver, wrapper,
                                                         tmp_path):
    """Real session lines through runsv's pipe, collect and svlogd: unchanged in current,
    counted in the textfile; sv alarm and sv hup reach svlogd through collect."""
    supervisor, service, prom = runsv_service
    main = service / "log" / "main"
    log = _sessions(tcpserver, wrapper, tmp_path)
    want = Counter((e["verdict"], e["stage"]) for e in events(log) if e["event"] == "summary")
    assert set(want) == {("ok", "quit"), ("bare_lf", "data_end"),
                         ("client_lost_after_ehlo", "ehlo")}

    with open(service / "feed", "wb", buffering=0) as feed:
        _write_all(feed.fileno(), log)
        _poll("the lines in current", lambda: _logged(main) == log)
        assert all(STAMP.match(line) for line in (main / "current").read_bytes().splitlines(
            keepends=True))

        def counted() -> dict[tuple[str, str], float]:
            return {(dict(labels)["verdict"], dict(labels)["stage"]): value
                    for (name, labels), value in _counters(prom).items()
                    if name == "supervise_smtp_connections_total" and value}

        _poll("the counters", lambda: counted() == want)
        got = _counters(prom)
        assert got[("supervise_smtp_bare_lf_total", ())] == 1
        assert got[("supervise_smtp_replies_total", (("code", "451"),))] == 1
        assert got[("supervise_smtp_queue_exit_total", (("class", "success"),))] == 1
        assert got[("supervise_smtp_session_duration_seconds_count", ())] == 3
        assert got[("supervise_smtp_summaries_unreadable_total", ())] == 0
        assert prom.stat().st_mode & 0o777 == 0o644

        # sv alarm: svlogd rotates current into an @....s file
        supervisor.sv("alarm", str(service / "log"))
        rotated = _poll("a rotated file", lambda: sorted(main.glob("@*.s")))
        assert STAMP.sub(b"", rotated[0].read_bytes()) == log

        # sv hup: svlogd rereads ./main/config; a prefix set there shows from then on
        (main / "config").write_text("pPFX:\n")
        supervisor.sv("hup", str(service / "log"))
        deadline = time.monotonic() + TIMEOUT_S
        while b"PFX:" not in (main / "current").read_bytes():
            _write_all(feed.fileno(), b"after hup\n")  # svlogd rereads the config at its own pace
            assert time.monotonic() < deadline, "svlogd never used the new config"
            time.sleep(0.05)
        (main / "config").unlink()
        assert supervisor.pid("log") > 0  # collect itself was never restarted


def test_collect_runsv_sv_term_loses_no_line(runsv_service):
    """sv term while a stream is held back by svlogd: collect hands svlogd what it read and
    closes its input; runsv starts a new log service on the same pipe: every line, once,
    in order (passing the TERM on at once would lose what was in flight)."""
    supervisor, service, _prom = runsv_service
    main = service / "log" / "main"
    (main / "config").write_text("s0\n")  # no rotation by size: every line stays
    first = supervisor.pid("log")
    lines = [b"line %06d %s\n" % (i, b"x" * (i % 300)) for i in range(30000)]
    done = threading.Event()

    def write() -> None:
        with open(service / "feed", "wb", buffering=0) as feed:
            for i in range(0, len(lines), 100):
                _write_all(feed.fileno(), b"".join(lines[i:i + 100]))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    _poll("lines flowing", lambda: b"line 001000" in _logged(main))
    supervisor.sv("term", str(service / "log"))
    assert not done.is_set(), "the stream ended before the TERM: nothing was in flight"
    _poll("a new log service", lambda: supervisor.pid("log") != first)
    writer.join(TIMEOUT_S)
    assert done.is_set()
    _poll("every line", lambda: _logged(main).count(b"\n") >= len(lines))
    assert _logged(main) == b"".join(lines)
