"""``supervise-smtp serve`` with a crowd of idle sessions: is a new client still served?

    python bench/serve_idle.py [--idle 1000] [--probes 50]

serve runs with ``-c IDLE -b IDLE`` in front of the C SMTP responder
(bench/smtp_sink.c).  IDLE - 1 clients connect, read their banner and then
say nothing: as many live sessions, each a worker of serve and a sink
waiting for a command, the parent polling all their control sockets.
Then, with one slot left:

- **probe**: PROBES new clients one after another, each timed from
  connect() to the whole banner, then QUIT (p50, p95, max);
- **freed**: one more idle client fills the last slot; a new client is
  connected (it waits in the listen backlog: serve is at -c) and one idle
  client leaves; timed from that close to the new client's banner: how
  fast a full server notices a slot has freed and serves the backlog.

Also printed: the parent's RSS and descriptors (its workers' control
sockets among them), the crowd's total unique memory (USS of every worker
and sink, from /proc/PID/smaps_rollup) and how long the crowd took to get
all its banners.  tests/e2e/test_serve_attack.py runs the same pieces with
IDLE = 1000 and a generous 1 s bound (a liveness check, not a timing);
the figures of a run go in docs/serve.md.
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_soak import Soak, parent_status  # noqa: E402

__all__ = ["Crowd", "raise_nofile", "banner_s", "freed_s", "uss_kb", "main"]

BANNER_TIMEOUT_S = 60.0


def raise_nofile(need: int) -> tuple[int, int]:
    """This process's soft RLIMIT_NOFILE up to ``need`` (the hard one too, as root).

    Returns the old (soft, hard) pair for ``resource.setrlimit`` to restore.
    The clients of the crowd are sockets of this process; serve, started
    after, inherits the raised limit (its parent keeps one control socket
    per live worker).
    """
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = old
    if soft < need:
        hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return old


def _banner(sock: socket.socket, deadline: float) -> bytes:
    """Read up to the end of the first line (the 220), before ``deadline``."""
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no banner: {data!r}")
        sock.settimeout(left)
        chunk = sock.recv(512)
        if not chunk:
            raise ConnectionError(f"EOF before the banner: {data!r}")
        data += chunk
    return data


class Crowd:
    """Idle clients of one server: connected, banner read, then silent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socks: list[socket.socket] = []
        self.banners: list[bytes] = []  # the first line each client read

    def grow(self, count: int, timeout: float = BANNER_TIMEOUT_S) -> float:
        """``count`` more idle clients, each with its banner; the seconds it took."""
        start = time.monotonic()
        pending: dict[socket.socket, bytes] = {}
        sel = selectors.DefaultSelector()
        try:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
                sock.setblocking(False)
                pending[sock] = b""
                sel.register(sock, selectors.EVENT_READ)
            deadline = start + timeout
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(pending)} of {count} clients got no banner")
                for key, _ in sel.select(left):
                    sock = key.fileobj  # type: ignore[assignment]
                    chunk = sock.recv(512)
                    if not chunk:
                        raise ConnectionError(f"EOF before the banner: {pending[sock]!r}")
                    pending[sock] += chunk
                    if pending[sock].endswith(b"\n"):
                        if not pending[sock].startswith(b"220 "):
                            raise ConnectionError(f"not a banner: {pending[sock]!r}")
                        sel.unregister(sock)
                        self.banners.append(pending.pop(sock))
                        self.socks.append(sock)
        finally:
            sel.close()
            for sock in pending:
                sock.close()
        return time.monotonic() - start

    def leave(self) -> None:
        """One idle client closes its connection (its sink then sees EOF)."""
        self.socks.pop().close()

    def close(self) -> None:
        while self.socks:
            self.leave()


def banner_s(port: int, timeout: float = BANNER_TIMEOUT_S) -> float:
    """Seconds from connect() to a new client's whole banner; then QUIT and EOF."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        banner = _banner(sock, time.monotonic() + timeout)
        elapsed = time.perf_counter() - t0
        if not banner.startswith(b"220 "):
            raise ConnectionError(f"not a banner: {banner!r}")
        sock.sendall(b"QUIT\r\n")
        while sock.recv(512):
            pass
    return elapsed


def freed_s(crowd: Crowd, port: int, timeout: float = BANNER_TIMEOUT_S) -> tuple[float, bool]:
    """With serve at -c: (seconds from an idle client's close to a waiting client's
    banner, whether the waiting client had been served before that close).

    The waiting client is connected first and given a moment (0.2 s) to show
    that it is not served while every slot is taken.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        early = _readable(sock, 0.2)
        t0 = time.perf_counter()
        crowd.leave()
        banner = _banner(sock, time.monotonic() + timeout)
        elapsed = time.perf_counter() - t0
        if not banner.startswith(b"220 "):
            raise ConnectionError(f"not a banner: {banner!r}")
        sock.sendall(b"QUIT\r\n")
        while sock.recv(512):
            pass
    return elapsed, early


def _readable(sock: socket.socket, seconds: float) -> bool:
    sel = selectors.DefaultSelector()
    try:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(seconds))
    finally:
        sel.close()


def uss_kb(pids: list[int]) -> int:
    """Total unique memory (Private_Clean + Private_Dirty, KiB) of ``pids``."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (its main thread's: serve and its workers have no other)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def crowd_pids(parent: int) -> tuple[list[int], list[int]]:
    """(workers, the sessions' children) under serve's parent."""
    workers = _children(parent)
    return workers, [c for w in workers for c in _children(w)]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=1000, help="serve's -c: sessions held open")
    ap.add_argument("--probes", type=int, default=50)
    ap.add_argument("--log", default="/dev/null", help="serve's stderr (default: discarded)")
    args = ap.parse_args(argv)
    old = raise_nofile(2 * args.idle + 256)
    soak = Soak(Path(args.log), ["-c", str(args.idle), "-b", str(args.idle),
                                 "--stats-interval", "0"])
    crowd = Crowd(soak.port)
    try:
        quiet = parent_status(soak.pid)
        grow = crowd.grow(args.idle - 1)
        workers, sinks = crowd_pids(soak.pid)
        status = parent_status(soak.pid)
        probes = [banner_s(soak.port) for _ in range(args.probes)]
        crowd.grow(1)
        freed, early = freed_s(crowd, soak.port)
        print(f"idle sessions: {len(crowd.socks) + 1} (-c {args.idle}), all banners in "
              f"{grow:.1f} s; workers={len(workers)} sinks={len(sinks)}")
        print(f"parent: rss_kb={status['rss_kb']} (idle server {quiet['rss_kb']}) "
              f"fds={status['fds']} (idle server {quiet['fds']})")
        uss = uss_kb(workers)
        print(f"crowd USS: workers {uss // 1024} MB ({uss // max(1, len(workers))} kB each), "
              f"sinks {uss_kb(sinks) // 1024} MB")
        print(f"new client's banner with {args.idle - 1} idle sessions: "
              f"p50 {_pct(probes, 0.5) * 1000:.2f} ms, p95 {_pct(probes, 0.95) * 1000:.2f} ms, "
              f"max {max(probes) * 1000:.2f} ms over {len(probes)}")
        print(f"at -c {args.idle}: slot freed to the waiting client's banner "
              f"{freed * 1000:.2f} ms (served early: {early})")
        return 0
    finally:
        crowd.close()
        soak.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


if __name__ == "__main__":
    sys.exit(main())
