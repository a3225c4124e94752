"""Output's background writer: the relay never waits for fd 2.

Each test uses a real pipe.  A pipe "nobody reads" is filled to the brim
first (the test's own end, briefly non-blocking), so that any blocking write
on it would hang; every call that must not block runs in a watchdog thread
with a generous bound, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import strict_logfmt as strict
from helpers import fill_pipe

from supervise_smtp.session.output import BACKLOG_BYTES, BACKLOG_LINES, Output

LIVENESS_S = 10.0


def _returns(fn: Callable[[], object]) -> object:
    """fn() run in a thread; fails if it is still blocked after LIVENESS_S."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    worker.start()
    worker.join(LIVENESS_S)
    assert not worker.is_alive(), f"{fn!r} blocked on a full log pipe"
    return result[0] if result else None


def _drain(fd: int, until: bytes, skip: int) -> bytes:
    """Read the pipe: ``skip`` filler bytes, then what follows until ``until``."""
    buf = b""
    deadline = time.monotonic() + LIVENESS_S
    while len(buf) < skip or until not in buf[skip:]:
        assert time.monotonic() < deadline, buf[skip:][-400:]
        buf += os.read(fd, 65536)
    return buf[skip:]


class FullPipe:
    """A pipe that nobody reads, full; the Outputs made on it stop at teardown."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.filled = fill_pipe(self.w)
        self.outputs: list[Output] = []

    def output(self) -> Output:
        out = Output(fd=self.w, background=True)
        self.outputs.append(out)
        return out

    def teardown(self) -> None:
        # The read end first: a writer blocked on the pipe gets EPIPE and
        # stops before its fd number can be reused by the next test.
        os.close(self.r)
        for out in self.outputs:
            _returns(lambda out=out: out.close(LIVENESS_S))
        os.close(self.w)


@pytest.fixture
def full_pipe() -> Iterator[FullPipe]:
    pipe = FullPipe()
    yield pipe
    pipe.teardown()


def test_emit_never_blocks_on_a_full_pipe_and_counts_drops(full_pipe):
    """200 lines on a pipe nobody reads: each emit returns; beyond the bound, counted drops."""
    out = full_pipe.output()

    def emit_many() -> None:
        for i in range(200):
            out.emit("command", verb="NOOP", n=i)

    _returns(emit_many)
    assert out.dropped == 200 - BACKLOG_LINES
    assert not out.broken


def test_backlog_keeps_order_and_forces_the_summary_in(full_pipe):
    """What got in comes out in order, passthrough bytes included; the summary always gets in."""
    out = full_pipe.output()
    out.base = {"remote": "10.0.0.7", "pid": 42}

    def session() -> None:
        out.emit("connect", child_pid=43)
        out.write_raw(b"passthrough stderr line\n")
        for i in range(100):
            out.emit("command", verb="NOOP", n=i)
        out.emit("summary", verdict="ok", log_dropped=out.dropped)

    _returns(session)
    assert out.dropped == 100 + 2 - BACKLOG_LINES
    data = _drain(full_pipe.r, b"event=summary", full_pipe.filled)
    closed = _returns(lambda: out.close(LIVENESS_S))
    assert closed is True
    lines = data.decode("ascii").splitlines()
    assert lines[0].startswith("event=connect ")
    assert lines[1] == "passthrough stderr line"
    noops = [strict.parse(line) for line in lines[2:-1]]
    assert [int(n["n"]) for n in noops] == list(range(BACKLOG_LINES - 2))
    summary = strict.parse(lines[-1])
    assert summary["event"] == "summary"
    assert summary["log_dropped"] == str(100 + 2 - BACKLOG_LINES)
    assert len(lines) == BACKLOG_LINES + 1  # the bound, and the summary forced in


def test_backlog_bounded_in_bytes(full_pipe):
    """--stderr pass lines of 64 KiB: the byte bound holds whatever the line count."""
    out = full_pipe.output()
    line = b"x" * 65535 + b"\n"
    _returns(lambda: [out.write_raw(line) for _ in range(10)])
    assert out.dropped == 10 - BACKLOG_BYTES // len(line)


def test_close_gives_up_after_its_timeout(full_pipe):
    """A pipe nobody reads: close(0.3) waits about that long, says not everything went out."""
    out = full_pipe.output()
    out.emit("summary", verdict="ok")
    started = time.monotonic()
    closed = _returns(lambda: out.close(0.3))
    assert closed is False
    assert time.monotonic() - started >= 0.25  # it did wait for the log service


def test_close_waits_for_a_slow_reader(full_pipe):
    """A log service that reads late but within the timeout gets every line."""
    out = full_pipe.output()
    for i in range(10):
        out.emit("command", n=i)
    got: list[bytes] = []

    def read_late() -> None:
        time.sleep(0.2)
        got.append(_drain(full_pipe.r, b"n=9\n", full_pipe.filled))

    reader = threading.Thread(target=read_late, daemon=True)
    reader.start()
    assert out.close(LIVENESS_S) is True
    reader.join(LIVENESS_S)
    lines = [strict.parse(line) for line in got[0].decode().splitlines()]
    assert [int(e["n"]) for e in lines] == list(range(10))


def test_closed_read_end_stops_writing_quietly():
    """EPIPE: output stops, nothing raises, close returns at once."""
    r, w = os.pipe()
    os.close(r)
    out = Output(fd=w, background=True)
    out.emit("connect")
    assert _returns(lambda: out.close(LIVENESS_S)) is False
    assert out.broken
    out.emit("summary", verdict="ok")  # after the writer stopped: ignored
    os.close(w)


def test_bad_fd_stops_writing_quietly():
    """EBADF (fd 2 closed under us): no exception, close returns."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    out = Output(fd=w, background=True)
    out.emit("connect")
    _returns(lambda: out.close(LIVENESS_S))
    assert out.broken


def _blocked_signals(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as fh:
        for line in fh:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk")


def test_writer_thread_blocks_signals(full_pipe):
    """Forwarded signals (TERM, HUP, INT, ALRM) always reach the main thread, never the writer."""
    before = set(os.listdir("/proc/self/task"))
    out = full_pipe.output()
    out.emit("connect")
    new = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
    assert len(new) == 1, new  # one writer thread, started by the first line
    mask = _blocked_signals(new[0])
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM, signal.SIGCHLD):
        assert mask & (1 << (sig - 1)), sig
    assert not _blocked_signals(threading.get_native_id()) & (1 << (signal.SIGTERM - 1))


def test_synchronous_output_is_unchanged():
    """Without background=True, emit writes before it returns (subcommands, tests)."""
    r, w = os.pipe()
    out = Output(fd=w)
    out.emit("x", a=1)
    assert os.read(r, 4096) == b"event=x a=1\n"
    assert out.close(1.0) is True
    os.close(r)
    os.close(w)


def test_no_writer_thread_still_never_blocks(full_pipe, monkeypatch):
    """When no thread can start (RLIMIT_NPROC), a line goes out only if fd has room now."""
    import _thread

    def refuse(*_args: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    out = full_pipe.output()
    _returns(lambda: [out.emit("command", n=i) for i in range(5)])
    assert out.dropped == 5 and not out.broken
    _drain(full_pipe.r, b"", full_pipe.filled)  # the log service catches up
    out.emit("summary", verdict="ok", log_dropped=out.dropped)
    line = os.read(full_pipe.r, 4096)
    assert strict.parse(line) == {"event": "summary", "verdict": "ok", "log_dropped": "5"}


# -- nonblocking=True: serve's workers, an O_NONBLOCK description of their own --

def _own_nonblocking(fd: int) -> int:
    """What the resident parent opens: a second, O_NONBLOCK description of the pipe."""
    return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def test_nonblocking_output_never_blocks_and_keeps_the_summary(full_pipe):
    """On a full pipe: emits return, the backlog is bounded, the summary gets in, the
    pipe's first description stays blocking (the one fd 2 shares with others)."""
    nb = _own_nonblocking(full_pipe.w)
    try:
        out = Output(fd=nb, nonblocking=True)

        def emit_many() -> None:
            for i in range(200):
                out.emit("command", verb="NOOP", n=i)
            out.emit("summary", verdict="ok")

        _returns(emit_many)
        assert out.dropped == 200 - BACKLOG_LINES
        assert os.get_blocking(full_pipe.w)
        assert _returns(lambda: out.close(0.2)) is False  # nobody reads: gives up
        os.set_blocking(full_pipe.r, False)
        seen = b""
        try:
            while True:
                seen += os.read(full_pipe.r, 65536)
        except BlockingIOError:
            pass
        assert seen == b"f" * full_pipe.filled  # no part of a line squeezed in
    finally:
        os.close(nb)


def test_nonblocking_output_drains_in_order_for_a_slow_reader(full_pipe):
    """A reader that comes back: close() writes the backlog, in order, within its bound."""
    nb = _own_nonblocking(full_pipe.w)
    try:
        out = Output(fd=nb, nonblocking=True)
        for i in range(10):
            out.emit("command", n=i)
        out.emit("summary", verdict="ok")
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(
            time.sleep(0.2) or _drain(full_pipe.r, b"event=summary", full_pipe.filled)))
        reader.start()
        assert _returns(lambda: out.close(LIVENESS_S)) is True
        reader.join(LIVENESS_S)
        lines = [strict.parse(x) for x in got[0].splitlines()]
        assert [x.get("n") for x in lines] == [str(i) for i in range(10)] + [None]
    finally:
        os.close(nb)
