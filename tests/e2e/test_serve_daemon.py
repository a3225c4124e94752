"""``serve --daemon --pidfile F --logfile F``: detached, pidfile, log file, SIGTERM.

The command returns at once (exit 0) and the pidfile names a live process,
not the one we started: it accepts SMTP (the fake qmail-smtpd behind it),
its working directory is / and its umask 022, its lines (and its sessions')
are appended to the log file, created 0600; SIGTERM to the pid stops it and
the pidfile goes.  A second start on a live pidfile is refused (111).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import events, recv_until_eof, wrapper_argv

pytestmark = pytest.mark.e2e

FAKE_SMTPD = str(Path(__file__).resolve().parents[1] / "fakes" / "fake-qmail-smtpd")


def _wait_for(check, timeout: float = 15.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {check}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pid_in(pidfile: Path) -> str:
    """The pid the pidfile names; "" while there is none (removed, or not written yet)."""
    try:
        return pidfile.read_text().strip()
    except FileNotFoundError:
        return ""


def _start(tmp_path: Path, pidfile: Path, logfile: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*wrapper_argv(), "serve", "-v", "-R", "-H", "-l", "0", "--daemon",
         "--pidfile", str(pidfile), "--logfile", str(logfile), "-1", "127.0.0.1", "0",
         FAKE_SMTPD], cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
        timeout=30)


def test_daemon_pidfile_logfile_sigterm(tmp_path: Path) -> None:
    pidfile, logfile = tmp_path / "serve.pid", tmp_path / "serve.log"
    started = _start(tmp_path, pidfile, logfile)
    assert started.returncode == 0, started.stderr
    port = int(started.stdout)
    pid = int(_wait_for(lambda: _pid_in(pidfile)))
    try:
        assert _alive(pid)
        assert os.getsid(pid) != os.getsid(0)  # its own session: detached from ours
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        status = Path(f"/proc/{pid}/status").read_text()
        assert "Umask:\t0022" in status
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            banner = sock.recv(512)
            assert banner.startswith(b"220 "), banner
            sock.sendall(b"QUIT\r\n")
            assert recv_until_eof(sock).startswith(b"221 ")
        _wait_for(lambda: any(e["event"] == "end" for e in events(logfile.read_text())))
        assert stat.S_IMODE(logfile.stat().st_mode) == 0o600
        names = [e["event"] for e in events(logfile.read_text())]
        assert names[0] == "listen" and "summary" in names and "end" in names
        again = _start(tmp_path, pidfile, tmp_path / "other.log")
        assert again.returncode == 111
        assert f"already running as pid {pid}".encode() in again.stderr
        os.kill(pid, signal.SIGTERM)
        _wait_for(lambda: not _alive(pid))
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not pidfile.exists()
    stop = events(logfile.read_text())[-1]
    assert stop["event"] == "stop" and stop["signal"] == "SIGTERM"


def test_daemon_replaces_a_stale_pidfile(tmp_path: Path) -> None:
    pidfile, logfile = tmp_path / "serve.pid", tmp_path / "serve.log"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n")
    started = _start(tmp_path, pidfile, logfile)
    assert started.returncode == 0, started.stderr
    pid = int(_wait_for(lambda: _pid_in(pidfile) not in ("", str(dead.pid))
                        and _pid_in(pidfile)))
    try:
        assert _alive(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
        _wait_for(lambda: not _alive(pid))
    assert not pidfile.exists()


def test_pidfile_without_daemon_is_a_usage_error() -> None:
    run = subprocess.run([*wrapper_argv(), "serve", "--pidfile", "/tmp/x.pid", "0", "25",
                          "true"], capture_output=True, timeout=30)
    assert run.returncode == 100
    assert b"--pidfile and --logfile go with --daemon" in run.stderr
