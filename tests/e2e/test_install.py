"""scripts/install.sh, end to end: the installed command in front of SMTP under
each real supervisor, as the qmail users, and an upgrade that never breaks it.

What an operator does, on this machine: ``sh scripts/install.sh`` from the
checkout (a virtualenv from PyPI, as the README says) into a prefix, bindir
and mandir of a temporary directory that every user can read (a temporary
directory is 0700, and a checkout under a 0700 home would hide the files
from qmaild: everything qmaild and qmaill read goes under one 0755 place,
the qmail-smtpd test double and its queue program included).  The users
``qmaild`` and ``qmaill`` and the group ``nofiles`` are made as Life with
qmail makes them, when missing, and left for the next run.

Then the shipped service dirs (``runit/``, ``daemontools/``, ``s6/``), their
settings changed only where a test must (the installed command, the double,
its softlimit, address, port and rules; uid, gid, the log user and the log
directory stay the shipped defaults: ``id -u qmaild``, qmaill, ``./main``),
rules compiled by the real tcprules with ``127.:allow,RELAYCLIENT=""``, run
under runsv + svlogd, supervise + multilog, s6-svscan + s6-log.  A held
connection shows the installed wrapper and the double running as qmaild; a
message sent with swaks to a domain that only RELAYCLIENT lets through is
queued by a file qmaild owns, and its verdict is read back from the log,
written by a logger running as qmaill.

The upgrade test takes the offline road (``--build-wheels``, then the
copied install.sh with ``--wheel`` and no network) over that install: it
installs again while the command runs in a loop as qmaild, prunes an unused
older release but keeps one a process still runs, and refuses to uninstall
while it runs.  The module ends with ``--uninstall``, which must remove the
install and nothing else.  Every test leaves ``current`` runnable, so their
order does not matter.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import in_ci, need
from helpers import (
    STAMPS,
    Service,
    events,
    free_port,
    kill_group,
    marked_processes,
    poll_until,
    qmail_users,
    recv_until_eof,
    swaks,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install.sh"
FAKES = REPO / "tests" / "fakes"
BINARIES = {
    "runit": ["runsv", "svlogd", "chpst", "softlimit"],
    "daemontools": ["supervise", "multilog", "envdir", "setuidgid", "softlimit"],
    "s6": ["s6-svscan", "s6-supervise", "s6-log", "s6-envdir", "s6-setuidgid", "s6-softlimit"],
}
LOGGER = {"runit": "svlogd", "daemontools": "multilog", "s6": "s6-log"}
# A recipient outside control/rcpthosts: only the rules' RELAYCLIENT lets it in.
RELAY_RCPT = "rcpt@elsewhere.test"


def _need_root() -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI must run as root: the install test makes users")
        pytest.skip("needs root (it makes the qmaild and qmaill users)")


@dataclass(frozen=True)
class Installed:
    """Where install.sh was told to put things."""

    prefix: Path
    bindir: Path
    mandir: Path

    @property
    def command(self) -> Path:
        return self.bindir / "supervise-smtp"

    @property
    def man_page(self) -> Path:
        return self.mandir / "man8" / "supervise-smtp.8"

    def current(self) -> str:
        """The release ``current`` names (``releases/NAME``: NAME)."""
        target = os.readlink(self.prefix / "current")
        assert target.startswith("releases/"), target
        return target.removeprefix("releases/")

    def releases(self) -> set[str]:
        return {p.name for p in (self.prefix / "releases").iterdir()}

    def args(self) -> list[str]:
        return ["--prefix", str(self.prefix), "--bindir", str(self.bindir),
                "--mandir", str(self.mandir)]


def as_user(user: pwd.struct_passwd) -> list[str]:
    """argv prefix: run the rest as ``user`` (uid, primary gid, no other groups), started
    by a shell running as that user, as tcpserver's child starts it.  (setpriv's own exec
    of a program was seen to pass where the user's could not: under a 0700 /root.)"""
    return [need("setpriv"), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
            "--clear-groups", "/bin/sh", "-c", 'exec "$@"', "sh"]


def install_sh(script: Path, *args: str, env: dict[str, str] | None = None,
               status: int = 0) -> str:
    """Run an install.sh as an operator would (from /); its stderr, status checked."""
    run = subprocess.run(["sh", str(script), *args], capture_output=True, text=True,
                         env=env, cwd="/", timeout=600)
    assert run.returncode == status, f"exit {run.returncode}, want {status}: {run.stderr}"
    return run.stderr


@pytest.fixture(scope="module")
def qmail() -> dict[str, pwd.struct_passwd]:
    """qmaild and qmaill (group nofiles), made if missing."""
    _need_root()
    return qmail_users()


@pytest.fixture(scope="module")
def public(qmail: dict[str, pwd.struct_passwd]) -> Iterator[Path]:
    """A 0755 directory in a 0755 (or sticky 1777) parent: readable by qmaild and qmaill."""
    base = Path(tempfile.mkdtemp(prefix="ssmtp-install-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(public: Path) -> Iterator[Installed]:
    """One install from the checkout, as the README says, shared by the module's tests;
    at the end, --uninstall removes it and nothing else (a foreign file in bindir stays)."""
    where = Installed(public / "opt", public / "bin", public / "man")
    where.bindir.mkdir()
    (where.bindir / "other-tool").write_text("not ours\n")
    install_sh(INSTALL, *where.args())
    yield where
    said = install_sh(INSTALL, "--uninstall", *where.args())
    assert not where.prefix.exists(), said
    assert sorted(p.name for p in where.bindir.iterdir()) == ["other-tool"], said
    assert not where.man_page.exists() and not where.man_page.is_symlink(), said
    assert not where.mandir.exists(), said  # man/man8, made for the link: gone with it
    assert "nothing installed" in install_sh(INSTALL, "--uninstall", *where.args())


@dataclass(frozen=True)
class Double:
    """The qmail-smtpd test double and its queue program, where qmaild can run them."""

    smtpd: Path
    queue: Path
    control: Path


@pytest.fixture(scope="module")
def double(public: Path) -> Double:
    fakes = public / "fakes"
    fakes.mkdir()
    for name in ("fake-qmail-smtpd", "fake-qmail-queue"):
        shutil.copy(FAKES / name, fakes / name)
        (fakes / name).chmod(0o755)
    control = public / "control"
    control.mkdir()
    (control / "me").write_text("mx.test\n")
    (control / "rcpthosts").write_text("example.org\n")
    return Double(fakes / "fake-qmail-smtpd", fakes / "fake-qmail-queue", control)


# -- the install itself -------------------------------------------------------------


def test_install_layout_is_runnable_by_qmaild(installed, qmail):
    """The command is the package's own launcher on the release's interpreter (no pip
    wrapper), byte-compiled and world-readable; man page and docs are in place; qmaild
    runs a session with it."""
    release = installed.prefix / "releases" / installed.current()
    assert os.readlink(installed.command) == str(installed.prefix / "current/bin/supervise-smtp")
    script = installed.command.read_text().splitlines()
    assert script[0] == f"#!{release}/bin/python"
    assert script[1:] == (REPO / "bin" / "supervise-smtp").read_text().splitlines()[1:]
    assert (release / "bin" / "python").resolve().is_relative_to("/usr")  # the system's

    site = next((release / "lib").glob("python3*/site-packages"))
    tag = subprocess.run([release / "bin" / "python", "-c",
                          "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    modules = sorted((site / "supervise_smtp").rglob("*.py"))
    assert modules
    for module in modules:
        pyc = module.parent / "__pycache__" / f"{module.stem}.{tag}.pyc"
        assert pyc.is_file(), f"{module} not compiled"
    for path in [release, *release.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        want = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        assert mode & want == want and not mode & (stat.S_IWGRP | stat.S_IWOTH), path

    assert installed.man_page.read_bytes() == (REPO / "docs" / "supervise-smtp.8").read_bytes()
    docs = installed.prefix / "current" / "share" / "doc" / "supervise-smtp"
    assert (docs / "verdicts.md").read_text() == (REPO / "docs" / "verdicts.md").read_text()

    run = subprocess.run([*as_user(qmail["qmaild"]), str(installed.command), "--", "true"],
                         cwd="/",
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    summary = [e for e in events(run.stderr) if e["event"] == "summary"]
    assert len(summary) == 1 and summary[0]["exit"] == "0", run.stderr


# -- the installed command under each supervisor -----------------------------------------


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _ids(pid: int) -> tuple[set[int], set[int]]:
    """The real, effective, saved and fs uids, and gids, of a live process."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            found[key] = {int(v) for v in value.split()}
    return found["Uid"], found["Gid"]


def _environ(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/environ").read_bytes().decode("ascii", "replace").split("\0")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


def _configure(suite: str, svc: Path, values: dict[str, str]) -> None:
    """The shipped settings, with ``values`` in place of theirs (runit: appended to
    conf, so the later assignment wins; daemontools and s6: one env file each)."""
    if suite == "runit":
        with open(svc / "conf", "a") as conf:
            conf.write("# the install test's settings\n")
            conf.writelines(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
    else:
        for name, value in values.items():
            (svc / "env" / name).write_text(value + "\n")


@pytest.fixture
def supervised(public: Path, installed: Installed, double: Double,
               subreaper: None) -> Iterator[dict[str, Service]]:
    """The supervisors started by a test, stopped (with everything they ran) after it."""
    started: dict[str, Service] = {}
    yield started
    for srv in started.values():
        srv.stop()
        assert marked_processes(srv.mark) == {}, "processes left behind"


def test_installed_wheel_has_every_wing(installed):
    """The release is the built wheel, not the checkout: each subcommand (one per wing
    and module: serve/, logs/, runscript/) answers --help from it, and the package it
    runs lies in the release, with each wing's directory."""
    release = installed.prefix / "current"
    for sub, usage in (("serve", "usage: supervise-smtp serve"),
                       ("report", "usage: supervise-smtp report"),
                       ("collect", "usage: supervise-smtp collect"),
                       ("check-service", "usage: supervise-smtp check-service"),
                       ("wrap-run", "usage: supervise-smtp wrap-run")):
        run = subprocess.run([str(installed.command), sub, "--help"], capture_output=True,
                             text=True, timeout=60, cwd="/")
        assert run.returncode == 0 and run.stdout.startswith(usage), (sub, run)
    where = subprocess.run([str(release / "bin" / "python"), "-c",
                            "import supervise_smtp, os; print(os.path.dirname("
                            "supervise_smtp.__file__))"],
                           capture_output=True, text=True, timeout=60, cwd="/", check=True)
    package = where.stdout.strip()
    assert package.startswith(str(installed.prefix)), package
    for wing in ("observer", "session", "serve", "logs", "runscript"):
        assert os.path.isfile(os.path.join(package, wing, "__init__.py")), wing


@pytest.mark.parametrize("suite", ["runit", "daemontools", "s6"])
def test_installed_command_serves_under_supervisor(suite, public, installed, double, qmail,
                                                   supervised):
    """The shipped service dir runs the installed command as qmaild under the real
    supervisor: a message relayed on the tcprules cdb's RELAYCLIENT is queued, and its
    verdict is in the log written by the logger running as qmaill."""
    for binary in ("tcpserver", "tcprules", "swaks", "setpriv", *BINARIES[suite]):
        need(binary)
    qmaild, qmaill = qmail["qmaild"], qmail["qmaill"]
    root = public / suite
    svc = root / "scan" / "qmail-smtpd"
    shutil.copytree(REPO / suite / "qmail-smtpd", svc, symlinks=True)
    cdb = root / "tcp.smtp.cdb"
    subprocess.run(["tcprules", str(cdb), str(root / "tcp.smtp.tmp")],
                   input=b'127.:allow,RELAYCLIENT=""\n', check=True, capture_output=True)
    queue = root / "queue"
    queue.mkdir()
    os.chown(queue, qmaild.pw_uid, qmaild.pw_gid)
    port = free_port()
    _configure(suite, svc, {
        "SUPERVISE_SMTP": str(installed.command),
        "SMTPD": str(double.smtpd),
        "SOFTLIMIT": "500000000",  # the double is Python: 24 MB would not start it
        "IP": "127.0.0.1",
        "PORT": str(port),
        "TCPRULES": str(cdb),
        "QMAILQUEUE": str(double.queue),
        "FAKE_QUEUE_DIR": str(queue),
        "FAKE_QMAIL_CONTROL": str(double.control),
    })
    srv = supervised[suite] = Service(suite, root, svc, port).start()
    srv.banner()

    # A connection held open: who runs it, and as whom.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as held:
        assert held.recv(512).startswith(b"220 ")

        held_port = f"TCPREMOTEPORT={held.getsockname()[1]}"

        def smtpd() -> list[int]:  # python3 fake-qmail-smtpd (not the wrapper naming it)
            return [p for p in marked_processes(srv.mark)
                    if _cmdline(p)[1:2] == [str(double.smtpd)] and held_port in _environ(p)]

        (child,) = poll_until("the double under the held connection", smtpd)  # type: ignore[misc]
        wrapper = _ppid(child)
        release = installed.prefix / "releases" / installed.current()
        assert _cmdline(wrapper)[:2] == [f"{release}/bin/python", str(installed.command)]
        for pid in (child, wrapper):
            assert _ids(pid) == ({qmaild.pw_uid}, {qmaild.pw_gid}), (pid, _cmdline(pid))
        held.sendall(b"QUIT\r\n")
        assert recv_until_eof(held).startswith(b"221 ")

    out = swaks(need("swaks"), port, "--to", RELAY_RCPT, "--header", "Subject: install e2e",
                "--body", "hello")
    qp = re.search(r"^<-  250 ok \d+ qp (\d+)", out, re.M)
    assert qp, out
    queued = queue / qp.group(1)
    assert queued.stat().st_uid == qmaild.pw_uid
    assert b"Subject: install e2e" in queued.read_bytes()
    assert f"T{RELAY_RCPT}\0".encode() in (queue / f"{qp.group(1)}.env").read_bytes()

    stamp = STAMPS[suite]
    summary = srv.wait_log(rf"^{stamp}event=summary remote=127\.0\.0\.1 pid=(\d+) "
                           r"verdict=ok .*\bqueued=yes reply_delivered=yes .*\bexit=0$")
    pid = summary.group(1)
    srv.wait_log(rf"^{stamp}tcpserver: end {pid} status 0$")
    (logger,) = [p for p, comm in marked_processes(srv.mark).items() if comm == LOGGER[suite]]
    assert _ids(logger)[0] == {qmaill.pw_uid}
    assert (svc / "log" / "main" / "current").stat().st_uid == qmaill.pw_uid


# -- upgrade and uninstall, offline -------------------------------------------------------


def _offline_env() -> dict[str, str]:
    """The environment with no pip configuration and no way out to the network."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k.lower() not in ("http_proxy", "https_proxy")}
    dead = "http://127.0.0.1:9"  # discard port: nothing listens, every fetch fails
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"{dead}/simple",
               http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead)
    return env


class CommandLoop:
    """Run ``supervise-smtp -- sh`` as qmaild over and over, in a thread; each run's
    status and the release it ran from (the child prints its parent's command line)."""

    def __init__(self, command: Path, qmaild: pwd.struct_passwd) -> None:
        self.argv = [*as_user(qmaild), str(command), "--", "sh", "-c",
                     "tr '\\0' ' ' </proc/$PPID/cmdline >&2"]
        self.runs: list[tuple[int, str]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        # paced (a run, then up to 50 ms): the install beside it needs the CPU too
        while not self.stopped.wait(0.05):
            run = subprocess.run(self.argv, cwd="/", stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            text = run.stderr.decode("ascii", "replace")
            said = [e["text"] for e in events(text) if e["event"] == "child_stderr"]
            summaries = [e for e in events(text) if e["event"] == "summary"]
            self.runs.append((run.returncode if len(summaries) == 1 else -1,
                              said[0] if said else text))

    def releases(self) -> set[str]:
        return {m.group(1) for _, said in self.runs
                for m in [re.search(r"/releases/([^/ ]+)/bin/python ", said)] if m}

    def __enter__(self) -> CommandLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)


def test_install_offline_upgrade_and_prune(public, installed, qmail):
    """--build-wheels, then the copied install.sh with --wheel and no network, over the
    checkout's install: it swaps ``current`` while qmaild's sessions keep working; an
    install that an unprivileged user could not run changes nothing; the next prunes an
    unused older release but keeps the previous one and one still running; --uninstall
    refuses while it runs."""
    wheels = public / "wheels"
    install_sh(INSTALL, "--build-wheels", str(wheels))
    (wheel,) = wheels.glob("supervise_smtp-*.whl")
    offline_install = wheels / "install.sh"
    assert offline_install.read_bytes() == INSTALL.read_bytes()
    env = _offline_env()
    first = installed.current()
    assert installed.releases() == {first}

    with CommandLoop(installed.command, qmail["qmaild"]) as loop:
        poll_until("a session from the first release", loop.releases)
        said = install_sh(offline_install, "--wheel", str(wheel), *installed.args(), env=env)
        second = installed.current()
        assert second != first and installed.releases() == {first, second}
        assert f"kept the previous release, {first}" in said
        poll_until("a session from the second release", lambda: second in loop.releases())
    assert loop.runs and all(status == 0 for status, _ in loop.runs), loop.runs
    assert loop.releases() == {first, second}

    # a failed install leaves everything as it was: here, an interpreter in a 0700
    # directory, which root can build with but an unprivileged user cannot run
    private = public / "private"
    private.mkdir(mode=0o700)
    (private / "python3").symlink_to(Path("/usr/bin/python3").resolve())
    said = install_sh(offline_install, "--wheel", str(wheel), "--python",
                      str(private / "python3"), *installed.args(), env=env, status=111)
    assert "does not run as an unprivileged user" in said, said
    assert installed.current() == second and installed.releases() == {first, second}

    # an older release nobody runs (a copy of the first), and the first still running
    older = "0.0.1-20000101T000000Z"
    releases = installed.prefix / "releases"
    shutil.copytree(releases / first, releases / older, symlinks=True)
    holder = subprocess.Popen([str(releases / first / "bin" / "supervise-smtp"),
                               "--", "sleep", "120"], stdin=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        said = install_sh(offline_install, "--wheel", str(wheel), *installed.args(), env=env)
        third = installed.current()
        assert installed.releases() == {first, second, third}, said
        assert f"removed {older}" in said and f"kept {first}: still running" in said

        said = install_sh(offline_install, "--uninstall", *installed.args(), status=111)
        assert re.search(rf"still running from .*\(pids ([0-9 ]* )?{holder.pid}\b", said), said
        assert installed.current() == third and installed.command.exists()
    finally:
        kill_group(holder)
