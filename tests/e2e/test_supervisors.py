"""The shipped service dirs under the real daemontools, runit and s6.

Each test copies ``daemontools/qmail-smtpd``, ``runit/qmail-smtpd`` or
``s6/qmail-smtpd`` into its own temporary directory, rewrites the settings
(env files or conf) to point at the test double ``fake-qmail-smtpd``, the
wrapper under test, a free port on 127.0.0.1 and uid/gid 0, and starts the
supervisor as an ordinary process in a new session: ``supervise`` twice (the
service and its log, joined by a pipe as svscan does), ``runsv`` (which
starts ``log/`` itself) or ``s6-svscan`` on a one-service scan dir.  Every
process started carries a marker in its environment, so teardown finds and
kills all of them (tcpserver and its children included, reparented or not)
and the restart tests can prove that nothing was left behind.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import need
from helpers import STAMPS, Service, free_port, marked_processes, swaks
from helpers import poll_until as _poll

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
CORPUS = REPO / "tests" / "fixtures" / "runscripts"
RESTART = {
    "daemontools": ["svc", "-t"],
    "runit": ["sv", "term"],
    "s6": ["s6-svc", "-t"],
}
BINARIES = {
    "daemontools": ["supervise", "svc", "multilog", "envdir", "setuidgid", "softlimit"],
    "runit": ["runsv", "sv", "svlogd", "chpst", "softlimit"],
    "s6": ["s6-svscan", "s6-supervise", "s6-svc", "s6-log", "s6-envdir", "s6-setuidgid",
           "s6-softlimit"],
}


def _wrapper_program(wrapper: list[str], tmp: Path) -> str:
    """An absolute path that runs the wrapper (a shim when it is ``python -m``)."""
    if len(wrapper) == 1:
        return wrapper[0]
    shim = tmp / "supervise-smtp"
    shim.write_text(f"#!/bin/sh\nexec {shlex.join(wrapper)} \"$@\"\n")
    shim.chmod(0o755)
    return str(shim)


def _settings(tmp: Path, port: int, wrapper: str) -> dict[str, str]:
    """Service settings pointing at the fakes, the wrapper and the temp dir."""
    control = tmp / "control"
    control.mkdir()
    (control / "me").write_text("mx.test\n")
    queue = tmp / "queue"
    queue.mkdir()
    cdb = tmp / "tcp.cdb"
    subprocess.run(["tcprules", str(cdb), str(tmp / "tcp.tmp")], input=b":allow\n",
                   check=True, capture_output=True)
    return {
        "SUPERVISE_SMTP": wrapper,
        "SMTPD": str(FAKES / "fake-qmail-smtpd"),
        # the test double is Python too: qmail-smtpd's 24 MB would not start it
        "SOFTLIMIT": "500000000",
        "MAXSMTPD": "10",
        "QMAILDUID": "0",
        "NOFILESGID": "0",
        "IP": "127.0.0.1",
        "PORT": str(port),
        "LOCALNAME": "0",
        "TCPRULES": str(cdb),
        "QMAILQUEUE": str(FAKES / "fake-qmail-queue"),
        "FAKE_QUEUE_DIR": str(queue),
        "FAKE_QMAIL_CONTROL": str(control),
    }


def _write_envdir(directory: Path, values: dict[str, str]) -> None:
    for name, value in values.items():
        (directory / name).write_text(value + "\n")


def _write_conf(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))


@pytest.fixture
def service(tmp_path: Path, wrapper: list[str],
            subreaper: None) -> Iterator[Callable[[str], Service]]:
    """Factory: the shipped service dir of a suite, configured and started."""
    started: list[Service] = []

    def make(suite: str, extra: dict[str, str] | None = None) -> Service:
        for binary in ["tcpserver", "tcprules", *BINARIES[suite]]:
            need(binary)
        port = free_port()
        scan = tmp_path / "scan"
        scan.mkdir()
        svc = scan / "qmail-smtpd"
        shutil.copytree(REPO / suite / "qmail-smtpd", svc, symlinks=True)
        values = _settings(tmp_path, port, _wrapper_program(wrapper, tmp_path))
        values.update(extra or {})
        log_values = {"LOGUSER": "root", "LOGDIR": "./main"}
        if suite == "runit":
            _write_conf(svc / "conf", values)
            _write_conf(svc / "log" / "conf", log_values)
        else:
            _write_envdir(svc / "env", values)
            _write_envdir(svc / "log" / "env", log_values)
        srv = Service(suite, tmp_path, svc, port)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()
        assert marked_processes(srv.mark) == {}, "processes left behind"


def _swaks(port: int) -> str:
    return swaks(need("swaks"), port, "--to", "rcpt@example.org",
                 "--header", "Subject: supervisors e2e", "--body", "hello")


def _bare_lf(port: int) -> bytes:
    """An SMTP session whose DATA holds a bare LF; returns the server's last reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        for line, code in ((b"HELO client.test", b"250"), (b"MAIL FROM:<a@example.com>", b"250"),
                           (b"RCPT TO:<b@example.org>", b"250"), (b"DATA", b"354")):
            s.sendall(line + b"\r\n")
            reply = f.readline()
            assert reply.startswith(code), reply
        s.sendall(b"Subject: bare\r\n\r\nline one\nline two\r\n.\r\n")
        reply = f.readline()
        assert f.read() == b""  # qmail-smtpd exits after the 451
        return reply


def _serves(srv: Service) -> None:
    """A message is accepted and a bare-LF one rejected, and the log says so."""
    srv.banner()
    out = _swaks(srv.port)
    assert re.search(r"^<-  250 ok \d+ qp \d+", out, re.M), out
    assert _bare_lf(srv.port) == b"451 See http://pobox.com/~djb/docs/smtplf.html.\r\n"
    stamp = STAMPS[srv.suite]
    exit1 = srv.wait_log(rf"^{stamp}event=child_exit remote=127\.0\.0\.1 pid=(\d+) .*\bexit=1\b")
    pid = exit1.group(1)
    srv.wait_log(rf"^{stamp}event=connect remote=127\.0\.0\.1 pid={pid} ")
    srv.wait_log(rf"^{stamp}event=disconnect remote=127\.0\.0\.1 pid={pid} .*\bexit=1\b")
    srv.wait_log(rf"^{stamp}event=child_exit remote=127\.0\.0\.1 pid=\d+ .*\bexit=0\b")
    srv.wait_log(rf"^{stamp}tcpserver: end {pid} status 256$")


def _restarts(srv: Service) -> None:
    """The suite's restart command gives a new tcpserver that still serves."""
    (old,) = _poll("one tcpserver", srv.tcpservers)  # type: ignore[misc]
    subprocess.run([*RESTART[srv.suite], str(srv.svc)], check=True, env=srv.env,
                   capture_output=True, timeout=10)
    new = _poll("a new tcpserver", lambda: [p for p in srv.tcpservers() if p != old])
    assert old not in marked_processes(srv.mark)
    srv.banner()
    assert _swaks(srv.port)
    assert srv.tcpservers() == new
    # the last connection's wrapper may still be writing its summary: give it time to end
    def connection_leftovers() -> set[str]:
        return {c for c in marked_processes(srv.mark).values()
                if "python" in c or "fake" in c or "supervise-smtp" in c}
    _poll("the connection processes to end", lambda: not connection_leftovers(), timeout=10)


@pytest.mark.parametrize("suite", ["daemontools", "runit", "s6"])
def test_service_dir_serves_and_logs(service, suite):
    """The shipped service dir serves mail, rejects bare LF, and logs stamped events
    (SERVE_OPTS, serve's own options, never reach the wrapper, which would refuse them)."""
    _serves(service(suite, {"SERVE_OPTS": "--drain 5"}))


@pytest.mark.parametrize("suite", ["daemontools", "runit", "s6"])
def test_service_dir_restarts_cleanly(service, suite):
    """svc -t / sv term / s6-svc -t restart tcpserver with no process left behind."""
    srv = service(suite)
    srv.banner()
    _restarts(srv)


DOWN = {"runit": ["sv", "down"], "daemontools": ["svc", "-d"], "s6": ["s6-svc", "-d"]}


@pytest.mark.parametrize("suite", ["daemontools", "runit", "s6"])
def test_service_dir_with_serve_1(service, suite):
    """SERVE=1 in the shipped dir's settings (runit's conf, env/SERVE for daemontools and
    s6): supervise-smtp serve in tcpserver's place under the real supervisor and logger;
    a message is delivered, the session's lines and the parent's (-v) reach the log, and
    taking the service down stops serve (exit 0, the port closed)."""
    srv = service(suite, {"SERVE": "1", "SERVE_OPTS": "--drain 5"})
    srv.banner()
    (parent,) = _poll("one serve parent", srv.serves)  # type: ignore[misc]
    assert srv.tcpservers() == []
    out = _swaks(srv.port)
    assert re.search(r"^<-  250 ok \d+ qp \d+", out, re.M), out
    stamp = STAMPS[suite]
    srv.wait_log(rf"^{stamp}event=listen pid={parent} local=127\.0\.0\.1 "
                 rf"local_port={srv.port} limit=10 ")
    summary = srv.wait_log(rf"^{stamp}event=summary remote=127\.0\.0\.1 pid=(\d+) "
                           r"verdict=ok .*\bqueued=yes reply_delivered=yes .*\bexit=0$")
    worker = summary.group(1)
    srv.wait_log(rf"^{stamp}event=connect remote=127\.0\.0\.1 pid={worker} ")
    srv.wait_log(rf"^{stamp}event=child_exit remote=127\.0\.0\.1 pid={worker} .*\bexit=0\b")
    srv.wait_log(rf"^{stamp}event=end remote=127\.0\.0\.1 pid={worker} status=0 ")
    assert "tcpserver:" not in srv.log()
    subprocess.run([*DOWN[suite], str(srv.svc)], check=True, env=srv.env,
                   capture_output=True, timeout=10)
    _poll("serve to stop", lambda: not srv.serves())
    srv.wait_log(rf"^{stamp}event=stop signal=SIGTERM active=0 drain_s=5\.0")  # SERVE_OPTS
    if suite == "runit":
        def status() -> str:
            return subprocess.run(["sv", "status", str(srv.svc)], env=srv.env,
                                  capture_output=True, text=True, timeout=10).stdout

        # runsv notices its child's exit a moment after the process is gone
        _poll("sv status down", lambda: status().startswith("down: "))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()


def test_wraprun_corpus_script_serves_under_runsv(tmp_path, wrapper, subreaper):
    """A corpus run script wrapped by wrap-run starts under runsv and serves a session."""
    for binary in ("runsv", "svlogd", "chpst", "softlimit", "tcpserver", "tcprules"):
        need(binary)
    port = free_port()
    svc = tmp_path / "scan" / "qmail-smtpd"
    (svc / "log").mkdir(parents=True)
    values = _settings(tmp_path, port, _wrapper_program(wrapper, tmp_path))
    # wrap-run knows qmail-smtpd by name: the fake goes in under that name
    (tmp_path / "bin").mkdir()
    smtpd = tmp_path / "bin" / "qmail-smtpd"
    smtpd.symlink_to(values["SMTPD"])
    run = (CORPUS / "runit-conf" / "run").read_text()
    run = run.replace("/var/qmail/bin/qmail-smtpd", str(smtpd)).replace(
        "/etc/tcp.smtp.cdb", values["TCPRULES"])
    (svc / "run").write_text(run)
    (svc / "run").chmod(0o755)
    # the corpus script sources ./conf without set -a: export explicitly
    (svc / "conf").write_text("".join(f"export {k}={shlex.quote(v)}\n"
                                      for k, v in values.items()))
    shutil.copy(REPO / "runit" / "qmail-smtpd" / "log" / "run", svc / "log" / "run")
    (svc / "log" / "conf").write_text("LOGUSER=root\n")
    wrap = subprocess.run([*wrapper, "wrap-run", str(svc / "run"), "--yes", "--wrapper",
                           values["SUPERVISE_SMTP"]], capture_output=True, timeout=30)
    assert wrap.returncode == 0, wrap.stderr
    assert (svc / "run.bak-supervise-smtp").read_text() == run
    assert subprocess.run(["sh", "-n", str(svc / "run")]).returncode == 0
    srv = Service("runit", tmp_path, svc, port)
    try:
        srv.start()
        srv.banner()
        out = _swaks(port)
        assert re.search(r"^<-  250 ok \d+ qp \d+", out, re.M), out
        srv.wait_log(rf"^{STAMPS['runit']}event=disconnect remote=127\.0\.0\.1 .*\bexit=0\b")
    finally:
        srv.stop()
    assert marked_processes(srv.mark) == {}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
