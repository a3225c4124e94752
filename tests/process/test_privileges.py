"""Privilege and files: no root needed, -u/-g before any accept, our directories and files.

CI runs as root, so the unprivileged runs here are real: ``nobody``
(65534) under ``tcpserver -u``, serve's -u/-g read back from /proc, and
directories chown'ed to another uid.  What is checked:

- the per-connection wrapper runs as nobody under tcpserver (exec'd by the
  system's python3: this checkout's interpreter lives under /root, which
  nobody may not enter) and logs the right summary, its transcript 0600;
- serve switches to -u/-g (uid, gid, groups: all of them, saved ones
  too) before it accepts anything, and a session runs as that user;
- the capture, --state-dir and --pidfile directories are refused when
  group- or world-writable without the sticky bit, or owned by someone
  else than us, root (or -u's user, for the pidfile): a refused capture
  costs the transcript and one capture_error line, never the mail;
- every file we create is 0600 whatever the umask, and a symlink planted
  at its name is not followed;
- no client data makes a path: a transcript's name is built from the
  remote address, sanitized, never from HELO or anything said.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import in_ci
from helpers import event, events, recv_until_eof, wrapper_argv

from supervise_smtp.observer.events import Command
from supervise_smtp.session import capture as capture_mod
from supervise_smtp.session.alert import STATE_FILE, maybe_alert
from supervise_smtp.session.capture import Capture, filename_safe

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from benchlib import build_sink  # noqa: E402
from test_serve import Listener  # noqa: E402

NOBODY = 65534
NOGROUP = 65534
OTHER_GID = 65533  # -g's own group: distinct from nobody's, so a mix-up shows
STRANGER = 4242  # a uid that is neither us, nor root, nor nobody
SYSTEM_PYTHON = "/usr/bin/python3"
HOUR = 3600.0
CLIENT_SESSION = (b"EHLO ../../../etc/passwd\r\nMAIL FROM:<../../x@example.org>\r\n"
                  b"RCPT TO:<r@example.org>\r\nDATA\r\n")


@pytest.fixture
def root() -> None:
    """Root, to become nobody and to chown (CI runs as root)."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI must run as root")
        pytest.skip("needs root")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory nobody can traverse (tmp_path is 0700 under root), removed after."""
    path = Path(tempfile.mkdtemp(prefix="privileges-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def _dir(parent: Path, name: str, mode: int, owner: int = 0) -> Path:
    path = parent / name
    path.mkdir()
    os.chown(path, owner, -1)
    path.chmod(mode)
    return path


def _ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, filesystem) and Groups of ``pid``, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in value.split()]
    return out


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait_for(check, timeout: float = 15.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        time.sleep(0.02)
    return value


def _smtp(port: int) -> bytes:
    """A whole session against the C sink: banner, envelope, a body, QUIT; all it said."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(CLIENT_SESSION + b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        return recv_until_eof(sock)


# ---------------------------------------------------------------- no root needed


def test_wrapper_runs_as_nobody_under_tcpserver(root, public_dir, tcpserver, need):
    """tcpserver -u nobody: the wrapper relays, watches its child and logs the right summary;
    its transcript is nobody's, 0600, in nobody's directory."""
    need("cc")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} missing (python3-venv in scripts/bootstrap.sh)")
    sink = str(build_sink())
    cap = _dir(public_dir, "capture", 0o700, NOBODY)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    server = tcpserver([SYSTEM_PYTHON, "-m", "supervise_smtp", "--capture", str(cap), "--", sink],
                       env=env, opts=("-u", str(NOBODY), "-g", str(NOGROUP)))
    said = _smtp(server.port)
    assert said.endswith(b"250 ok\r\n221 bench.example\r\n"), said
    [(pid, status)] = server.end_statuses(1).items()
    assert status == 0, server.log()
    summary = event(server.log(), "summary")
    assert (summary["verdict"], summary["exit"], summary["commands"]) == ("ok", "0", "5")
    assert "wrapper_error" not in server.log()
    [transcript] = cap.iterdir()
    st = transcript.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o600)
    assert event(server.log(), "capture")["file"] == str(transcript)
    assert transcript.name.endswith(f"-127.0.0.1-{pid}.txt")


def test_serve_switches_user_before_accepting(root, public_dir, tmp_path, need):
    """-u/-g: the parent (and its spare workers) are that uid, gid and group only, every id
    of them (real, effective, saved), once it listens and before any client; a session runs."""
    need("cc")
    sink = str(build_sink())
    server = Listener("serve", ["-HR", "-l0", "-u", str(NOBODY), "-g", str(OTHER_GID)],
                      [sink], tmp_path)
    try:
        want = {"Uid": [NOBODY] * 4, "Gid": [OTHER_GID] * 4, "Groups": [OTHER_GID]}
        assert _ids(server.pid) == want  # the port is printed: bound, not one accept yet
        for worker in _wait_for(lambda: _children(server.pid)):
            assert _ids(worker) == want
        assert _smtp(server.port).endswith(b"221 bench.example\r\n")
        summary = _wait_for(lambda: [e for e in events(server.log())
                                     if e["event"] == "summary"])[0]
        assert summary["verdict"] == "ok", server.log()
    finally:
        server.stop()


# ---------------------------------------------------------------- our directories


@pytest.mark.parametrize("mode, owner, why", [
    (0o777, 0, "group- or world-writable without the sticky bit (mode 0777)"),
    (0o770, 0, "group- or world-writable without the sticky bit (mode 0770)"),
    (0o700, STRANGER, f"owned by uid {STRANGER}, not by us or root"),
], ids=["world-writable", "group-writable", "stranger's"])
def test_capture_refuses_a_directory_others_could_write(root, tmp_path, mode, owner, why):
    """No transcript in a directory another user could write: one error, nothing left."""
    cap = _dir(tmp_path, "capture", mode, owner)
    transcript = Capture(str(cap), 42, "192.0.2.1", None)
    transcript.event("<", Command(verb="QUIT"))
    assert transcript.finish("ok") is None
    assert transcript.error == f"refused: {cap} is {why}"
    assert list(cap.iterdir()) == []


@pytest.mark.parametrize("mode, owner", [(0o1777, 0), (0o755, 0), (0o700, NOBODY)],
                         ids=["sticky-tmp", "ours", "nobody's-for-nobody"])
def test_capture_accepts_a_private_or_sticky_directory(root, public_dir, mode, owner):
    """A sticky world-writable directory (as /tmp), root's, or our own as nobody: kept."""
    cap = _dir(public_dir, "capture", mode, owner)
    pid = os.fork()
    if pid == 0:  # as the directory's owner when it is nobody: the owner is "us" there
        code = 1
        try:
            if owner == NOBODY:
                os.setgroups([])
                os.setgid(NOGROUP)
                os.setuid(NOBODY)
            transcript = Capture(str(cap), 42, "192.0.2.1", None)
            transcript.event("<", Command(verb="QUIT"))
            code = 0 if transcript.finish("ok") else 2
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    [kept] = cap.iterdir()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert kept.stat().st_uid == owner


def test_capture_refused_never_costs_the_mail(root, tmp_path, need):
    """serve --capture on a world-writable directory: the session is served and summed up,
    with one capture_error naming the refusal, and no file is written there."""
    need("cc")
    cap = _dir(tmp_path, "capture", 0o777)
    server = Listener("serve", ["-HR", "-l0", "--capture", str(cap)], [str(build_sink())],
                      tmp_path)
    try:
        assert _smtp(server.port).endswith(b"250 ok\r\n221 bench.example\r\n")
        server.wait_for(r"^event=capture_error ")  # written after the summary
    finally:
        server.stop()
    assert event(server.log(), "summary")["verdict"] == "ok"
    error = event(server.log(), "capture_error")["error"]
    assert error == f"refused: {cap} is group- or world-writable without the sticky bit " \
                    "(mode 0777)"
    assert list(cap.iterdir()) == []


@pytest.mark.parametrize("mode, owner", [(0o777, 0), (0o700, STRANGER)],
                         ids=["world-writable", "stranger's"])
def test_alert_state_dir_others_could_write_is_refused(root, tmp_path, mode, owner):
    """--state-dir that another user could write: the alert is an error, no state written."""
    state = _dir(tmp_path, "state", mode, owner)
    prog = tmp_path / "alert.sh"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    result = maybe_alert(str(prog), None, (1, HOUR), str(state), "server_crashed", {}, False)
    assert result is not None and result["action"] == "error"
    assert str(result["error"]).startswith(f"refused --state-dir: {state} is ")
    assert list(state.iterdir()) == []


def _daemon(tmp_path: Path, pidfile: Path, logfile: Path, *opts: str,
            umask: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*wrapper_argv(), "serve", "-HR", "-l0", *opts, "--daemon", "--pidfile", str(pidfile),
         "--logfile", str(logfile), "-1", "127.0.0.1", "0", "true"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        preexec_fn=None if umask is None else lambda: os.umask(umask))


def _stop_daemon(pidfile: Path) -> int:
    pid = int(_wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: not Path(f"/proc/{pid}").exists()
              or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    return pid


@pytest.mark.parametrize("mode, owner, why", [
    (0o777, 0, "is group- or world-writable without the sticky bit (mode 0777)"),
    (0o755, STRANGER, f"is owned by uid {STRANGER}, not by us or root"),
], ids=["world-writable", "stranger's"])
def test_serve_daemon_refuses_a_pidfile_directory_others_could_write(root, tmp_path, mode,
                                                                     owner, why):
    """--pidfile in a directory another user could write: 111 before detaching, no pidfile."""
    run_dir = _dir(tmp_path, "run", mode, owner)
    started = _daemon(tmp_path, run_dir / "serve.pid", tmp_path / "serve.log")
    assert started.returncode == 111, started
    assert started.stderr == (b"supervise-smtp serve: fatal: refused pidfile directory: "
                              + f"{run_dir} {why}\n".encode())
    assert list(run_dir.iterdir()) == []


def test_serve_daemon_pidfile_directory_missing_is_111(tmp_path):
    """A pidfile directory that does not exist: 111 on the caller's terminal, not a daemon
    that dies after the caller was told all was well."""
    started = _daemon(tmp_path, tmp_path / "no" / "serve.pid", tmp_path / "serve.log")
    assert started.returncode == 111, started
    assert b"unable to use pidfile directory" in started.stderr


def test_serve_daemon_pidfile_directory_of_the_u_user(root, public_dir):
    """A pidfile directory owned by -u's user is trusted: the daemon runs as that user and,
    as that user, removes its pidfile at SIGTERM."""
    run_dir = _dir(public_dir, "run", 0o755, NOBODY)
    pidfile = run_dir / "serve.pid"
    started = _daemon(public_dir, pidfile, public_dir / "serve.log", "-u", str(NOBODY), "-g",
                      str(OTHER_GID))
    assert started.returncode == 0, started
    pid = int(_wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    # the pidfile is written as it detaches, before it binds and switches: wait
    _wait_for(lambda: _ids(pid)["Uid"] == [NOBODY] * 4)
    _stop_daemon(pidfile)
    _wait_for(lambda: not pidfile.exists())


# ---------------------------------------------------------------- our files


def test_files_are_0600_whatever_the_umask(root, tmp_path):
    """Under umask 0: a transcript, the alert state and serve's log file are all 0600."""
    old = os.umask(0)
    try:
        transcript = Capture(str(tmp_path / "capture"), 42, "192.0.2.1", None)
        transcript.event("<", Command(verb="QUIT"))
        path = transcript.finish("ok")
        prog = tmp_path / "alert.sh"
        prog.write_text("#!/bin/sh\n")
        prog.chmod(0o755)
        sent = maybe_alert(str(prog), None, (1, HOUR), str(tmp_path / "state"),
                           "server_crashed", {}, False)
    finally:
        os.umask(old)
    assert path is not None and sent is not None and sent["action"] == "sent"
    logfile = tmp_path / "serve.log"
    started = _daemon(tmp_path, tmp_path / "serve.pid", logfile, umask=0)
    assert started.returncode == 0, started
    _stop_daemon(tmp_path / "serve.pid")
    for made in (Path(path), tmp_path / "state" / STATE_FILE, logfile):
        assert stat.S_IMODE(made.stat().st_mode) == 0o600, made
    for made in (tmp_path / "capture", tmp_path / "state"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file a planted symlink points to: it must come out unchanged."""
    path = tmp_path / "victim"
    path.write_bytes(b"precious\n")
    path.chmod(0o644)
    return path


def _unchanged(victim: Path) -> None:
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_capture_never_writes_through_a_symlink(tmp_path, victim, monkeypatch):
    """Symlinks planted at a transcript's temporary name and at its final name: neither is
    followed; the transcript is a file of its own."""
    cap = tmp_path / "capture"
    cap.mkdir(mode=0o700)
    t0 = 1795604400.123456
    final = cap / "20261125T110000.123456-192.0.2.1-42.txt"
    final.symlink_to(victim)
    draws = iter([b"\x00" * 6])
    real = os.urandom
    monkeypatch.setattr(capture_mod.os, "urandom", lambda n: next(draws, None) or real(n))
    (cap / f".tmp-42-{'00' * 6}").symlink_to(victim)
    transcript = Capture(str(cap), 42, "192.0.2.1", None, clock=lambda: t0)
    transcript.event("<", Command(verb="QUIT"))
    assert transcript.finish("ok") == str(final)
    _unchanged(victim)
    assert not final.is_symlink() and b"< QUIT" in final.read_bytes()
    assert stat.S_IMODE(final.stat().st_mode) == 0o600


def test_alert_state_never_opened_through_a_symlink(tmp_path, victim):
    """A symlink planted at alert.state: the alert is an error, the target untouched."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / STATE_FILE).symlink_to(victim)
    prog = tmp_path / "alert.sh"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    result = maybe_alert(str(prog), None, (1, HOUR), str(state), "server_crashed", {}, False)
    assert result is not None and result["action"] == "error"
    _unchanged(victim)


@pytest.mark.parametrize("which", ["logfile", "pidfile"])
def test_serve_daemon_never_follows_a_planted_symlink(tmp_path, victim, which):
    """serve --daemon (root until -u) with a symlink at its log file or pidfile: 111 before
    detaching, and the file it points to is neither appended to nor removed."""
    pidfile, logfile = tmp_path / "serve.pid", tmp_path / "serve.log"
    link = logfile if which == "logfile" else pidfile
    link.symlink_to(victim)
    started = _daemon(tmp_path, pidfile, logfile)
    assert started.returncode == 111, started
    assert b"Too many levels of symbolic links" in started.stderr
    _unchanged(victim)
    assert link.is_symlink()


# ---------------------------------------------------------------- no path from client data


@pytest.mark.parametrize("remote", ["../../../etc/cron.d/x", "..", "/", "a/../../b",
                                    "\x00\n../", "x" * 300])
def test_capture_name_never_leaves_the_directory(tmp_path, remote):
    """Whatever the remote text, the transcript lands in the capture directory itself."""
    cap = tmp_path / "capture"
    transcript = Capture(str(cap), 42, remote, None)
    transcript.event("<", Command(verb="HELO", args=b"../../../etc/passwd"))
    path = Path(transcript.finish("ok") or "")
    assert path.parent == cap and "/" not in filename_safe(remote)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture"]
    assert [p.name for p in cap.iterdir()] == [path.name]


def test_capture_name_from_the_connection_not_from_what_the_client_says(tcpserver, wrapper,
                                                                         tmp_path, need):
    """Under tcpserver, a client saying ``EHLO ../../../etc/passwd`` and a sender with
    ``../``: one transcript, named after 127.0.0.1, in the capture directory, nothing else."""
    need("cc")
    cap = tmp_path / "capture"
    server = tcpserver([*wrapper, "--capture", str(cap), "--", str(build_sink())])
    assert _smtp(server.port).endswith(b"221 bench.example\r\n")
    [(pid, _)] = server.end_statuses(1).items()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["capture"]
    [transcript] = cap.iterdir()
    assert transcript.name.endswith(f"-127.0.0.1-{pid}.txt")
    assert b"EHLO ../../../etc/passwd" in transcript.read_bytes()
