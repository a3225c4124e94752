"""The benchmarks still run (quick mode); no timing is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.e2e
def test_bench_banner_latency_quick(tmp_path, need):
    """banner_latency.py --quick measures both chains and writes its JSON."""
    need("tcpserver")
    need("cc")
    out = tmp_path / "banner.json"
    proc = subprocess.run([sys.executable, str(BENCH / "banner_latency.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"direct", "supervise-smtp"}
    assert all(row["n"] == 5 and row["p50_ms"] > 0 for row in result["rows"].values())
    assert "added by supervise-smtp at p50" in proc.stdout
