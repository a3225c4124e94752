"""The benchmark suite: supervise-smtp side by side with direct and recordio.

    python3 bench/suite.py [--quick] [--reps N] [--out DIR] [--only METRIC,...]

Every chain is tcpserver on 127.0.0.1 in front of the same C responder
(bench/smtp_sink.c): ``direct`` (tcpserver -> sink), ``recordio``
(tcpserver -> recordio -> sink) and supervise-smtp in observe mode, with
``--capture DIR`` (every connection kept) and with ``--bare-lf fix``; and
``serve``: ``supervise-smtp serve`` in tcpserver's place, with the same
options, forking the same session in front of the same sink (the resident
mode's budgets of DESIGN.md, and its parent's RSS and fds at the start and
at the end of the run).  All
chains are up at once and measured interleaved, in a rotating order, several
repetitions; the result is the ratio to direct and to recordio in the same
run (min and median over the repetitions are both kept in the JSON).  Logs
of every chain go to /dev/null, which flatters recordio most.

The table is printed and every figure is written to
bench/results/<time>-<mode>.json with the machine's details.  ``--quick``
runs each case a handful of times with small sizes: the test suite uses it to
check that the suite still works, never to assert a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from benchlib import (  # noqa: E402
    HERE,
    Client,
    Server,
    body,
    build,
    build_sink,
    machine,
    observer_in_data,
    parent_fds,
    send_all,
    vm_hwm_kib,
    wrapper_command,
)

WRAPPER = "supervise-smtp"
SERVE = "serve"
MB = 1_000_000


class Sizes:
    """How much each case does; --quick shrinks everything."""

    def __init__(self, quick: bool) -> None:
        self.reps = 1 if quick else 3
        self.banner_n = 5 if quick else 60
        self.session_n = 3 if quick else 20
        self.cpu_n = 30 if quick else 200
        self.rate_clients = (1, 4) if quick else (1, 4, 16)
        self.rate_seconds = 0.25 if quick else 2.0
        self.raw_bytes = 2 * MB if quick else 100 * MB
        self.data_bytes = 2 * MB if quick else 100 * MB
        self.recipients = (1, 10) if quick else (1, 10, 100, 1000)
        self.message_sizes = (1000, 100_000) if quick else (1000, MB, 100 * MB)
        self.observer_mb = 2 if quick else 100


# The floor for start-up figures: the same interpreter doing nothing but
# exec the child.  No Python wrapper can start faster than this.
FLOOR = "python exec"
START_UP_METRICS = ("banner", "session", "conn_rate", "cpu")


def chains(sink: str, capture_dir: Path, wrapper: list[str]) -> dict[str, list[str]]:
    return {
        "direct": [],
        "recordio": ["recordio"],
        FLOOR: [sys.executable, "-c", "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"],
        WRAPPER: [*wrapper, "--"],
        f"{WRAPPER} --capture": [*wrapper, "--capture", str(capture_dir), "--"],
        f"{WRAPPER} --bare-lf fix": [*wrapper, "--bare-lf", "fix", "--"],
        SERVE: [*wrapper, "serve"],  # not under tcpserver: in its place (ServeServer)
    }


class ServeServer(Server):
    """``supervise-smtp serve`` with the options benchlib.Server gives tcpserver."""

    def __init__(self, serve: list[str], prog: list[str]) -> None:
        super().__init__(prog, front=tuple(serve), start_s=10.0)

    def session_pid(self, client_port: int) -> int | None:
        """The worker (serve's child) whose child has our client port in its environment."""
        pid = self.proc.pid
        want = f"TCPREMOTEPORT={client_port}".encode()
        for worker in _children(pid):
            for child in _children(worker):
                try:
                    env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if want in env:
                    return worker
        return None

    def status(self) -> dict[str, int]:
        """The parent's VmRSS (KiB) and open descriptors, now."""
        pid = self.proc.pid
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        uss = [_uss_kb(w) for w in _children(pid)]
        uss = [u for u in uss if u is not None]
        return {"rss_kb": rss, "fds": len(parent_fds(pid)), "workers": len(uss),
                "worker_uss_kb": int(sum(uss) / len(uss)) if uss else 0}


def _uss_kb(pid: int) -> int | None:
    """Memory that is the worker's alone (Private_Clean + Private_Dirty), what psutil calls USS."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("Private_Clean:", "Private_Dirty:")))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start_server(name: str, cmd: list[str], *prog: str) -> Server:
    """The chain ``name``: tcpserver running cmd + prog, or serve running prog."""
    if name == SERVE:
        return ServeServer(cmd, list(prog))
    return Server([*cmd, *prog])


# --- one measurement each; every function returns a number ----------------


def banner_ms(srv: Server) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        if not s.recv(1):
            raise RuntimeError("no banner")
        t1 = time.perf_counter()
        s.sendall(b"QUIT\r\n")
        while s.recv(4096):
            pass
    return (t1 - t0) * 1000


def session_ms(srv: Server, recipients: int = 1, message: bytes = b"") -> float:
    """A whole small-message session, connect to the end of the 221."""
    message = message or body(1000)
    t0 = time.perf_counter()
    c = Client(srv.port)
    c.reply()
    c.envelope(recipients)
    c.command(b"DATA\r\n", b"354")
    c.sock.sendall(message + b".\r\n")
    if not c.reply().startswith(b"250"):
        raise RuntimeError("message not accepted")
    c.quit()
    return (time.perf_counter() - t0) * 1000


def data_transfer(srv: Server, message: bytes) -> tuple[float, int | None]:
    """MB/s of one DATA body, from its first byte to the 250; and session RSS."""
    c = Client(srv.port)
    c.reply()
    c.envelope()
    c.command(b"DATA\r\n", b"354")
    t0 = time.perf_counter()
    send_all(c.sock, message)
    c.sock.sendall(b".\r\n")
    if not c.reply().startswith(b"250"):
        raise RuntimeError("message not accepted")
    elapsed = time.perf_counter() - t0
    rss = vm_hwm_kib(srv.session_pid(c.local_port))
    c.quit()
    return len(message) / elapsed / MB, rss


def recipients_case(srv: Server, recipients: int) -> tuple[float, int | None]:
    """Session latency and session-process RSS with many recipients."""
    t0 = time.perf_counter()
    c = Client(srv.port)
    c.reply()
    c.envelope(recipients)
    c.command(b"DATA\r\n", b"354")
    c.sock.sendall(body(1000) + b".\r\n")
    if not c.reply().startswith(b"250"):
        raise RuntimeError("message not accepted")
    rss = vm_hwm_kib(srv.session_pid(c.local_port))
    c.quit()
    return (time.perf_counter() - t0) * 1000, rss


def raw_transfer(srv: Server, payload: bytes) -> float:
    """MB/s of a raw stream: all of it in, half-close, the sink's count back."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as s:
        send_all(s, payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    elapsed = time.perf_counter() - t0
    if got != b"done %d\r\n" % len(payload):
        raise RuntimeError(f"raw stream: sink answered {got!r}")
    return len(payload) / elapsed / MB


def conn_rate(blast: str, srv: Server, clients: int, seconds: float) -> float:
    out = subprocess.run([blast, str(srv.port), str(clients), str(seconds)],
                         capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    fields = dict(kv.split("=") for kv in out.split())
    if int(fields["failures"]):
        raise RuntimeError(f"conn/s: {fields['failures']} sessions failed")
    return int(fields["sessions"]) / float(fields["seconds"])


def cpu_ms_per_session(name: str, cmd: list[str], sink: str, n: int) -> float:
    """User+sys CPU of the whole chain (tcpserver or serve, and all it reaped) per session."""
    srv = start_server(name, cmd, sink)
    try:
        session_ms(srv)  # warm: serve's own start-up is not a session's cost
        time.sleep(0.3)
        before = chain_cpu_s(srv.proc.pid)
        for _ in range(n):
            session_ms(srv)
        time.sleep(0.3)  # let tcpserver reap the last session
        after = chain_cpu_s(srv.proc.pid)
    finally:
        srv.stop()
    return (after - before) * 1000 / n


def chain_cpu_s(pid: int, depth: int = 0) -> float:
    """User+sys seconds of pid, of every child it has reaped and of its live
    children (serve's reused workers live on), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    total = (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")
    if depth == 0:
        total += sum(chain_cpu_s(child, 1) for child in _children(pid))
    return total


def observer_alone(megabytes: int) -> float:
    """MB/s of the sans-IO observer fed a clean body in the relay's 128 KiB chunks."""
    data = body(megabytes * MB)
    chunks = [data[i:i + 131072] for i in range(0, len(data), 131072)]
    obs: Any = observer_in_data()
    t0 = time.perf_counter()
    for chunk in chunks:
        obs.feed_client(chunk)
    obs.feed_client(b".\r\n")
    return len(data) / (time.perf_counter() - t0) / MB


# --- the run ----------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float | int]:
    return {"min": min(values), "median": statistics.median(values),
            "max": max(values), "n": len(values)}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Run:
    def __init__(self, sizes: Sizes, only: set[str] | None) -> None:
        self.sizes = sizes
        self.only = only
        self.results: dict[str, dict[str, object]] = {}

    def wanted(self, metric: str) -> bool:
        return self.only is None or metric in self.only

    def record(self, metric: str, chain: str, key: str, value: object) -> None:
        self.results.setdefault(metric, {}).setdefault(chain, {})[key] = value  # type: ignore[index]

    def interleaved(self, names: list[str], reps: int,
                    one: Callable[[str], list[float]]) -> dict[str, list[float]]:
        """Run one(chain) for every chain, reps times, in a rotating order."""
        got: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                got[name].extend(one(name))
        return got

    def interleaved_rss(self, names: list[str], reps: int,
                        one: Callable[[str], tuple[float, int | None]],
                        ) -> tuple[dict[str, list[float]], dict[str, float]]:
        """interleaved() for cases that also read the session's peak RSS (KiB)."""
        peak: dict[str, float] = {}

        def figure(name: str) -> list[float]:
            value, kib = one(name)
            if kib is not None:
                peak[name] = max(peak.get(name, 0.0), kib / 1024)
            return [value]

        return self.interleaved(names, reps, figure), peak


def fresh_bytecode() -> None:
    """Byte code of the package under test is up to date (PYTHONDONTWRITEBYTECODE
    in a working tree would otherwise make every connection compile it)."""
    import compileall

    import supervise_smtp

    compileall.compile_dir(str(Path(supervise_smtp.__file__).parent), quiet=1)


def run(sizes: Sizes, only: set[str] | None, wrapper: list[str]) -> dict[str, object]:
    fresh_bytecode()
    sink = str(build_sink())
    blast = str(build("smtp_blast", "-pthread"))
    r = Run(sizes, only)
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as capture_dir:
        cmds = chains(sink, Path(capture_dir), wrapper)
        names = list(cmds)
        smtp = {name: start_server(name, cmd, sink) for name, cmd in cmds.items()}
        raw = {name: start_server(name, cmd, sink, "raw") for name, cmd in cmds.items()
               if name != FLOOR}
        try:
            for srv in smtp.values():  # warm-up: page cache, byte code
                for _ in range(3):
                    session_ms(srv)
            parent = smtp[SERVE]
            assert isinstance(parent, ServeServer)
            before = parent.status()
            measure(r, names, smtp, raw, cmds, sink, blast)
            r.record("serve_parent", SERVE, "start", before)
            r.record("serve_parent", SERVE, "end", parent.status())
        finally:
            for srv in [*smtp.values(), *raw.values()]:
                srv.stop()
    return r.results


def measure(r: Run, every: list[str], smtp: dict[str, Server], raw: dict[str, Server],
            cmds: dict[str, list[str]], sink: str, blast: str) -> None:
    sz = r.sizes
    names = [n for n in every if n != FLOOR]  # the floor is for start-up figures only
    latencies: list[tuple[str, Callable[[Server], float], int]] = [
        ("banner", banner_ms, sz.banner_n), ("session", session_ms, sz.session_n)]
    for metric, timed, count in latencies:
        if r.wanted(metric):
            got = r.interleaved(every, sz.reps,
                                lambda n, t=timed, k=count: [t(smtp[n]) for _ in range(k)])
            for name, v in got.items():
                r.record(metric, name, "p50_ms", statistics.median(v))
                r.record(metric, name, "p95_ms", pct(v, 95))
    if r.wanted("conn_rate"):
        for clients in sz.rate_clients:
            got = r.interleaved(every, sz.reps,
                                lambda n, c=clients: [conn_rate(blast, smtp[n], c,
                                                                sz.rate_seconds)])
            for name, v in got.items():
                r.record("conn_rate", name, f"N={clients}", stats(v))
    if r.wanted("raw"):
        payload = bytes(range(256)) * (sz.raw_bytes // 256)
        got = r.interleaved(names, sz.reps, lambda n: [raw_transfer(raw[n], payload)])
        for name, v in got.items():
            r.record("raw", name, "mb_s", stats(v))
    if r.wanted("data") or r.wanted("rss"):
        message = body(sz.data_bytes)
        got, peak = r.interleaved_rss(names, sz.reps, lambda n: data_transfer(smtp[n], message))
        for name, v in got.items():
            r.record("data", name, "mb_s", stats(v))
            if name in peak:
                r.record("rss", name, "peak_mb", peak[name])
    if r.wanted("cpu"):
        got = r.interleaved(every, sz.reps,
                            lambda n: [cpu_ms_per_session(n, cmds[n], sink, sz.cpu_n)])
        for name, v in got.items():
            r.record("cpu", name, "ms_per_session", stats(v))
    scaled = ["direct", "recordio", WRAPPER]
    if r.wanted("recipients"):
        for count in sz.recipients:
            got, peak = r.interleaved_rss(
                scaled, sz.reps, lambda n, c=count: recipients_case(smtp[n], c))
            for name, v in got.items():
                r.record("recipients", name, f"{count}_ms", statistics.median(v))
                if name in peak:
                    r.record("recipients", name, f"{count}_rss_mb", peak[name])
    if r.wanted("message_size"):
        for size in sz.message_sizes:
            message = body(size)
            got = r.interleaved(scaled, sz.reps,
                                lambda n, m=message: [data_transfer(smtp[n], m)[0]])
            for name, v in got.items():
                r.record("message_size", name, f"{size}_mb_s", statistics.median(v))
    if r.wanted("observer"):
        r.record("observer", "observer alone", "mb_s",
                 stats([observer_alone(sz.observer_mb) for _ in range(sz.reps)]))


METRICS = ("banner", "session", "conn_rate", "raw", "data", "rss", "cpu", "recipients",
           "message_size", "observer")

# --- the report -------------------------------------------------------------

# metric, key, unit, higher is better
TABLE = [
    ("banner", "p50_ms", "banner p50 ms", False),
    ("banner", "p95_ms", "banner p95 ms", False),
    ("session", "p50_ms", "session p50 ms", False),
    ("session", "p95_ms", "session p95 ms", False),
    ("conn_rate", "N=1", "conn/s N=1", True),
    ("conn_rate", "N=4", "conn/s N=4", True),
    ("conn_rate", "N=16", "conn/s N=16", True),
    ("raw", "mb_s", "raw MB/s", True),
    ("data", "mb_s", "DATA MB/s", True),
    ("cpu", "ms_per_session", "CPU ms/session", False),
    ("rss", "peak_mb", "peak RSS MB", False),
]


def value(results: dict[str, object], metric: str, chain: str, key: str) -> float | None:
    v = results.get(metric, {}).get(chain, {}).get(key)  # type: ignore[union-attr]
    if isinstance(v, dict):
        return float(v["median"])
    return None if v is None else float(v)


def ratios(results: dict[str, object]) -> dict[str, dict[str, float]]:
    """supervise-smtp over direct and over recordio, for each table row."""
    out: dict[str, dict[str, float]] = {}
    for metric, key, label, _ in TABLE:
        w = value(results, metric, WRAPPER, key)
        for base in ("direct", "recordio"):
            b = value(results, metric, base, key)
            if w is not None and b:
                out.setdefault(label, {})[f"vs_{base}"] = w / b
    return out


def budgets(results: dict[str, object]) -> list[tuple[str, float, str, bool]]:
    """The budgets of DESIGN.md, from this run's medians."""
    out = []

    def get(metric: str, chain: str, key: str) -> float | None:
        return value(results, metric, chain, key)

    w, d = get("banner", WRAPPER, "p50_ms"), get("banner", "direct", "p50_ms")
    if w is not None and d is not None:
        out.append(("banner added p50 (ms)", w - d, "<= 15", w - d <= 15))
    w, d, rec = (get("raw", c, "mb_s") for c in (WRAPPER, "direct", "recordio"))
    if w and rec:
        out.append(("raw MB/s vs recordio", w / rec, ">= 10x", w / rec >= 10))
    if w and d:
        out.append(("raw MB/s vs direct", w / d, ">= 0.3x", w / d >= 0.3))
    w = get("data", WRAPPER, "mb_s")
    if w:
        out.append(("DATA MB/s, observer on", w, ">= 300", w >= 300))
    for key in ("N=1", "N=4", "N=16"):
        w, rec = get("conn_rate", WRAPPER, key), get("conn_rate", "recordio", key)
        if w and rec:
            out.append((f"conn/s vs recordio {key}", w / rec, ">= 0.15x", w / rec >= 0.15))
    w = get("rss", WRAPPER, "peak_mb")
    if w:
        out.append(("wrapper peak RSS (MB)", w, "<= 20", w <= 20))
    return out + serve_budgets(results)


def serve_budgets(results: dict[str, object]) -> list[tuple[str, float, str, bool]]:
    """The resident mode's budgets (DESIGN.md "Budgets"), from this run's medians."""
    out = []

    def get(metric: str, chain: str, key: str) -> float | None:
        return value(results, metric, chain, key)

    s, d = get("banner", SERVE, "p50_ms"), get("banner", "direct", "p50_ms")
    if s is not None and d is not None:
        out.append(("serve banner added p50 (ms)", s - d, "<= 3", s - d <= 3))
    for key in ("N=1", "N=4", "N=16"):
        s, rec, w = (get("conn_rate", c, key) for c in (SERVE, "recordio", WRAPPER))
        if s and rec:
            out.append((f"serve conn/s vs recordio {key}", s / rec, ">= 0.5x", s / rec >= 0.5))
        if s and w:
            out.append((f"serve conn/s vs wrapper {key}", s / w, ">= 3x", s / w >= 3))
    s, w = get("data", SERVE, "mb_s"), get("data", WRAPPER, "mb_s")
    if s and w:
        out.append(("serve DATA MB/s vs wrapper", s / w, ">= 0.9x", s / w >= 0.9))
    parent = results.get("serve_parent", {}).get(SERVE)  # type: ignore[attr-defined]
    if parent:
        grown = (parent["end"]["rss_kb"] - parent["start"]["rss_kb"]) / 1024
        out.append(("serve parent RSS growth (MB)", grown, "< 1", grown < 1))
        fds = parent["end"]["fds"] - parent["start"]["fds"]
        out.append(("serve parent fds growth", fds, "== 0", fds == 0))
    return out


def report(results: dict[str, object]) -> str:
    names: list[str] = []
    for metric, *_ in TABLE:  # the chains, in the order they were measured
        names += [n for n in results.get(metric, {}) if n not in names]  # type: ignore[attr-defined]
    short = {n: n.replace(WRAPPER, "ss") for n in names}
    width = max(12, *(len(v) + 2 for v in short.values()))
    lines = [f"{'':<16}" + "".join(f"{short[n]:>{width}}" for n in names)
             + f"{'ss/direct':>11}{'ss/recordio':>12}"]
    rat = ratios(results)
    for metric, key, label, _ in TABLE:
        cells = [value(results, metric, n, key) for n in names]
        if all(c is None for c in cells):
            continue
        row = f"{label:<16}" + "".join(f"{'-' if c is None else f'{c:.2f}':>{width}}"
                                       for c in cells)
        rr = rat.get(label, {})
        nan = float("nan")
        row += f"{rr.get('vs_direct', nan):>11.2f}{rr.get('vs_recordio', nan):>12.2f}"
        lines.append(row)
    lines.append("(ss = supervise-smtp; medians of the repetitions; ratios are ss over the base)")
    for metric, label in (("recipients", "recipients"), ("message_size", "message size")):
        rows = results.get(metric)
        if not rows:
            continue
        lines.append(f"\n{label}:")
        for chain, figures in rows.items():  # type: ignore[union-attr]
            lines.append(f"  {chain:<16} " + "  ".join(f"{k}={v:.2f}" for k, v in figures.items()))
    parent = results.get("serve_parent", {}).get(SERVE)  # type: ignore[attr-defined]
    if parent:
        lines.append(f"\nserve parent: RSS {parent['start']['rss_kb']} -> "
                     f"{parent['end']['rss_kb']} KiB, fds {parent['start']['fds']} -> "
                     f"{parent['end']['fds']} over the run; {parent['end'].get('workers', 0)} "
                     f"workers left, USS {parent['end'].get('worker_uss_kb', 0)} KiB each")
    obs = value(results, "observer", "observer alone", "mb_s")
    if obs is not None:
        lines.append(f"\nobserver alone: {obs:.0f} MB/s (clean DATA body, 128 KiB chunks)")
    checks = budgets(results)
    if checks:
        lines.append("\nbudgets:")
        for label, got, want, ok in checks:
            lines.append(f"  {label:<28} {got:10.2f}  {want:<8} {'met' if ok else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds, small sizes")
    ap.add_argument("--reps", type=int, help="repetitions of every case")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="directory for the JSON")
    ap.add_argument("--wrapper", type=Path,
                    help="supervise-smtp program to measure (default: the installed one); "
                         "for before/after runs against another checkout")
    ap.add_argument("--only", help="comma-separated metrics: " + ",".join(METRICS))
    args = ap.parse_args(argv)
    for tool in ("tcpserver", "recordio", "cc"):
        if not shutil.which(tool):
            print(f"suite: {tool} not found (sh scripts/bootstrap.sh installs it)", file=sys.stderr)
            return 111
    sizes = Sizes(args.quick)
    if args.reps:
        sizes.reps = args.reps
    only = set(args.only.split(",")) if args.only else None
    if only is not None and only - set(METRICS):
        ap.error(f"unknown metric in --only: {','.join(sorted(only - set(METRICS)))}")
    started = time.time()
    wrapper = [str(args.wrapper)] if args.wrapper else wrapper_command()
    results = run(sizes, only, wrapper)
    text = report(results)
    print(text)
    doc = {
        "suite": "supervise-smtp bench", "mode": "quick" if args.quick else "full",
        "machine": machine(), "seconds": round(time.time() - started, 1),
        "wrapper": wrapper, "sizes": vars(sizes), "results": results, "ratios": ratios(results),
        "budgets": [{"name": n, "value": v, "target": t, "met": ok}
                    for n, v, t, ok in budgets(results)],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y%m%dT%H%M%S')}-{doc['mode']}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
