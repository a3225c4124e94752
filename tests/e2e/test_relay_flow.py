"""The relay end to end: byte-exact both ways, half-close, back-pressure.

Each test runs twice: with the wrapper's fds 0/1 as pipes (the -bs style,
O_NONBLOCK path) and under a real tcpserver (a TCP socket, MSG_DONTWAIT path).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import select
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import STDIO_CHILDREN, child_argv, event, events, vm_rss_kb, wrapper_argv

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30.0
MAX_RSS_KB = 60 * 1024
FLOOD_BYTES = 200 * 1024 * 1024

_spec = importlib.util.spec_from_file_location("sink_source", STDIO_CHILDREN / "sink_source.py")
assert _spec is not None and _spec.loader is not None
sink_source = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sink_source)


def _status(wstatus: int) -> int:
    """A raw wait status as subprocess's returncode (-N for signal N)."""
    return -os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else os.WEXITSTATUS(wstatus)


class PipeConn:
    """The wrapper with pipes on fds 0/1 and its stderr in a file."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        self.err_path = workdir / "wrapper.err"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        self.wrapper_pid = self.proc.pid

    def send(self, data: bytes, timeout: float = TIMEOUT_S) -> int:
        """Write some of data within timeout; OSError if the wrapper is gone."""
        if not select.select([], [self.wfd], [], timeout)[1]:
            raise TimeoutError("pipe not writable")
        try:
            return os.write(self.wfd, data)
        except BlockingIOError:
            return 0

    def recv(self, size: int, timeout: float = TIMEOUT_S) -> bytes:
        if not select.select([self.rfd], [], [], timeout)[0]:
            raise TimeoutError("pipe not readable")
        try:
            return os.read(self.rfd, size)
        except BlockingIOError:
            return self.recv(size, timeout)

    def shut_write(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                f.close()

    def log(self) -> str:
        return self.err_path.read_bytes().decode("ascii", "replace")

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.close()


class TcpConn:
    """One client connection to the wrapper under tcpserver."""

    def __init__(self, server) -> None:  # helpers.TcpServer
        self.server = server
        self.sock = server.connect(timeout=TIMEOUT_S)
        # Writes go through a dup with its own timeout: a socket's timeout is
        # per object, and the reader and writer threads each want their own.
        self.wsock = self.sock.dup()
        server.wait_for(r"^event=connect ")
        self.wrapper_pid = int(event(server.log(), "connect")["pid"])

    def send(self, data: bytes, timeout: float = TIMEOUT_S) -> int:
        self.wsock.settimeout(timeout)
        return self.wsock.send(data)

    def recv(self, size: int, timeout: float = TIMEOUT_S) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(size)

    def shut_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.wsock.close()
        self.sock.close()

    def log(self) -> str:
        return self.server.log()

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        return _status(self.server.end_statuses(1, timeout)[self.wrapper_pid])

    def kill(self) -> None:
        self.close()


@pytest.fixture(params=["pipes", "tcpserver"])
def connect(request, tmp_path):
    """Factory: run the wrapper around child argv, return a connection to it."""
    conns: list = []

    def start(child: list[str]):
        if request.param == "pipes":
            conn = PipeConn([*wrapper_argv(), "--", *child], tmp_path)
        else:
            tcpserver = request.getfixturevalue("tcpserver")
            conn = TcpConn(tcpserver([*wrapper_argv(), "--", *child]))
        conns.append(conn)
        return conn

    yield start
    for conn in conns:
        conn.kill()


def _sendall(conn, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[conn.send(view[: 1 << 20]):]


def _recv_all(conn, timeout: float = TIMEOUT_S) -> bytes:
    chunks = []
    while True:
        data = conn.recv(1 << 20, timeout)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _recv_into(conn, chunks: list[bytes]) -> None:
    """Read until EOF, or a reset (unread flood under TCP), keeping what came first."""
    try:
        while data := conn.recv(1 << 20):
            chunks.append(data)
    except ConnectionResetError:
        pass


def _in_thread(target, *args) -> tuple[threading.Thread, dict]:
    """Run target in a daemon thread; its result or exception lands in the dict."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = target(*args)
        except BaseException as exc:  # reported by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _joined(thread: threading.Thread, box: dict, timeout: float = TIMEOUT_S):
    thread.join(timeout)
    assert not thread.is_alive(), "client thread hung"
    if "error" in box:
        raise box["error"]
    return box.get("result")


def test_relay_byte_exact_both_ways(connect, tmp_path):
    """16 MB of random bytes each way (NUL, CR, LF, 0xff included) arrive unchanged."""
    up = b"\x00\r\n\xff.\r\n" + random.Random(1).randbytes(16 * 1024 * 1024)
    down = sink_source.stream(16, 2)
    digest_file = tmp_path / "digest"
    conn = connect(child_argv("sink_source.py", "16", "2", str(digest_file)))

    def write() -> None:
        _sendall(conn, up)
        conn.shut_write()

    writer, wbox = _in_thread(write)
    reader, rbox = _in_thread(_recv_all, conn)
    _joined(writer, wbox)
    got = _joined(reader, rbox)
    assert conn.wait() == 0
    assert len(got) == len(down)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(down).hexdigest()
    assert digest_file.read_text().split() == [hashlib.sha256(up).hexdigest(), str(len(up))]
    end = event(conn.log(), "disconnect")
    assert (end["bytes_in"], end["bytes_out"]) == (str(len(up)), str(len(down)))


def test_relay_client_half_close_reaches_child(connect):
    """Client EOF reaches the child as EOF, and the child's answer still reaches the client."""
    conn = connect(["sh", "-c", 'n=$(wc -c); echo "read $n"'])
    _sendall(conn, b"hello world\n")
    conn.shut_write()
    assert _recv_all(conn) == b"read 12\n"
    assert conn.wait() == 0
    assert event(conn.log(), "disconnect")["first_close"] == "client"


def test_relay_child_half_close_reaches_client(connect):
    """Child EOF reaches the client as EOF while the client can still write to the child."""
    conn = connect(child_argv("half_close.py"))
    assert _recv_all(conn) == b"bye\n"
    _sendall(conn, b"still here\n")
    conn.shut_write()
    assert conn.wait() == 0
    log = conn.log()
    said = [e["text"] for e in events(log) if e["event"] == "child_stderr"]
    assert said == [f"child-read 11 {b'still here'.hex()}0a"]
    assert event(log, "disconnect")["first_close"] == "server"


def _flood(conn, total: int, stop: threading.Event) -> int:
    """Send up to total bytes in 64 KiB pieces until the peer is gone; bytes sent."""
    chunk = b"F" * 65536
    sent = 0
    while sent < total and not stop.is_set():
        try:
            sent += conn.send(chunk, timeout=1.0)
        except TimeoutError:
            continue  # back-pressure: keep pushing until the peer goes away
        except OSError:
            break
    return sent


def _max_rss_while(pid: int, alive) -> int:
    """Sample the wrapper's VmRSS every 20 ms while alive() holds; the maximum."""
    peak = 0
    deadline = time.monotonic() + TIMEOUT_S
    while alive() and time.monotonic() < deadline:
        rss = vm_rss_kb(pid)
        if rss is None:
            break
        peak = max(peak, rss)
        time.sleep(0.02)
    return peak


def test_relay_child_not_reading_applies_back_pressure(connect):
    """A 200 MB flood to a child that never reads blocks the client, not the wrapper's memory."""
    conn = connect(["sh", "-c", "echo banner; sleep 3"])
    stop = threading.Event()
    chunks: list[bytes] = []
    reader, rbox = _in_thread(_recv_into, conn, chunks)
    flooder, fbox = _in_thread(_flood, conn, FLOOD_BYTES, stop)
    try:
        peak = _max_rss_while(conn.wrapper_pid, flooder.is_alive)
        assert conn.wait(timeout=15) == 0
    finally:
        stop.set()
    sent = _joined(flooder, fbox)
    _joined(reader, rbox)
    assert b"".join(chunks) == b"banner\n"
    assert 0 < sent < FLOOD_BYTES // 4, f"client sent {sent} bytes: no back-pressure"
    assert 0 < peak < MAX_RSS_KB, f"wrapper VmRSS peaked at {peak} kB"
    end = event(conn.log(), "disconnect")
    assert end["first_close"] == "server"
    assert int(end["bytes_in"]) <= sent


def test_relay_stalled_client_does_not_stall_other_direction(connect):
    """While the client never reads a 200 MB flood, its line still reaches the child."""
    conn = connect(child_argv("flood.py", str(FLOOD_BYTES // (1024 * 1024))))
    done = threading.Event()
    sampler, sbox = _in_thread(_max_rss_while, conn.wrapper_pid, lambda: not done.is_set())
    try:
        time.sleep(0.5)  # let the flood fill every buffer on the way
        _sendall(conn, b"ping\n")
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("text") == "got ping" for e in events(conn.log())):
            assert time.monotonic() < deadline, f"child never got the line: {conn.log()!r}"
            time.sleep(0.02)
    finally:
        done.set()
    peak = _joined(sampler, sbox)
    assert 0 < peak < MAX_RSS_KB, f"wrapper VmRSS peaked at {peak} kB"
    conn.close()  # give up reading: the wrapper's writes fail and it finishes
    assert conn.wait(timeout=15) == 0
    end = event(conn.log(), "disconnect")
    assert int(end["bytes_out"]) < FLOOD_BYTES
    assert end["bytes_in"] == "5"
