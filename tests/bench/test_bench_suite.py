"""The benchmark suite still runs end to end (quick mode); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
CHAINS = {"direct", "recordio", "supervise-smtp", "supervise-smtp --capture",
          "supervise-smtp --bare-lf fix", "serve"}


@pytest.mark.e2e
def test_bench_suite_quick_measures_every_chain(tmp_path, need):
    """Every metric is measured for every chain, written as JSON and printed as a table."""
    for tool in ("tcpserver", "recordio", "cc"):
        need(tool)
    proc = subprocess.run([sys.executable, str(BENCH / "suite.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("*-quick.json")
    doc = json.loads(path.read_text())
    assert doc["machine"]["cpus"] >= 1 and doc["mode"] == "quick"
    results = doc["results"]
    for metric in ("raw", "data", "rss"):
        assert set(results[metric]) == CHAINS, metric
    for metric in ("banner", "session", "conn_rate", "cpu"):  # start-up: with the floor
        assert set(results[metric]) == CHAINS | {"python exec"}, metric
        assert results[metric]["python exec"]
    for chain in CHAINS:
        assert results["banner"][chain]["p50_ms"] > 0
        assert results["conn_rate"][chain]["N=4"]["median"] > 0
        assert results["raw"][chain]["mb_s"]["min"] > 0
        assert results["data"][chain]["mb_s"]["median"] > 0
        assert results["cpu"][chain]["ms_per_session"]["median"] > 0
        assert results["rss"][chain]["peak_mb"] > 0
    assert set(results["recipients"]) == {"direct", "recordio", "supervise-smtp"}
    assert "10_rss_mb" in results["recipients"]["supervise-smtp"]
    assert results["observer"]["observer alone"]["mb_s"]["n"] == 1
    assert set(doc["ratios"]["DATA MB/s"]) == {"vs_direct", "vs_recordio"}
    names = {b["name"] for b in doc["budgets"]}
    assert names >= {"banner added p50 (ms)", "DATA MB/s, observer on",
                     "serve banner added p50 (ms)", "serve conn/s vs wrapper N=4",
                     "serve parent RSS growth (MB)", "serve parent fds growth"}
    assert set(results["serve_parent"]["serve"]) == {"start", "end"}
    for chain in ("direct", "recordio", "ss --capture"):
        assert chain in proc.stdout.splitlines()[0]
    assert "budgets:" in proc.stdout and str(path) in proc.stdout


def test_bench_suite_rejects_unknown_metric(tmp_path):
    """A typo in --only is a usage error, not a silent empty run."""
    proc = subprocess.run([sys.executable, str(BENCH / "suite.py"), "--only", "bannr",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "bannr" in proc.stderr
    assert not list(tmp_path.iterdir())
