"""Time to the first banner byte: tcpserver -> child, with and without supervise-smtp.

Start-up is paid once per SMTP connection, so this is the wrapper's first
budget (DESIGN.md: <= 15 ms added at p50).  Both chains run in the same
process, interleaved, against the same tiny C responder (bench/smtp_sink.c),
so that machine noise hits both alike.  Prints a table; --json FILE writes
the figures.  --quick runs a few connections only (used by the test suite to
check the benchmark still works; no timing is asserted anywhere).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Server, build_sink, machine, wrapper_command  # noqa: E402


def banner_ms(port: int) -> float:
    """Connect, wait for the first byte of the banner, QUIT; wall milliseconds."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if not s.recv(1):
            raise RuntimeError("no banner")
        t1 = time.perf_counter()
        s.sendall(b"QUIT\r\n")
        while s.recv(4096):
            pass
    return (t1 - t0) * 1000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="connections per chain")
    ap.add_argument("--quick", action="store_true", help="a few connections only")
    ap.add_argument("--json", type=Path, help="write results here")
    args = ap.parse_args(argv)
    n = 5 if args.quick else args.n
    if not shutil.which("tcpserver"):
        print("banner_latency: tcpserver not found (apt install ucspi-tcp)", file=sys.stderr)
        return 111
    sink = str(build_sink())
    chains = {
        "direct": [sink],
        "supervise-smtp": [*wrapper_command(), "--", sink],
    }
    servers = {name: Server(cmd) for name, cmd in chains.items()}
    times: dict[str, list[float]] = {name: [] for name in chains}
    try:
        for srv in servers.values():  # warm-up: page cache, pyc files
            for _ in range(3):
                banner_ms(srv.port)
        for _ in range(n):
            for name, srv in servers.items():
                times[name].append(banner_ms(srv.port))
    finally:
        for srv in servers.values():
            srv.stop()
    rows = {
        name: {"p50_ms": statistics.median(v), "p95_ms": pct(v, 95), "min_ms": min(v), "n": len(v)}
        for name, v in times.items()
    }
    added = rows["supervise-smtp"]["p50_ms"] - rows["direct"]["p50_ms"]
    print(f"{'chain':<16} {'p50 ms':>8} {'p95 ms':>8} {'min ms':>8} {'n':>5}")
    for name, r in rows.items():
        print(f"{name:<16} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['min_ms']:8.2f} {r['n']:5d}")
    print(f"added by supervise-smtp at p50: {added:.2f} ms (budget 15 ms)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "bench": "banner_latency", "rows": rows, "added_p50_ms": added,
            "machine": machine(),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
