"""``supervise-smtp serve`` side by side with the real tcpserver.

Each test starts tcpserver and serve with the same options (``-1`` on port 0:
both print the port they bound) in front of the same program, plays the same
clients against both and compares what the program saw -- its environment,
uid, gid and groups, the banner, the -c limit -- with each other, never with
values typed here.  DNS and ident are exercised against a fake resolver
($DNSCACHEIP, read by tcpserver's djbdns library and by serve alike) and a
fake identd on port 113.  IPv6 is serve alone (Debian's tcpserver is
IPv4-only).  The helpers (Listener, both) are used by test_serve_*.py too.
"""

from __future__ import annotations

import itertools
import os
import re
import resource
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import in_ci
from helpers import (
    events,
    fill_pipe,
    kill_group,
    no_core_dumps,
    read_log,
    recv_until_eof,
    wrapper_argv,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchlib import parent_fds, printed_port  # noqa: E402

pytestmark = pytest.mark.e2e

_TCPSERVER_END = re.compile(r"^tcpserver: end (\d+) status (\d+)$", re.M)
START_S = 15.0


def _limits(nofile: tuple[int, int]) -> None:
    """In the server's process before exec: no core dumps, and RLIMIT_NOFILE (soft, hard)."""
    no_core_dumps()
    resource.setrlimit(resource.RLIMIT_NOFILE, nofile)


class Listener:
    """tcpserver or ``supervise-smtp serve``, with ``-1`` on port 0 and its own session.

    stderr (the server's lines, and the session lines under serve) goes to a
    file read back with :meth:`log`; :meth:`stop` kills the process group.
    """

    def __init__(self, kind: str, opts: list[str], prog: list[str], workdir: Path,
                 env: dict[str, str] | None = None, host: str = "127.0.0.1",
                 stdin: int | None = None, stderr: int | None = None,
                 nofile: tuple[int, int] | None = None) -> None:
        self.kind = kind
        head = ["tcpserver"] if kind == "tcpserver" else [*wrapper_argv(), "serve"]
        self.argv = [*head, *opts, "-1", host, "0", *prog]
        self.host = host
        self.log_path = workdir / f"{kind}-{id(self):x}.err"
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=subprocess.PIPE, stderr=err if stderr is None else stderr, env=env,
                start_new_session=True,
                preexec_fn=no_core_dumps if nofile is None else lambda: _limits(nofile))
        port = printed_port(self.proc, START_S)
        if port is None:
            self.stop()
            raise AssertionError(f"{kind} did not start: {self.log()!r}")
        self.port = port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return read_log(self.log_path, self.proc.poll() is None)

    def connect(self, timeout: float = 15.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def talk(self, data: bytes = b"") -> bytes:
        """Connect, send data, half-close, read to EOF."""
        with self.connect() as sock:
            if data:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return recv_until_eof(sock)

    def ends(self) -> list[tuple[int, int]]:
        """(pid, raw wait status) of every connection that ended so far, in order.

        serve's workers serve several connections each: a pid may come again.
        """
        text = self.log()
        if self.kind == "tcpserver":
            return [(int(p), int(s)) for p, s in _TCPSERVER_END.findall(text)]
        return [(int(e["pid"]), int(e["status"])) for e in events(text) if e["event"] == "end"]

    def end_statuses(self, count: int = 1, timeout: float = START_S) -> list[tuple[int, int]]:
        """At least ``count`` ends (waits for them): [(pid, status)]."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.ends()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"want {count} ends from {self.kind}: {self.log()!r}")
            time.sleep(0.01)

    def wait_for(self, pattern: str, timeout: float = START_S) -> re.Match[str]:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while not (m := rx.search(self.log())):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in {self.kind} log: {self.log()!r}")
            time.sleep(0.01)
        return m

    def stop(self) -> None:
        """Kill the process group; then every event line serve logged, read or not
        by the test, must parse strictly (helpers.events, keys from log_keys.py)."""
        if self.proc.returncode is None:
            kill_group(self.proc)  # type: ignore[arg-type]
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.kind == "serve":
            events(self.log())


@pytest.fixture
def both(tmp_path: Path, need: Callable[[str], str]) -> Iterator[Callable[..., tuple[Listener,
                                                                                         Listener]]]:
    """Factory: (tcpserver, serve) with the same options, program and environment."""
    need("tcpserver")
    started: list[Listener] = []

    def start(opts: list[str], prog: list[str], env: dict[str, str] | None = None,
              host: str = "127.0.0.1") -> tuple[Listener, Listener]:
        pair = []
        for kind in ("tcpserver", "serve"):
            started.append(Listener(kind, opts, prog, tmp_path, env=env, host=host))
            pair.append(started[-1])
        return pair[0], pair[1]

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    """Factory: serve alone (IPv6, signals, memory)."""
    started: list[Listener] = []

    def start(opts: list[str], prog: list[str], **kw: object) -> Listener:
        started.append(Listener("serve", opts, prog, tmp_path, **kw))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for listener in started:
        listener.stop()


def script(directory: Path, name: str, body: str) -> str:
    """An executable sh script (in a directory any uid can read)."""
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every uid can traverse (tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="serve-e2e-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


SHOW_ENV = ("env | LC_ALL=C sort\n"
            "echo \"uid=$(id -u) gid=$(id -g) groups=$(id -G)\"\n"
            "grep '^Groups:' /proc/self/status\n")


def same_view(a: bytes, b: bytes, *ports: tuple[int, int]) -> None:
    """The two programs saw the same, but for the ports (each server's and each client's)."""
    def norm(text: bytes) -> list[bytes]:
        text = re.sub(rb"^(TCP6?(?:REMOTE|LOCAL)PORT)=\d+$", rb"\1=PORT", text, flags=re.M)
        return text.splitlines()
    assert norm(a) == norm(b)
    assert b"PROTO=TCP" in a


def env_of_both(both: Callable[..., tuple[Listener, Listener]], opts: list[str],
                public_dir: Path, env: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    prog = script(public_dir, "show-env", SHOW_ENV)
    ts, sv = both(["-v", *opts], [prog], env=env)  # -v: the end lines
    got = ts.talk(), sv.talk()
    assert ts.end_statuses(1) and sv.end_statuses(1)
    assert [s for _, s in ts.ends()] == [s for _, s in sv.ends()] == [0]
    return got


# ---------------------------------------------------------------- environment


@pytest.mark.parametrize("opts", [
    ["-v", "-H", "-R", "-l", "0"],
    ["-vHRl", "mx.example.test"],
    ["-HR", "-l", ""],
    ["-v", "-H", "-R"],
    ["-v", "-R", "-D", "-o", "-b", "5", "-c", "3"],
], ids=["l0", "bundled-l-name", "l-empty", "local-dns", "remote-dns-no-answer"])
def test_serve_env_matches_tcpserver(both, public_dir, opts):
    """The program's whole environment (and uid/gid) is the same under serve as under tcpserver."""
    a, b = env_of_both(both, opts, public_dir)
    same_view(a, b)


def test_serve_env_without_locale_matches_tcpserver(both, public_dir):
    """With an empty environment (envdir -i style), Python's locale coercion leaks nothing."""
    a, b = env_of_both(both, ["-HR", "-l0"], public_dir, env={"PATH": "/usr/bin:/bin"})
    same_view(a, b)
    assert b"LC_CTYPE" not in b


# ---------------------------------------------------------------- fake DNS and identd

DNS_IP = "127.0.0.77"  # a loopback address of our own for the fake resolver


class _Dns(socketserver.BaseRequestHandler):
    """Answers from ``server.table``: {(name, qtype): [rdata]}; NXDOMAIN otherwise."""

    def handle(self) -> None:
        data, sock = self.request
        qid, pos, labels = data[:2], 12, []
        while data[pos]:
            labels.append(data[pos + 1:pos + 1 + data[pos]])
            pos += 1 + data[pos]
        qtype = int.from_bytes(data[pos + 1:pos + 3], "big")
        question = data[12:pos + 5]
        name = b".".join(labels).decode().lower()
        answers = self.server.table.get((name, qtype), [])  # type: ignore[attr-defined]
        flags = b"\x81\x80" if answers else b"\x81\x83"
        head = qid + flags + b"\0\1" + len(answers).to_bytes(2, "big") + b"\0\0\0\0"
        body = b"".join(b"\xc0\x0c" + qtype.to_bytes(2, "big") + b"\0\1\0\0\0\x3c"
                        + len(r).to_bytes(2, "big") + r for r in answers)
        sock.sendto(head + question + body, self.client_address)


def wire(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def _privileged(bind: Callable[[], socketserver.BaseServer]) -> socketserver.BaseServer:
    try:
        return bind()
    except PermissionError:
        if in_ci():
            raise
        pytest.skip("needs root for ports 53 and 113")


@pytest.fixture
def fake_dns() -> Iterator[dict[tuple[str, int], list[bytes]]]:
    """A resolver on DNS_IP:53; tests fill its table."""
    server = _privileged(lambda: socketserver.ThreadingUDPServer((DNS_IP, 53), _Dns))
    server.table = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.table  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


class _Ident(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        ports = self.rfile.readline().strip().decode()
        self.wfile.write(f"{ports} : USERID : UNIX : Ident-User\r\n".encode())


@pytest.fixture
def fake_identd() -> Iterator[None]:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = _privileged(lambda: socketserver.ThreadingTCPServer(("0.0.0.0", 113), _Ident))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield None
    server.shutdown()
    server.server_close()


PTR_LOCALHOST = ("1.0.0.127.in-addr.arpa", 12)


@pytest.mark.parametrize("opts", [["-v", "-R"], ["-v", "-R", "-p"], ["-R", "-l", "0", "-P"]],
                         ids=["h", "paranoid-confirmed", "P"])
def test_serve_dns_names_match_tcpserver(both, public_dir, fake_dns, opts):
    """TCPLOCALHOST and TCPREMOTEHOST from DNS (PTR, lowercased; -p: A confirms) as tcpserver's."""
    fake_dns[PTR_LOCALHOST] = [wire("MX.Client.Example")]
    fake_dns[("mx.client.example", 1)] = [socket.inet_aton("127.0.0.1")]
    a, b = env_of_both(both, opts, public_dir, env=dict(os.environ, DNSCACHEIP=DNS_IP))
    same_view(a, b)
    assert b"TCPREMOTEHOST=mx.client.example" in b


def test_serve_paranoid_unconfirmed_name_matches_tcpserver(both, public_dir, fake_dns):
    """-p: a PTR name whose A records do not include the client leaves TCPREMOTEHOST unset."""
    fake_dns[PTR_LOCALHOST] = [wire("liar.example")]
    fake_dns[("liar.example", 1)] = [socket.inet_aton("10.9.9.9")]
    a, b = env_of_both(both, ["-R", "-p"], public_dir, env=dict(os.environ, DNSCACHEIP=DNS_IP))
    same_view(a, b)
    assert b"TCPREMOTEHOST" not in b and b"TCPLOCALHOST=liar.example" in b


@pytest.mark.parametrize("opts", [["-v", "-H"], ["-H", "-r", "-t", "5"]], ids=["default", "r"])
def test_serve_ident_matches_tcpserver(both, public_dir, fake_identd, opts):
    """TCPREMOTEINFO from the client's identd (RFC 1413), read as tcpserver reads it."""
    a, b = env_of_both(both, [*opts, "-l", "0"], public_dir)
    same_view(a, b)
    assert b"TCPREMOTEINFO=Ident-User" in b


# ---------------------------------------------------------------- options


_USERS = itertools.count()


@pytest.fixture
def test_user() -> Iterator[tuple[int, int]]:
    """A system user and group made for the test (CI runs as root), removed after.

    Ask for it before the servers: they run as that user and must be gone first.
    """
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI must run as root")
        pytest.skip("needs root")
    name = f"ssmtp{os.getpid() % 100000}{next(_USERS)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", name],
                   check=True, capture_output=True)
    try:
        import pwd

        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_serve_user_and_group_match_tcpserver(test_user, both, public_dir):
    """-u/-g: the program runs with that uid, gid and groups (as tcpserver's prot_gid sets them)."""
    uid, gid = test_user
    a, b = env_of_both(both, ["-HR", "-l0", "-u", str(uid), "-g", str(gid)], public_dir)
    same_view(a, b)
    assert f"uid={uid} gid={gid}".encode() in b


def test_serve_U_takes_uid_gid_from_environment(test_user, both, public_dir):
    """-U: $UID and $GID (as envuidgid sets them) give the user and group."""
    uid, gid = test_user
    env = dict(os.environ, UID=str(uid), GID=str(gid))
    a, b = env_of_both(both, ["-HRU", "-l0"], public_dir, env=env)
    same_view(a, b)
    assert f"uid={uid} gid={gid}".encode() in b


def test_serve_banner_matches_tcpserver(both, public_dir):
    """-B: the banner reaches the client first, byte for byte, then the program's output."""
    prog = script(public_dir, "hello", "echo from-program\n")
    ts, sv = both(["-HR", "-l0", "-B", "220 banner\r\n"], [prog])
    assert ts.talk() == sv.talk() == b"220 banner\r\nfrom-program\n"


def test_serve_limit_defers_the_next_client(both, public_dir):
    """-c 2: a third client waits in the backlog until one ends; none is lost (as tcpserver)."""
    prog = script(public_dir, "hold", "echo hi\nread line\necho bye \"$line\"\n")
    for server in both(["-v", "-HR", "-l0", "-c", "2"], [prog]):
        first, second = server.connect(), server.connect()
        assert first.recv(10) == b"hi\n" and second.recv(10) == b"hi\n"
        third = server.connect()
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):  # not served while two are running
            third.recv(10)
        first.sendall(b"one\n")
        assert recv_until_eof(first) == b"bye one\n"
        third.settimeout(START_S)
        assert third.recv(10) == b"hi\n"  # now it is
        for n, sock in ((2, second), (3, third)):
            sock.sendall(b"%d\n" % n)
            assert recv_until_eof(sock) == b"bye %d\n" % n
        assert sorted(s for _, s in server.end_statuses(3)) == [0, 0, 0]
        if server.kind == "serve":
            assert "event=limit" in server.log()


@pytest.mark.parametrize("args", [
    [], ["127.0.0.1"], ["127.0.0.1", "0"], ["-Z", "127.0.0.1", "0", "true"],
    ["-c"],
], ids=["nothing", "no-port", "no-prog", "unknown", "no-value"])
def test_serve_usage_errors_exit_100_like_tcpserver(args, need):
    """What tcpserver refuses with 100, serve refuses with 100, before binding anything."""
    need("tcpserver")
    ts = subprocess.run(["tcpserver", *args], capture_output=True, timeout=30)
    sv = subprocess.run([*wrapper_argv(), "serve", *args], capture_output=True, timeout=30)
    assert ts.returncode == sv.returncode == 100, (ts, sv)
    assert sv.stderr.startswith(b"supervise-smtp serve: fatal: ")


@pytest.mark.parametrize("args, message", [
    (["-c", "0"], "bad value for -c"),
    (["-u", "qmaild"], "bad value for -u"),
    (["-s"], "TLS (-s) is not supported"),
    (["-6"], "ucspi-tcp6's -6 is not supported"),
    (["--drain", "x"], "bad value for --drain"),
    (["--no-such-option"], "unknown option --no-such-option"),
    (["--capture-when", "always"], "--capture-when needs --capture"),
])
def test_serve_refuses_with_100(args, message):
    """Values tcpserver would misread, other tcpservers' options, bad wrapper options: 100."""
    proc = subprocess.run([*wrapper_argv(), "serve", *args, "127.0.0.1", "0", "true"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 100, proc
    assert message in proc.stderr.decode(), proc.stderr


def test_serve_bind_failure_exits_111_like_tcpserver(need):
    """An address in use is a temporary failure (111) for both."""
    need("tcpserver")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        ts = subprocess.run(["tcpserver", "127.0.0.1", port, "true"], capture_output=True,
                            timeout=30)
        sv = subprocess.run([*wrapper_argv(), "serve", "127.0.0.1", port, "true"],
                            capture_output=True, timeout=30)
    assert ts.returncode == sv.returncode == 111, (ts, sv)
    assert b"unable to bind" in ts.stderr and b"unable to bind" in sv.stderr


def test_serve_help_on_stdout():
    """--help (not -h: that is tcpserver's remote-host option) prints the usage, exit 0."""
    proc = subprocess.run([*wrapper_argv(), "serve", "--help"], capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith(b"usage: supervise-smtp serve")


# ---------------------------------------------------------------- IPv6 (serve alone)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_serve_ipv6_loopback(serve, public_dir):
    """On ::1: PROTO=TCP6, addresses as ::1, and ucspi-tcp6's TCP6* copies."""
    if not _has_ipv6_loopback():
        if in_ci():
            pytest.fail("no IPv6 loopback in CI")
        pytest.skip("no IPv6 loopback")
    server = serve(["-v", "-HR", "-l", "0"], [script(public_dir, "show-env", SHOW_ENV)],
                   host="::1")
    seen = dict(line.split("=", 1) for line in server.talk().decode().splitlines()
                if line.startswith(("PROTO=", "TCP")))
    assert seen["PROTO"] == "TCP6"
    assert seen["TCPREMOTEIP"] == seen["TCP6REMOTEIP"] == "::1"
    assert seen["TCPLOCALIP"] == seen["TCP6LOCALIP"] == "::1"
    assert seen["TCPLOCALPORT"] == seen["TCP6LOCALPORT"] == str(server.port)
    assert seen["TCPREMOTEPORT"] == seen["TCP6REMOTEPORT"]
    assert seen["TCPLOCALHOST"] == seen["TCP6LOCALHOST"] == "0"
    assert "TCPREMOTEHOST" not in seen and "TCPREMOTEINFO" not in seen
    server.wait_for(r"^event=summary remote=::1 ")


def test_serve_dual_stack_ipv4_client_is_plain_tcp(serve, public_dir):
    """On ::, an IPv4 client is PROTO=TCP with plain IPv4 addresses (not ::ffff:...)."""
    if not _has_ipv6_loopback():
        if in_ci():
            pytest.fail("no IPv6 loopback in CI")
        pytest.skip("no IPv6")
    server = serve(["-HR", "-l", "0"], [script(public_dir, "show-env", SHOW_ENV)], host="::")
    with socket.create_connection(("127.0.0.1", server.port), timeout=START_S) as sock:
        sock.shutdown(socket.SHUT_WR)
        out = recv_until_eof(sock).decode()
    assert "PROTO=TCP\n" in out and "TCPREMOTEIP=127.0.0.1\n" in out
    assert "TCP6" not in out


# ---------------------------------------------------------------- signals and resources


def _worker_of(server: Listener) -> int:
    return int(server.wait_for(r"^event=connect .*?\bpid=(\d+)")[1])


def test_serve_worker_killed_does_not_stop_the_parent(serve, public_dir):
    """SIGKILL to a worker mid-session: its end is logged (status 9), the next client served."""
    prog = script(public_dir, "hold", "echo hi\nread line\necho bye\n")
    server = serve(["-v", "-HR", "-l0"], [prog])
    with server.connect() as sock:
        assert sock.recv(10) == b"hi\n"
        worker = _worker_of(server)
        os.kill(worker, signal.SIGKILL)
        assert (worker, signal.SIGKILL) in server.end_statuses(1)
        recv_until_eof(sock)
    with server.connect() as sock:
        assert sock.recv(10) == b"hi\n"
        sock.sendall(b"x\n")
        assert recv_until_eof(sock) == b"bye\n"
    assert server.proc.poll() is None


def test_serve_sigterm_stops_accepting_sessions_finish(serve, public_dir):
    """SIGTERM: the parent exits 0 and refuses new clients; the open session runs to its end."""
    prog = script(public_dir, "hold", "echo hi\nread line\necho bye \"$line\"\n")
    server = serve(["-v", "-HR", "-l0"], [prog])
    with server.connect() as sock:
        assert sock.recv(10) == b"hi\n"
        worker = _worker_of(server)
        os.kill(server.pid, signal.SIGTERM)
        assert server.proc.wait(timeout=START_S) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=START_S).close()
        sock.sendall(b"still\n")
        assert recv_until_eof(sock) == b"bye still\n"
    server.wait_for(rf"^event=summary remote=127\.0\.0\.1 pid={worker} .*\bexit=0$")


def test_serve_drain_waits_for_sessions(serve, public_dir):
    """--drain S: after SIGTERM the parent waits for the running session and logs its end."""
    prog = script(public_dir, "hold", "echo hi\nread line\n")
    server = serve(["-v", "-HR", "-l0", "--drain", "60"], [prog])
    with server.connect() as sock:
        assert sock.recv(10) == b"hi\n"
        worker = _worker_of(server)
        os.kill(server.pid, signal.SIGTERM)
        server.wait_for(r"^event=stop signal=SIGTERM active=1")
        assert server.proc.poll() is None
        sock.sendall(b"done\n")
        assert server.proc.wait(timeout=START_S) == 0
    assert server.ends() == [(worker, 0)]


def test_serve_sighup_and_sigalrm_are_not_fatal(serve, public_dir):
    """HUP and ALRM to the parent change nothing: it keeps serving."""
    server = serve(["-HR", "-l0"], [script(public_dir, "hello", "echo hi\n")])
    for sig in (signal.SIGHUP, signal.SIGALRM, signal.SIGHUP):
        os.kill(server.pid, sig)
        assert server.talk() == b"hi\n"
    assert server.proc.poll() is None


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_serve_parent_memory_and_fds_flat(serve, public_dir):
    """200 connections after a warm-up: the parent's RSS stays within 1 MB, its fds unchanged."""
    server = serve(["-v", "-HR", "-l0"], [script(public_dir, "hello", "echo hi\n")])
    for _ in range(50):
        assert server.talk() == b"hi\n"
    server.end_statuses(50)
    rss, fds = _rss_kb(server.pid), parent_fds(server.pid)
    for _ in range(200):
        assert server.talk() == b"hi\n"
    server.end_statuses(250)
    assert parent_fds(server.pid) == fds
    assert _rss_kb(server.pid) - rss < 1024, (rss, _rss_kb(server.pid))


def test_serve_unread_log_pipe_never_stalls_the_parent(serve, public_dir):
    """fd 2 a full pipe nobody reads: the parent goes on accepting; its lines are dropped."""
    read_end, write_end = os.pipe()
    fill_pipe(write_end)
    try:
        server = serve(["-v", "-HR", "-l0", "--events", "none"],
                       [script(public_dir, "hello", "echo hi\n")], stderr=write_end)
        for _ in range(5):
            assert server.talk() == b"hi\n"
        assert server.proc.poll() is None
    finally:
        os.close(write_end)
        os.close(read_end)


def test_per_connection_wrapper_never_imports_serve(tmp_path):
    """Start-up guard: the per-connection path loads none of serve's modules."""
    child = tmp_path / "child"
    child.write_text("#!/bin/sh\nprintf '220 x ESMTP\\r\\n'; read l; printf '221 x\\r\\n'\n")
    child.chmod(0o755)
    argv = wrapper_argv()
    if argv[0] != sys.executable:
        argv = [sys.executable, *argv]
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:], "--", str(child)],
                          input=b"QUIT\r\n", capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = {line.rsplit(b"|", 1)[-1].strip().decode() for line in proc.stderr.splitlines()
              if line.startswith(b"import time:")}
    assert "supervise_smtp.session.run" in loaded
    for module in ("supervise_smtp.serve.server", "supervise_smtp.serve.config",
                   "supervise_smtp.serve.worker", "supervise_smtp.serve.log",
                   "supervise_smtp.serve.tcpenv", "supervise_smtp.serve.dns",
                   "supervise_smtp.serve.rules",
                   "supervise_smtp.runscript.sh"):
        assert module not in loaded, module


# ---------------------------------------------------------------- reused workers


def _fd_links(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}:{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            continue
    return out


def test_serve_worker_sessions_then_a_fresh_worker(serve, public_dir):
    """--worker-sessions 3: a worker serves three connections, then a new one takes over;
    between sessions the worker holds nothing of the last one (fds as before it)."""
    server = serve(["-v", "-HR", "-l0", "--worker-sessions", "3", "--spare-workers", "1"],
                   [script(public_dir, "hello", "echo hi\n")])
    assert server.talk() == b"hi\n"
    [(first, _)] = server.end_statuses(1)
    fds = _fd_links(first)
    for done in range(2, 8):
        assert server.talk() == b"hi\n"
        server.end_statuses(done)
        if done == 2:
            assert _fd_links(first) == fds  # no client socket, pipe or pidfd left behind
    pids = [pid for pid, _ in server.ends()]
    assert pids[:3] == [first] * 3 and first not in pids[3:]
    assert len(set(pids[3:6])) == 1 and pids[6] != pids[3]
    assert [s for _, s in server.ends()] == [0] * 7
    deadline = time.monotonic() + START_S
    while os.path.exists(f"/proc/{first}") and time.monotonic() < deadline:
        time.sleep(0.01)  # it exits by itself after its third session, and serve reaps it
    assert not os.path.exists(f"/proc/{first}")


def test_serve_worker_sessions_1_is_a_fork_per_connection(serve, public_dir):
    server = serve(["-v", "-HR", "-l0", "--worker-sessions", "1"],
                   [script(public_dir, "hello", "echo hi\n")])
    for done in range(1, 5):
        assert server.talk() == b"hi\n"
        server.end_statuses(done)
    assert len({pid for pid, _ in server.ends()}) == 4


def test_serve_idle_worker_killed_is_replaced(serve, public_dir):
    """An idle worker killed from outside: logged (worker_lost), the next client is served."""
    server = serve(["-v", "-HR", "-l0", "--spare-workers", "1"],
                   [script(public_dir, "hello", "echo hi\n")])
    assert server.talk() == b"hi\n"
    [(worker, _)] = server.end_statuses(1)
    os.kill(worker, signal.SIGKILL)
    server.wait_for(rf"^event=worker_lost pid={worker} status=9 served=1$")
    assert server.talk() == b"hi\n"
    [_, (second, status)] = server.end_statuses(2)
    assert second != worker and status == 0


def test_serve_sigterm_ends_idle_workers(serve, public_dir):
    """SIGTERM: the parent exits and its idle workers with it; nothing is left running."""
    server = serve(["-v", "-HR", "-l0", "--spare-workers", "3"],
                   [script(public_dir, "hello", "echo hi\n")])
    assert server.talk() == b"hi\n"
    server.end_statuses(1)
    workers = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(workers) == 3
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=START_S) == 0
    deadline = time.monotonic() + START_S
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_running(w) for w in workers)


def _running(pid: int | str) -> bool:
    """Alive and not a zombie (whoever adopted it may not reap at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("args", [["--worker-sessions", "0"], ["--spare-workers", "x"],
                                  ["--worker-sessions"]])
def test_serve_worker_options_bad_values_exit_100(args):
    run = subprocess.run([*wrapper_argv(), "serve", *args, "127.0.0.1", "0", "true"],
                         capture_output=True, timeout=30)
    assert run.returncode == 100
    assert args[0].encode() in run.stderr


def test_serve_idle_workers_beyond_spare_end_after_a_while(serve, public_dir):
    """A burst of 3 clients with --spare-workers 1: 3 workers, then 1 kept idle."""
    prog = script(public_dir, "hold", "echo hi\nread line\n")
    server = serve(["-v", "-HR", "-l0", "--spare-workers", "1"], [prog])
    socks = [server.connect() for _ in range(3)]
    for sock in socks:
        assert sock.recv(10) == b"hi\n"
    for sock in socks:
        sock.sendall(b"x\n")
        recv_until_eof(sock)
        sock.close()
    ends = server.end_statuses(3)
    burst = {pid for pid, _ in ends}
    assert len(burst) == 3

    def idle() -> list[str]:
        return [w for w in Path(f"/proc/{server.pid}/task/{server.pid}/children")
                .read_text().split() if _running(w)]

    assert len(idle()) == 3  # kept at first: the next burst would find them
    deadline = time.monotonic() + START_S
    while len(idle()) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(idle()) == 1 and int(idle()[0]) in burst


def test_serve_parent_and_workers_tell_apart_in_ps_and_top(serve, public_dir):
    """ps (the command line) and top (the thread name) show the parent and each worker
    for what they are, and the command line still starts with the interpreter's path."""
    prog = script(public_dir, "hello", "echo '220 hi'\n")
    server = serve(["-HR", "-l0"], [prog])
    deadline = time.monotonic() + 15
    while not (workers := [int(c) for c in Path(f"/proc/{server.pid}/task/{server.pid}"
                                                 "/children").read_text().split()]):
        assert time.monotonic() < deadline, "no spare worker"
        time.sleep(0.02)

    def seen(pid: int) -> tuple[str, str]:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return cmdline.strip(), Path(f"/proc/{pid}/comm").read_text().strip()

    assert server.talk() == b"220 hi\n"
    parent_cmd, parent_comm = seen(server.pid)
    assert parent_comm == "ssmtp-parent"
    assert f" supervise-smtp serve: parent 127.0.0.1 {server.port} -c 40" in parent_cmd
    assert parent_cmd.startswith(sys.executable.rsplit("/", 1)[0])
    for worker in workers:
        cmd, comm = seen(worker)
        assert comm == "ssmtp-worker", comm
        assert cmd.endswith(f" supervise-smtp serve: worker of {server.pid}"), cmd
    for pid in (server.pid, *workers):  # the environment an operator reads is untouched
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"PATH={os.environ['PATH']}".encode() in environ
        assert not any(v.startswith(b"SPT_NOENV=") for v in environ)
