"""serve under attack: a crowd of idle sessions, a flood at -c, crashing workers, rules changing.

serve (test_serve.Listener) runs the C SMTP responder bench/smtp_sink.c or
small sh programs; the clients are bench/serve_idle.py's (a Crowd of idle
connections, a timed banner).  What is asserted is the mail outcome: every
client gets its banner and its 221, or the refusal tcpserver would give,
and the parent goes on.

Not here, to avoid running them twice:
- many short connections with the parent's RSS and descriptors flat:
  tests/e2e/test_serve_soak.py (10,000 connections; 100,000 with
  SUPERVISE_SMTP_DEEP=1);
- a worker killed mid-session, an idle worker killed: test_serve.py;
- rules rebuilt by tcprules, a rules file missing from the start:
  test_serve_rules.py.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import test_serve
from helpers import events, recv_until_eof
from test_serve import script
from test_serve_rules import compare, tcprules

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchlib import build_sink, parent_fds  # noqa: E402
from serve_idle import Crowd, banner_s, crowd_pids, freed_s  # noqa: E402

pytestmark = pytest.mark.e2e

serve = test_serve.serve
both = test_serve.both
public_dir = test_serve.public_dir

CROWD = 1000
LIVENESS_S = 1.0  # a generous bound: the figures are in docs/serve.md (bench/serve_idle.py)
CROWD_MEMORY_KB = 4 << 20  # ~2.4 MB of each worker's own memory, 1000 of them, with room


@contextmanager
def nofile(soft: int, hard: int) -> Iterator[None]:
    """This process's RLIMIT_NOFILE for a while: what the servers started now inherit."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(hard, old[1])))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def _available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def _no_trouble(log: str) -> None:
    """No connection dropped, no error of the parent."""
    names = {e["event"] for e in events(log)}
    assert not names & {"drop", "serve_error", "worker_lost"}, log[-3000:]


def test_serve_thousand_idle_sessions_new_client_still_served(serve, need):
    """-c 1000 in front of the C sink: 999 idle sessions held, a new client gets its banner
    within 1 s; with all 1000 held the next one waits, and gets it within 1 s of a slot freeing."""
    need("cc")
    sink = str(build_sink())
    assert _available_kb() > CROWD_MEMORY_KB, "not enough memory for 1000 workers"
    with nofile(1024, 4096):  # a common default for supervised services
        server = serve(["-HR", "-l0", "-c", str(CROWD), "-b", str(CROWD)], [sink])
    crowd = Crowd(server.port)
    with nofile(2 * CROWD + 256, 2 * CROWD + 256):  # our clients' sockets
        try:
            crowd.grow(CROWD - 1)
            workers, sinks = crowd_pids(server.pid)
            assert len(workers) >= CROWD - 1 and len(sinks) == CROWD - 1
            probes = [banner_s(server.port) for _ in range(3)]
            assert max(probes) < LIVENESS_S, probes
            crowd.grow(1)
            waited, early = freed_s(crowd, server.port)
            assert not early  # at -c, not served until a slot freed
            assert waited < LIVENESS_S
        finally:
            crowd.close()
    assert server.proc.poll() is None
    _no_trouble(server.log())


def test_serve_nofile_raised_for_the_limit_and_restored_for_the_child(serve, public_dir):
    """A soft RLIMIT_NOFILE below what -c needs (a descriptor per worker in the parent):
    serve raises its own, every client is served, and the program sees the limit as it was."""
    prog = script(public_dir, "nofile", "printf '220 nofile=%s\\r\\n' \"$(ulimit -n)\"\n"
                                        "exec cat >/dev/null\n")
    with nofile(64, 4096):
        server = serve(["-HR", "-l0", "-c", "100", "-b", "100"], [prog])
    crowd = Crowd(server.port)
    try:
        crowd.grow(100)
        assert set(crowd.banners) == {b"220 nofile=64\r\n"}
    finally:
        crowd.close()
    _no_trouble(server.log())


def _sessions(parent: int) -> int:
    return len(crowd_pids(parent)[1])


def test_serve_flood_at_the_limit_loses_no_client(serve, need):
    """-c 5, 50 clients: 45 wait in the backlog (their QUIT already sent), none is served
    while 5 sessions hold the slots, and every one is served once they leave."""
    need("cc")
    sink = str(build_sink())
    server = serve(["-vHR", "-l0", "-c", "5", "-b", "64"], [sink])
    holders = Crowd(server.port)
    holders.grow(5)
    waiting = [socket.create_connection(("127.0.0.1", server.port), timeout=15)
               for _ in range(45)]
    try:
        for sock in waiting:
            sock.sendall(b"QUIT\r\n")
        sel = selectors.DefaultSelector()
        for sock in waiting:
            sel.register(sock, selectors.EVENT_READ)
        assert sel.select(0.3) == []  # at -c: nobody else served
        sel.close()
        assert _sessions(server.pid) == 5
        holders.close()
        for sock in waiting:
            got = recv_until_eof(sock)
            assert got.startswith(b"220 ") and got.endswith(b"\r\n221 bench.example\r\n"), got
    finally:
        holders.close()
        for sock in waiting:
            sock.close()
    ends = server.end_statuses(50)
    # the 45 said QUIT (exit 0); the 5 holders hung up (the sink exits 1, as qmail-smtpd)
    assert sorted(s for _, s in ends) == [0] * 45 + [1 << 8] * 5
    lines = events(server.log())
    assert max(int(e["active"]) for e in lines if e["event"] == "end") <= 4
    assert any(e["event"] == "limit" for e in lines)
    _no_trouble(server.log())


def test_serve_worker_crashing_every_session_parent_carries_on(serve, public_dir, need):
    """Every session's worker dies of SIGSEGV (its child kills it): each end is logged with
    status 11, the parent goes on, leaks no descriptor, and serves normally afterwards."""
    need("cc")
    sink = str(build_sink())
    crash = public_dir / "crash"
    prog = script(public_dir, "crash-worker",
                  f"if [ -e {crash} ]; then kill -SEGV $PPID; exit 0; fi\nexec {sink}\n")
    server = serve(["-vHR", "-l0", "-c", "3"], [prog])
    assert banner_s(server.port) < 15
    server.end_statuses(1)
    before = parent_fds(server.pid)
    crash.write_text("")
    for _ in range(10):  # three at a time: the parent reaps several deaths at once
        batch = [server.connect() for _ in range(3)]
        for sock in batch:
            assert recv_until_eof(sock) == b""
            sock.close()
    ends = server.end_statuses(31)
    crashed = ends[1:]
    assert [s for _, s in crashed] == [signal.SIGSEGV] * 30
    assert len({pid for pid, _ in crashed}) == 30  # each worker died with its session
    crash.unlink()
    for _ in range(5):
        assert banner_s(server.port) < 15
    assert [s for _, s in server.end_statuses(36)[31:]] == [0] * 5
    assert server.proc.poll() is None
    assert parent_fds(server.pid) == before
    assert "event=worker_lost" not in server.log()


# ---------------------------------------------------------------- rules


@pytest.mark.parametrize("allow_missing", [False, True], ids=["dropped", "X-allows"])
def test_serve_rules_removed_while_serving_like_tcpserver(both, public_dir, tmp_path, need,
                                                          allow_missing):
    """The cdb removed under a running server: the next connection is dropped (111), or
    allowed with no rule under -X, as tcpserver; written again, it applies again."""
    need("tcprules")
    cdb = tcprules(tmp_path, ':allow,WHO="rule"\n')
    prog = script(public_dir, "who", 'echo "who=${WHO-none}"\n')
    opts = ["-v", "-HR", "-l0", "-x", cdb, *(["-X"] if allow_missing else [])]
    ts, sv = both(opts, [prog])
    assert compare(ts, sv, ["127.0.0.1"]) == [(b"who=rule\n", 0)]
    os.unlink(cdb)
    want = (b"who=none\n", 0) if allow_missing else (b"", 111 << 8)
    assert compare(ts, sv, ["127.0.0.1"]) == [want]
    tcprules(tmp_path, ':allow,WHO="again"\n')
    assert compare(ts, sv, ["127.0.0.1"]) == [(b"who=again\n", 0)]
    # one worker served all three: what it read of the first cdb was not kept
    assert len({pid for pid, _ in sv.ends()}) == 1


def test_serve_rules_rebuilt_under_a_stream_of_clients(serve, public_dir, tmp_path, need):
    """tcprules rebuilds the cdb 20 times while clients keep connecting: each connection
    gets the old rules or the new ones, never a drop, and the one after a rebuild the new."""
    need("tcprules")
    cdb = tcprules(tmp_path, ':allow,WHO="0"\n')
    prog = script(public_dir, "who", 'echo "who=${WHO-none}"\n')
    server = serve(["-HR", "-l0", "-x", cdb, "-c", "8"], [prog])
    seen: list[bytes] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            seen.append(server.talk())

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(1, 21):
            tcprules(tmp_path, f':allow,WHO="{n}"\n')
            assert server.talk() == b"who=%d\n" % n
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(seen) > 20
    assert set(seen) <= {b"who=%d\n" % n for n in range(21)}, set(seen)
    _no_trouble(server.log())
    assert "where=rules" not in server.log()


def test_serve_nofile_hard_limit_caps_c_and_closes_no_client(serve, public_dir):
    """RLIMIT_NOFILE 64 soft and hard, -c 100, 90 clients at once: serve says the -c its
    descriptors allow, serves no more at once, and closes no client without a banner:
    the rest wait (in the backlog, as under tcpserver) and are served as others leave."""
    prog = script(public_dir, "idle", "printf '220 idle\\r\\n'\nexec cat >/dev/null\n")
    server = serve(["-vHR", "-l0", "-c", "100", "-b", "100"], [prog], nofile=(64, 64))
    cap = int(server.wait_for(r"^event=serve_error where=nofile .*\blimit=(\d+)")[1])
    assert 1 <= cap < 64, server.log()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=15)
             for _ in range(90)]
    banners: dict[socket.socket, bytes] = {}
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
    rounds = 0
    try:
        while len(banners) < len(socks):
            rounds += 1
            assert rounds < 20, (len(banners), server.log()[-2000:])
            got = []
            wait_s = 15.0  # for the first banner of the round; then until none for 0.5 s
            while ready := sel.select(wait_s):
                for key, _ in ready:
                    sock = key.fileobj
                    data = sock.recv(64)  # type: ignore[union-attr]
                    assert data.startswith(b"220 idle"), (data, server.log()[-2000:])
                    banners[sock] = data  # type: ignore[index]
                    sel.unregister(sock)
                    got.append(sock)
                wait_s = 0.5
            assert got, (len(banners), server.log()[-2000:])
            assert len(got) <= cap, (len(got), cap)
            for sock in got:  # they leave: their slots go to those waiting
                sock.close()
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    assert rounds >= 2  # some waited
    assert not {e["event"] for e in events(server.log())} & {"drop", "worker_lost"}, (
        server.log()[-3000:])
