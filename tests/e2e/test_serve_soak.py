"""serve's parent stays flat over many connections, and says so.

The soak: after a warm-up of 1,000 connections, SERVE_SOAK_COUNT (10,000,
the CI figure: ~35 s on the 2-core box) short connections -- banner + QUIT
from the C client bench/smtp_blast.c to the C responder bench/smtp_sink.c
behind each worker -- and the parent's VmRSS grows by less than 1 MB and
its descriptor count does not change.  With SUPERVISE_SMTP_DEEP=1 (the
deep run, not CI) the same test makes 100,000 connections;
bench/serve_soak.py prints the figures along the way.  The same run writes
event=serve_stats lines (--stats-interval 1), so psutil's reads are inside
the soak too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import events, recv_until_eof

pytestmark = pytest.mark.e2e

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from serve_soak import Soak  # noqa: E402

WARMUP = 1000
DEEP = os.environ.get("SUPERVISE_SMTP_DEEP") == "1"
COUNT = int(os.environ.get("SERVE_SOAK_COUNT", "100000" if DEEP else "10000"))


def _stats(log: Path) -> list[dict[str, str]]:
    return [e for e in events(log.read_text("ascii", "replace")) if e["event"] == "serve_stats"]


def test_serve_stats_lines_count_connections(tmp_path: Path, need) -> None:
    """--stats-interval: accepted, active, the parent's RSS and fds, the workers' USS."""
    need("cc")
    log = tmp_path / "serve.err"
    soak = Soak(log, ["--stats-interval", "0.2"], clients=2)
    try:
        soak.blast(1, chunk_s=0.5)
        quiet = soak.quiet_status()
        seen = len(_stats(log))
        deadline = time.monotonic() + 10
        while len(_stats(log)) < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        last = _stats(log)[-1]
    finally:
        assert soak.stop() == 0
    assert int(last["accepted"]) == soak.done > 0
    # the idle workers wait for the next clients; each has memory of its own
    assert last["denied"] == "0" and last["active"] == "0"
    assert int(last["workers"]) == quiet["workers"] > 0
    assert int(last["rss_kb"]) > 1000 and int(last["fds"]) >= 3
    assert int(last["workers_uss_kb"]) > 0
    assert float(last["interval_s"]) == 0.2
    busy = [e for e in _stats(log) if int(e["workers"]) > 0]
    for line in busy:  # a line taken while workers ran reports their memory
        assert int(line["workers_uss_kb"]) > 0


def test_serve_stats_interval_zero_writes_none(tmp_path: Path, need) -> None:
    need("cc")
    log = tmp_path / "serve.err"
    soak = Soak(log, ["--stats-interval", "0", "-v"], clients=1)
    try:
        soak.blast(1, chunk_s=0.3)
        soak.quiet_status()
    finally:
        assert soak.stop() == 0
    names = {e["event"] for e in events(log.read_text("ascii", "replace"))}
    assert "listen" in names and "serve_stats" not in names


def test_parent_rss_and_fds_flat_over_many_connections(tmp_path: Path, need) -> None:
    need("cc")
    log = tmp_path / "serve.err"
    soak = Soak(log, ["--stats-interval", "1"], clients=4)
    try:
        soak.blast(WARMUP)
        base = soak.quiet_status()
        warm = soak.done
        soak.blast(COUNT)
        end = soak.quiet_status()
        deadline = time.monotonic() + 5  # the next serve_stats line has them all
        while time.monotonic() < deadline:
            stats = _stats(log)
            if stats and int(stats[-1]["accepted"]) == soak.done:
                break
            time.sleep(0.1)
    finally:
        assert soak.stop() == 0
    assert soak.failures == 0
    assert soak.done - warm >= COUNT
    growth = end["rss_kb"] - base["rss_kb"]
    assert growth < 1024, (base, end)
    assert end["fds_own"] == base["fds_own"], (base, end)
    assert int(stats[-1]["accepted"]) == soak.done and stats[-1]["active"] == "0"
    # psutil's count is /proc's; each worker has its control socket in the parent
    assert int(stats[-1]["fds"]) - int(stats[-1]["workers"]) == end["fds_own"]


def test_serve_stats_counts_denied_connections(tmp_path: Path, need) -> None:
    """denied: the workers the -x rules turned away (exit 100, status 25600)."""
    need("cc")
    tcprules = need("tcprules")
    cdb = tmp_path / "rules.cdb"
    subprocess.run([tcprules, str(cdb), str(tmp_path / "rules.tmp")],
                   input=b"127.0.0.1:deny\n", check=True)
    log = tmp_path / "serve.err"
    soak = Soak(log, ["--stats-interval", "0.2", "-x", str(cdb)], clients=1)
    try:
        for _ in range(3):  # the C client counts a denied session as a failure
            with socket.create_connection(("127.0.0.1", soak.port), timeout=15) as sock:
                assert recv_until_eof(sock) == b""
        soak.quiet_status()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = _stats(log)
            if stats and stats[-1]["denied"] == "3":
                break
            time.sleep(0.1)
    finally:
        assert soak.stop() == 0
    assert stats[-1]["accepted"] == "3" and stats[-1]["denied"] == "3"
