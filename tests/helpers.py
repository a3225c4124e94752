"""Helpers shared by the test suite.

Observer transcripts first; the wrapper, log and tcpserver helpers used by
tests/cli and tests/e2e follow.

A transcript is a list of ``("C", bytes)`` / ``("S", bytes)`` steps in the
order the relay saw them; ``b""`` is EOF for that side.  ``feed`` plays one
through an Observer, optionally cutting each step into pieces, and returns
every event produced, in order.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from log_keys import check_keys
from strict_logfmt import parse as parse_strict
from strict_logfmt import parse_json as parse_strict_json

from supervise_smtp.observer import Event, Observer

Step = tuple[str, bytes]
Splitter = Callable[[bytes], Iterable[bytes]]


def whole(data: bytes) -> list[bytes]:
    """Each step in one piece."""
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    """Each step one byte at a time (EOF stays EOF)."""
    return [data[i:i + 1] for i in range(len(data))] or [data]


def cut_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (out-of-range offsets ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces, prev = [], 0
    for c in points + [len(data)]:
        pieces.append(data[prev:c])
        prev = c
    return pieces


def feed(steps: Sequence[Step], obs: Observer | None = None,
         split: Splitter = whole) -> list[Event]:
    """All events of ``steps`` played through ``obs`` (a fresh Observer by default)."""
    obs = obs if obs is not None else Observer()
    events: list[Event] = []
    for side, data in steps:
        fn = obs.feed_client if side == "C" else obs.feed_server
        for piece in split(data) if data else [b""]:
            events += fn(piece)
    return events


def names(events: Iterable[Event]) -> list[str]:
    """Event class names, for compact assertions."""
    return [type(e).__name__ for e in events]


def smtp_session(body: bytes, ehlo_caps: bytes = b"250-PIPELINING\r\n250 8BITMIME\r\n",
                 end: bytes = b"\r\n.\r\n") -> list[Step]:
    """A complete one-message session whose DATA body is ``body`` + ``end``."""
    return [
        ("S", b"220 mx.example.org ESMTP\r\n"),
        ("C", b"EHLO client.example.com\r\n"),
        ("S", b"250-mx.example.org\r\n" + ehlo_caps),
        ("C", b"MAIL FROM:<a@example.com>\r\n"),
        ("S", b"250 ok\r\n"),
        ("C", b"RCPT TO:<b@example.org>\r\n"),
        ("S", b"250 ok\r\n"),
        ("C", b"DATA\r\n"),
        ("S", b"354 go ahead\r\n"),
        ("C", body + end),
        ("S", b"250 ok 1234 qp 5678\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 mx.example.org\r\n"),
        ("C", b""),
        ("S", b""),
    ]


# ---------------------------------------------------------------------------
# End-to-end and CLI helpers (tests/e2e, tests/cli): the wrapper command line,
# its event lines, a real tcpserver, reads with a deadline.

TESTS_DIR = Path(__file__).resolve().parent
STDIO_CHILDREN = TESTS_DIR / "fakes" / "stdio_children"


def wrapper_argv() -> list[str]:
    """The fastest way to run supervise-smtp with the interpreter under test."""
    script = Path(sys.executable).parent / "supervise-smtp"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "supervise_smtp"]


def child_argv(name: str, *args: str) -> list[str]:
    """argv running one of tests/fakes/stdio_children/ with this interpreter."""
    return [sys.executable, str(STDIO_CHILDREN / name), *args]


def events(data: bytes | str) -> list[dict[str, str]]:
    """The event lines of a stderr capture, logfmt (``event=...``) or JSON
    (``{...}``, ``--format json``), parsed strictly.

    Each line goes through tests/strict_logfmt.py, not the package's own
    reader: a malformed line (an unterminated or stray quote, a duplicate or
    forged key, trailing garbage, a raw control byte, JSON not written as
    output.py writes it) fails the test that reads it, and so does a key
    outside the fixed set of tests/log_keys.py.  Lines are split at LF only,
    so a stray CR stays inside its line and fails it.  JSON values come back
    as logfmt shows them (``5``, ``true``): callers read both formats alike.
    """
    if isinstance(data, bytes):
        data = data.decode("ascii", "replace")
    found = []
    for line in data.split("\n"):
        if line.startswith("event="):
            ev = parse_strict(line)
        elif line.startswith("{"):
            ev = {k: _logfmt_text(v) for k, v in parse_strict_json(line).items()}
        else:
            continue
        check_keys(ev)
        found.append(ev)
    return found


def _logfmt_text(value: object) -> str:
    """A JSON value as the same field reads in logfmt."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def event(data: bytes | str, name: str) -> dict[str, str]:
    """The one event named ``name``; fails if there is not exactly one."""
    found = [e for e in events(data) if e["event"] == name]
    assert len(found) == 1, f"want one event={name}, got {found!r} in {data!r}"
    return found[0]


def vm_rss_kb(pid: int) -> int | None:
    """VmRSS of a live process in kB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def no_core_dumps() -> None:
    """preexec_fn: RLIMIT_CORE 0, so a signal status never carries the core flag."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_END = re.compile(r"^tcpserver: end (\d+) status (\d+)$", re.M)


class TcpServer:
    """``tcpserver -v -R -H -l 0 127.0.0.1 PORT argv...`` in its own session.

    Its stderr (tcpserver's lines and the wrapper's event lines) goes to a
    file, read back with :meth:`log`.  :meth:`stop` kills the whole process
    group and reaps tcpserver; call it (the fixture does) even on failure.
    """

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
                 opts: tuple[str, ...] = ()) -> None:
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.opts = opts
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = workdir / f"tcpserver-{id(self):x}.err"

    def command(self) -> list[str]:
        """What runs: tcpserver on self.port with self.argv."""
        return ["tcpserver", "-v", "-R", "-H", "-l", "0", *self.opts, "127.0.0.1",
                str(self.port), *self.argv]

    READY = "tcpserver: status: "  # the log line that says it listens

    def start(self, tries: int = 5, timeout: float = 10.0) -> TcpServer:
        """Start on a free port (retrying if the bind fails) and wait until it listens."""
        name = "tcpserver" if self.command()[0] == "tcpserver" else "serve"
        for _ in range(tries):
            self.port = free_port()
            with open(self.log_path, "wb") as err:
                self.proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    env=self.env, start_new_session=True, preexec_fn=no_core_dumps,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.READY in self.log():
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.01)
            else:
                self.stop()
                raise AssertionError(f"{name} did not start: {self.log()!r}")
            self.stop()  # could not bind: try another port
        raise AssertionError(f"{name} could not bind after {tries} tries: {self.log()!r}")

    def log(self) -> str:
        """Everything tcpserver and its children wrote on stderr so far (whole lines)."""
        return read_log(self.log_path, self.proc is not None and self.proc.poll() is None)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A client connection with every operation under ``timeout``."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (multiline regex)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in tcpserver log: {self.log()!r}")
            time.sleep(0.01)

    def end_statuses(self, count: int = 1, timeout: float = 15.0) -> dict[int, int]:
        """``{pid: status}`` from the first ``count`` ``tcpserver: end`` lines."""
        deadline = time.monotonic() + timeout
        while True:
            found = {int(p): int(s) for p, s in _END.findall(self.log())}
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"want {count} end lines: {self.log()!r}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill tcpserver and everything in its process group, then reap it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_group(proc)


class ServeServer(TcpServer):
    """The same test through ``supervise-smtp serve`` in tcpserver's place.

    An argv that runs the wrapper (``wrapper_argv() [options] -- prog...``)
    becomes ``serve -v -R -H -l 0 [tcpserver opts] [options] 127.0.0.1 PORT
    prog...``, the switch a run script makes with SERVE=1; any other argv
    (a parity run of the bare child) still runs under the real tcpserver.
    The end of a connection is serve's ``event=end pid= status=`` line.
    """

    def command(self) -> list[str]:
        head = wrapper_argv()
        self.served = self.argv[:len(head)] == head and "--" in self.argv
        if not self.served:
            return super().command()
        rest = self.argv[len(head):]
        cut = rest.index("--")
        return [*head, "serve", "-v", "-R", "-H", "-l", "0", *self.opts, *rest[:cut],
                "127.0.0.1", str(self.port), "--", *rest[cut + 1:]]

    @property
    def READY(self) -> str:  # type: ignore[override]
        return "event=listen " if self.served else TcpServer.READY

    def end_statuses(self, count: int = 1, timeout: float = 15.0) -> dict[int, int]:
        if not self.served:
            return super().end_statuses(count, timeout)
        deadline = time.monotonic() + timeout
        while True:
            ends = [(int(e["pid"]), int(e["status"])) for e in events(self.log())
                    if e["event"] == "end"]
            if len(ends) >= count:
                return dict(ends[:count])  # one connection per test: pids do not repeat
            if time.monotonic() > deadline:
                raise AssertionError(f"want {count} end lines: {self.log()!r}")
            time.sleep(0.01)


def read_log(path: Path, running: bool) -> str:
    """A server's stderr file as read now.  While it runs, only its whole lines:
    a line being written may be read half-way (a write to a regular file is not
    atomic for a reader), and the strict parser would take the half for a
    malformed line.  Once it has stopped, everything, an unfinished line included."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    if running:
        data = data[:data.rfind(b"\n") + 1]
    return data.decode("ascii", "replace")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM, then KILL, the process group led by ``proc``; reap ``proc``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue


def fill_pipe(fd: int) -> int:
    """Fill a pipe until a write would block (a log service that stopped reading);
    the bytes it took.  The write end is left blocking again, as fd 2 is."""
    blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    total = 0
    try:
        while True:
            total += os.write(fd, b"f" * 4096)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, blocking)
    return total


def recv_until_eof(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything the peer sends until it shuts down its side."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def read_fd_until(fd: int, marker: bytes, timeout: float = 15.0) -> bytes:
    """Read a (pipe) fd until ``marker`` or EOF, never longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    buf = b""
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"timed out waiting for {marker!r}, got {buf!r}")
        data = os.read(fd, 65536)
        if not data:
            break
        buf += data
    return buf


# ---------------------------------------------------------------------------
# The qmail-smtpd test double behind the wrapper (tests/fakes/): its
# environment, a raw SMTP client that reads whole replies, and the one
# summary line of a connection with its fields checked.

FAKES = TESTS_DIR / "fakes"
SMTPD = str(FAKES / "fake-qmail-smtpd")
QUEUE = str(FAKES / "fake-qmail-queue")
SCANNER = str(FAKES / "fake-qmail-scanner")
GREETING = "fake.example"
BANNER = f"220 {GREETING} ESMTP"
SMTPLF = "451 See http://pobox.com/~djb/docs/smtplf.html."
BYE = f"221 {GREETING}"
RCPT_OK = "rcpt@example.org"  # in control/rcpthosts
RCPT_RELAY = "rcpt@elsewhere.test"  # not in control/rcpthosts
BODY = b"From: e2e@example.com\r\nTo: rcpt@example.org\r\nSubject: verdicts\r\n\r\nhello\r\n"
QP = re.compile(r"250 ok \d+ qp (\d+)")
ABSENT = None  # an expected summary field that must not be on the line




def double_env(tmp_path: Path, queue: str = QUEUE, timeoutsmtpd: int | None = None,
               **extra: str) -> dict[str, str]:
    """Environment for the double: control/rcpthosts, the queue program, FAKE_* knobs."""
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    (control / "rcpthosts").write_text("example.org\n")
    if timeoutsmtpd is not None:
        (control / "timeoutsmtpd").write_text(f"{timeoutsmtpd}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAKE_", "QMAILQUEUE", "RELAYCLIENT", "DATABYTES"))}
    env.update(FAKE_QMAIL_CONTROL=str(control), QMAILQUEUE=queue, **extra)
    return env


def one_summary(server: TcpServer) -> tuple[dict[str, str], int, str]:
    """(summary, tcpserver end status, whole log) of the server's one connection."""
    statuses = server.end_statuses(1)
    log = server.log()
    summary = event(log, "summary")
    assert summary["verdict"] != "unknown", log
    assert [e["event"] for e in events(log)].count("summary") == 1
    pid, status = next(iter(statuses.items()))
    assert int(summary["pid"]) == pid, log
    return summary, status, log


def check_fields(summary: dict[str, str], reason: str, **want: object) -> None:
    """Each wanted field equals its value (``None``: absent); ``reason`` is a substring."""
    assert reason in summary.get("reason", ""), summary
    for key, value in want.items():
        if value is None:
            assert key not in summary, (key, summary)
        else:
            assert summary.get(key) == str(value), (key, summary)


class SmtpClient:
    """A raw SMTP client socket that reads whole (multi-line) replies."""

    def __init__(self, server: TcpServer) -> None:
        self.sock = server.connect()
        self.buf = b""

    def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise AssertionError(f"EOF before a reply, got {self.buf!r}")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def cmd(self, line: bytes, code: int) -> bytes:
        self.sock.sendall(line + b"\r\n")
        got, text = self.reply()
        assert got == code, text
        return text

    def envelope(self, rcpt: str = RCPT_OK) -> None:
        """Banner, EHLO, MAIL, RCPT, all accepted."""
        assert self.reply()[0] == 220
        self.cmd(b"EHLO client.test", 250)
        self.cmd(b"MAIL FROM:<e2e@example.com>", 250)
        self.cmd(f"RCPT TO:<{rcpt}>".encode(), 250)

    def message(self, body: bytes = BODY) -> tuple[int, bytes]:
        """A whole session up to the reply to the end of data."""
        self.envelope()
        self.cmd(b"DATA", 354)
        self.sock.sendall(body + b".\r\n")
        return self.reply()

    def hang_up(self) -> None:
        """Shut down the sending side, then wait for the server to close."""
        self.sock.shutdown(socket.SHUT_WR)
        recv_until_eof(self.sock)
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


# Service dirs under a real supervisor: processes carrying a marker in their
# environment, the supervisor(s) of one service dir, the qmail users.

MARK = "SUPERVISE_SMTP_TEST_MARK"

# The supervisor's own timestamp at the start of each log line, as each tool
# writes it here: multilog t and s6-log t (the shipped s6 log/run) write TAI64N
# labels; svlogd -tt a UTC "YYYY-MM-DD_HH:MM:SS.xxxxx".
STAMPS = {
    "daemontools": r"@4000[0-9a-f]{20} ",
    "runit": r"\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d\.\d{5} ",
    "s6": r"@4000[0-9a-f]{20} ",
}


def poll_until(what: str, fn: Callable[[], object], timeout: float = 20.0) -> object:
    """fn()'s first true value, polling; fails with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def marked_processes(mark: str) -> dict[int, str]:
    """``{pid: comm}`` of the live processes whose environment holds ``mark``."""
    needle = f"{MARK}={mark}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{entry}/comm", "rb") as fh:
                comm = fh.read().decode("ascii", "replace").strip()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != b"Z":
            found[int(entry)] = comm
    return found


_PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> None:
    """Make this process adopt its orphaned descendants (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


@dataclass
class Service:
    """One service dir copied to a temp dir, and the supervisor running it."""

    suite: str
    root: Path
    svc: Path
    port: int
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", MARK: self.mark}

    def start(self) -> Service:
        """Start the supervisor(s) in a new session, as an init would."""
        common = dict(stdin=subprocess.DEVNULL, env=self.env, cwd=self.root,
                      start_new_session=True)
        if self.suite == "daemontools":
            r, w = os.pipe()
            try:
                self.procs.append(subprocess.Popen(["supervise", str(self.svc / "log")],
                                                   **{**common, "stdin": r}))
                self.procs.append(subprocess.Popen(["supervise", str(self.svc)],
                                                   **{**common, "stdout": w}))
            finally:
                os.close(r)
                os.close(w)
        elif self.suite == "runit":
            self.procs.append(subprocess.Popen(["runsv", str(self.svc)], **common))
        else:
            self.procs.append(subprocess.Popen(["s6-svscan", str(self.svc.parent)], **common))
        return self

    def stop(self) -> None:
        """Kill the supervisors, then every marked process; reap them all.

        The test process is a child subreaper meanwhile (conftest's
        ``subreaper`` fixture), so the orphans (tcpserver, the loggers,
        connections) become its children and are reaped here instead of
        lingering as zombies.
        """
        seen = set(marked_processes(self.mark))
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while (left := marked_processes(self.mark)) and time.monotonic() < deadline:
            seen |= set(left)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        for proc in self.procs:
            proc.wait(timeout=10)
        for pid in seen - {proc.pid for proc in self.procs}:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # reaped by its own parent, or not ours

    def tcpservers(self) -> list[int]:
        return [p for p, c in marked_processes(self.mark).items() if c == "tcpserver"]

    def serves(self) -> list[int]:
        """The ``supervise-smtp serve`` parents (not their forked workers)."""
        found = []
        for pid in marked_processes(self.mark):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                ppid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
                parent = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            titled = b" supervise-smtp serve: parent " in argv[0]  # serve_title, once up
            if titled or b"serve" in argv and b"serve" not in parent \
                    and b" serve: " not in b" ".join(parent):
                found.append(pid)
        return found

    def log(self) -> str:
        try:
            return (self.svc / "log" / "main" / "current").read_text("ascii", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        rx = re.compile(pattern, re.M)
        try:
            return poll_until(f"{pattern!r} in the log", lambda: rx.search(self.log()),  # type: ignore[return-value]
                              timeout)
        except AssertionError:
            raise AssertionError(f"no {pattern!r} in {self.log()!r}") from None

    def banner(self, timeout: float = 20.0) -> None:
        """Wait until a connection gets qmail-smtpd's banner (then QUIT)."""
        def try_once() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    if not s.recv(512).startswith(b"220 "):
                        return False
                    s.sendall(b"QUIT\r\n")
                    return recv_until_eof(s, 5).startswith(b"221 ")
            except OSError:
                return False
        poll_until(f"a banner on port {self.port}", try_once, timeout)


def swaks(binary: str, port: int, *args: str) -> str:
    """swaks against 127.0.0.1:port as e2e@example.com from client.test; its output, status 0."""
    run = subprocess.run(
        [binary, "--server", f"127.0.0.1:{port}", "--from", "e2e@example.com",
         "--helo", "client.test", "--timeout", "20", *args],
        capture_output=True, timeout=60,
    )
    out = run.stdout.decode("utf-8", "replace")
    assert run.returncode == 0, out + run.stderr.decode("utf-8", "replace")
    return out


def _ensure(argv: list[str], name: str, exists: Callable[[str], bool]) -> None:
    """Run useradd/groupadd unless ``name`` exists; another test creating it at the
    same moment (exit 9, or 10 while /etc/passwd is locked) is waited for."""
    deadline = time.monotonic() + 30
    while not exists(name):
        run = subprocess.run([*argv, name], capture_output=True, text=True)
        if run.returncode not in (0, 9, 10) or time.monotonic() > deadline:
            raise AssertionError(f"{argv[0]} {name}: {run.returncode} {run.stderr}")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def qmail_users() -> dict[str, pwd.struct_passwd]:
    """qmaild and qmaill in the nofiles group (qmail's INSTALL.ids), created if missing."""
    _ensure(["groupadd", "--system"], "nofiles", _has_group)
    for name, home in (("qmaild", "/var/qmail"), ("qmaill", "/var/log/qmail")):
        _ensure(["useradd", "--system", "--no-create-home", "-g", "nofiles", "-d", home,
                 "-s", "/usr/sbin/nologin"], name, _has_user)
    return {name: pwd.getpwnam(name) for name in ("qmaild", "qmaill")}
