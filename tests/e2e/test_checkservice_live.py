"""check-service on a service that runs: the shipped runit dir under the real runsv.

The port a running service holds is its own, not a conflict: runsv starts
``./run`` in the service dir, so the listening tcpserver (or serve, with
SERVE=1) has that directory as its working directory, and check-service
says so and exits 0.  Settings as in test_supervisors: the test double
qmail-smtpd, the wrapper under test, uid/gid 0 (the wrapper lives where
only root may reach it), a tcprules cdb, a free port on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import need
from helpers import free_port, recv_until_eof

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"


def _banner(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until the service answers with qmail-smtpd's banner (then QUIT)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "runsv exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if s.recv(512).startswith(b"220 "):
                    s.sendall(b"QUIT\r\n")
                    recv_until_eof(s, 5)
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no banner on port {port}"
        time.sleep(0.02)


def _listener_pid(port: int) -> int:
    """The pid holding the listening socket on ``port`` (via /proc, as root)."""
    from supervise_smtp.runscript.host import listeners

    (found,) = listeners(port)
    assert found.pid is not None
    return found.pid


@pytest.fixture
def runit_service(tmp_path: Path,
                  wrapper: list[str]) -> Iterator[Callable[[str], tuple[Path, int]]]:
    """Factory: the shipped runit dir, configured, under runsv, serving; SERVE as given."""
    for binary in ("runsv", "sv", "svlogd", "chpst", "softlimit", "tcpserver", "tcprules"):
        need(binary)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    started: list[tuple[Path, subprocess.Popen[bytes]]] = []

    def start(serve: str) -> tuple[Path, int]:
        svc = tmp_path / "qmail-smtpd"
        shutil.copytree(REPO / "runit" / "qmail-smtpd", svc)
        shim = tmp_path / "supervise-smtp"
        shim.write_text(f"#!/bin/sh\nexec {shlex.join(wrapper)} \"$@\"\n")
        shim.chmod(0o755)
        (tmp_path / "control").mkdir()
        (tmp_path / "control" / "me").write_text("mx.test\n")
        cdb = tmp_path / "tcp.smtp.cdb"
        subprocess.run([need("tcprules"), str(cdb), str(tmp_path / "tcp.tmp")],
                       input=b'127.:allow,RELAYCLIENT=""\n', check=True, capture_output=True)
        port = free_port()
        conf = {"SUPERVISE_SMTP": str(shim), "SMTPD": str(FAKES / "fake-qmail-smtpd"),
                "SOFTLIMIT": "500000000",  # the test double is Python too
                "QMAILDUID": "0", "NOFILESGID": "0", "IP": "127.0.0.1", "PORT": str(port),
                "TCPRULES": str(cdb), "FAKE_QMAIL_CONTROL": str(tmp_path / "control"),
                "SERVE": serve}
        with open(svc / "conf", "a") as fh:
            fh.write("".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()))
        (svc / "log" / "conf").write_text("LOGUSER=root\nLOGDIR=./main\n")
        proc = subprocess.Popen(["runsv", str(svc)], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        started.append((svc, proc))
        _banner(port, proc)
        return svc, port

    yield start
    for svc, proc in started:
        # sv exit: runsv stops the service and its log, reaps them, and exits
        subprocess.run(["sv", "exit", str(svc)], env=env, capture_output=True, timeout=10)
        try:
            proc.wait(timeout=10)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)


@pytest.mark.parametrize("serve", ["", "1"], ids=["tcpserver", "serve"])
def test_checkservice_passes_on_the_running_service(runit_service, wrapper, serve):
    """Under runsv, with the service up and serving, check-service exits 0 and names
    the listener as the service's own (tcpserver, or serve with SERVE=1)."""
    svc, port = runit_service(serve)
    run = subprocess.run([*wrapper, "check-service", str(svc)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout
    pid = _listener_pid(port)
    assert re.search(rf"^ok: run: 127\.0\.0\.1 port {port} is held by this service's own "
                     rf"\S+ \(pid {pid}\)$", run.stdout, re.M), run.stdout
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        cmdline = fh.read()
    assert (b" supervise-smtp serve: parent " in cmdline) == bool(serve), cmdline
    assert "warning: run: qmail-smtpd runs as uid 0" in run.stdout  # uid 0 here, said so
