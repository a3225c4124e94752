"""What the benchmarks share: the C helpers, tcpserver chains, SMTP clients.

Every client here is deliberately plain (blocking sockets, large sendall
slices, bytes prebuilt outside the timed part) so that the client costs the
same for every chain it is measured against.
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
LINE = b"The quick brown fox jumps over the lazy dog, 0123456789 abcdefghijklmnopqrst\r\n"
assert len(LINE) == 78


def build(name: str, *flags: str) -> Path:
    """Compile bench/NAME.c once (again when the source is newer)."""
    src = HERE / f"{name}.c"
    exe = BUILD / name
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-o", str(exe), str(src), *flags], check=True)
    return exe


def build_sink() -> Path:
    return build("smtp_sink")


def wrapper_command() -> list[str]:
    """The installed launcher next to this Python, else -m."""
    script = Path(sys.executable).parent / "supervise-smtp"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "supervise_smtp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """tcpserver on 127.0.0.1 running argv per connection; logs discarded.

    ``stop()`` returns the rusage of tcpserver and of every session process
    it reaped (Linux wait4 reports both), which is how CPU per connection of
    a whole chain is measured.
    """

    def __init__(self, argv: list[str], front: tuple[str, ...] = ("tcpserver",),
                 start_s: float = 5.0) -> None:
        """``front``: the program in tcpserver's place (tcpserver, or supervise-smtp serve)."""
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*front, "-R", "-H", "-l", "0", "-c", "200", "127.0.0.1", str(self.port), *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + start_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{front[-1]} did not start: {argv}")

    def session_pid(self, client_port: int) -> int | None:
        """The session process (tcpserver's child) serving our client port."""
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        want = f"TCPREMOTEPORT={client_port}".encode()
        for child in children:
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if want in env:
                return int(child)
        return None

    def stop(self) -> resource.struct_rusage | None:
        if self.proc.returncode is not None:
            return None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return usage


def printed_port(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The port a server started with ``-1 ... 0`` prints first on its stdout (tcpserver
    and serve alike); None when it exits or says nothing else within ``timeout``."""
    import select

    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if not select.select([proc.stdout], [], [], 0.2)[0]:
            continue
        chunk = os.read(proc.stdout.fileno(), 64)
        if not chunk:
            break
        line += chunk
    return int(line) if line.strip().isdigit() else None


def parent_fds(pid: int) -> list[str]:
    """The open descriptors of serve's parent, without its workers' control sockets.

    Each live worker (busy or idle, up to --spare-workers of them wait) has a
    SOCK_SEQPACKET socket in the parent: how many there are depends on the
    moment, not on a leak.  Nothing else of the parent is a SEQPACKET socket.
    """
    seqpacket = set()
    with open("/proc/net/unix") as table:
        next(table)
        for row in table:
            cols = row.split()
            if len(cols) >= 7 and cols[4] == "0005":
                seqpacket.add(f"socket:[{cols[6]}]")
    own = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target not in seqpacket:
            own.append(fd)
    return sorted(own, key=int)


def vm_hwm_kib(pid: int | None) -> int | None:
    """Peak resident set of a live process, from /proc (VmHWM)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Client:
    """A blocking SMTP client that reads whole replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def reply(self) -> bytes:
        """One whole (possibly multiline) reply; raises on EOF."""
        while True:
            start = 0
            while True:
                end = self.buf.find(b"\n", start)
                if end < 0:
                    break
                line = self.buf[start:end + 1]
                start = end + 1
                if len(line) < 4 or line[3:4] != b"-":
                    out, self.buf = self.buf[:start], self.buf[start:]
                    return out
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"EOF waiting for a reply after {self.buf[-200:]!r}")
            self.buf += data

    def command(self, line: bytes, expect: bytes) -> bytes:
        self.sock.sendall(line)
        got = self.reply()
        if not got.startswith(expect):
            raise RuntimeError(f"{line!r} -> {got!r}")
        return got

    def envelope(self, recipients: int = 1) -> None:
        self.command(b"EHLO bench.example\r\n", b"250")
        self.command(b"MAIL FROM:<a@bench.example>\r\n", b"250")
        for i in range(recipients):
            self.command(b"RCPT TO:<r%d@bench.example>\r\n" % i, b"250")

    def quit(self) -> None:
        self.command(b"QUIT\r\n", b"221")
        while self.sock.recv(65536):
            pass
        self.sock.close()


def body(size: int) -> bytes:
    """size bytes (rounded up to whole lines) of 78-byte CRLF lines."""
    return LINE * max(1, -(-size // len(LINE)))


def send_all(sock: socket.socket, data: bytes, slice_bytes: int = 1 << 20) -> None:
    view = memoryview(data)
    for i in range(0, len(view), slice_bytes):
        sock.sendall(view[i:i + slice_bytes])


def observer_in_data() -> object:
    """A sans-IO Observer taken through EHLO/MAIL/RCPT/DATA/354: the next
    client bytes are a message body."""
    sys.path.insert(1, str(HERE.parent))
    from supervise_smtp.observer import Observer

    obs = Observer()
    for side, text in (("S", b"220 mx ESMTP\r\n"), ("C", b"EHLO x\r\n"),
                       ("S", b"250-mx\r\n250 PIPELINING\r\n"), ("C", b"MAIL FROM:<a@b>\r\n"),
                       ("S", b"250 ok\r\n"), ("C", b"RCPT TO:<c@d>\r\n"), ("S", b"250 ok\r\n"),
                       ("C", b"DATA\r\n"), ("S", b"354 go\r\n")):
        (obs.feed_client if side == "C" else obs.feed_server)(text)
    return obs


def machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpus": os.cpu_count(), "cpu_model": model, "hostname": platform.node(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
