"""How fast ``supervise-smtp report`` reads a big log, and in how much memory.

    python3 bench/report_bench.py [--lines N] [--remotes M] [--mix summaries|mixed]
                                  [--stamp tai64n|svlogd|none] [--gzip] [--keep DIR]

Writes a log of N lines (default 1,000,000) as multilog would (``@tai64n``
stamps, one second apart, spanning days), its summary lines made by
output.format_logfmt with the fields real sessions carry, their remotes
drawn from M distinct addresses (default N: every connection from a new
address, the worst case for the per-remote tables), bare_lf and queue
failures from a few heavy hitters.  ``--mix mixed`` makes it a real log's
mix: per connection tcpserver's ``pid``/``ok``/``end`` lines and now and
then an ``event=reject``.  Then runs ``supervise-smtp report`` (text, and
``--json``) on it in a child process and prints lines/s and the child's
peak RSS (ru_maxrss).  The heavy hitters must come out on top with their
exact counts (checked, so a fast wrong answer is no result).
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from supervise_smtp.session.output import format_logfmt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
START = 1_795_000_000  # 2026-11-18, UNIX time of the first line
# Heavy hitters: (verdict, connections).  The last one hides among the
# client_lost_after_rcpt of every other address, where the sketch drops keys.
HEAVY = {"192.0.2.7": ("bare_lf", 2000), "198.51.100.9": ("queue_temp_fail", 1500),
         "203.0.113.5": ("client_lost_after_rcpt", 3000)}


def _addr(i: int) -> str:
    """The i-th distinct client address (10.0.0.0/8 and onwards, never a heavy one)."""
    return f"{10 + (i >> 24) % 200}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _summary(pid: int, remote: str, verdict: str) -> dict[str, object]:
    fields: dict[str, object] = {
        "event": "summary", "remote": remote, "pid": pid, "verdict": verdict,
        "child_pid": pid + 1, "stage": "quit", "reason": "QUIT answered",
        "helo_name": "mail.example.net", "mail_from_domain": "example.net",
        "ehlo": 1, "mail": 1, "rcpt": 1, "data": 1, "quit": 1, "commands": 5,
        "bytes_in": 2311, "bytes_out": 412, "tls": pid % 3 == 0,
    }
    if fields["tls"]:
        fields.update(tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384")
    fields.update(queued="yes", reply_delivered="yes", queue_pid=pid + 7, queue_exit=0,
                  last_reply="221 mx.example.org", duration_ms=143, exit=0)
    if verdict == "bare_lf":
        fields.update(stage="data_body", reason="451 smtplf after 5 bare LF, first at body "
                      "line 1", queued="no", bare_lf=5, bare_lf_line=1,
                      last_reply="451 See http://pobox.com/~djb/docs/smtplf.html.", exit=1)
    elif verdict == "queue_temp_fail":
        fields.update(reason="451 disk_full after DATA", queued="no", queue="disk_full",
                      last_reply="451 qq write error or disk full (#4.3.0)")
    elif verdict == "client_lost_after_rcpt":
        fields.update(stage="rcpt", reason="client closed in stage rcpt before QUIT",
                      last_reply="250 ok", exit=1)
    return fields


def write_log(path: Path, lines: int, remotes: int, mix: str, stamp: str,
              compress: bool) -> dict[str, int]:
    """The log file; returns the counts the report must find."""
    opener = gzip.open if compress else open
    heavy = [(addr, verdict) for addr, (verdict, n) in HEAVY.items() for _ in range(n)]
    per_connection = 4.2 if mix == "mixed" else 1.0  # lines
    spread = max(int(lines / per_connection) // (len(heavy) + 1), 1)
    want = {"lines": 0, "summaries": 0, "foreign": 0, "events": 0}
    sent = dict.fromkeys(HEAVY, 0)  # heavy hitters' connections written
    with opener(path, "wb") as out:  # type: ignore[operator]
        i = pid = 0
        buf: list[bytes] = []
        while want["lines"] < lines:
            t = START + i
            if stamp == "tai64n":
                prefix = f"@{2**62 + 10 + t:016x}{(i * 7919) % 10**9:08x} "
            elif stamp == "svlogd":
                prefix = time.strftime("%Y-%m-%d_%H:%M:%S", time.gmtime(t)) + ".12345 "
            else:
                prefix = ""
            pid += 2
            if heavy and i % spread == spread - 1:
                remote, verdict = heavy.pop()
                sent[remote] += 1
            else:
                remote = _addr(i % remotes)
                verdict = "client_lost_after_rcpt" if i % 10 == 0 else "ok"
            group = [format_logfmt(_summary(pid, remote, verdict))]
            if mix == "mixed":
                group.insert(0, f"tcpserver: pid {pid} from {remote}\n".encode())
                group.insert(1, f"tcpserver: ok {pid} mx:192.0.2.1:25 :{remote}::4{i % 9999}\n"
                             .encode())
                if i % 5 == 0:
                    group.insert(2, format_logfmt({
                        "event": "reject", "remote": remote, "pid": pid, "code": 553,
                        "text": "sorry, that domain isn't in my list of allowed rcpthosts "
                                "(#5.7.1)", "command": "RCPT", "arg": "x@elsewhere.example",
                        "in_stage": "rcpt"}))
                group.append(f"tcpserver: end {pid} status 0\n".encode())
            for line in group:
                if want["lines"] >= lines:
                    break
                buf.append(prefix.encode() + line)
                want["lines"] += 1
                if line.startswith(b"event=summary"):
                    want["summaries"] += 1
                elif line.startswith(b"event="):
                    want["events"] += 1
                else:
                    want["foreign"] += 1
            if len(buf) >= 10000:
                out.write(b"".join(buf))
                buf.clear()
            i += 1
        out.write(b"".join(buf))
    want.update({f"heavy {addr}": n for addr, n in sent.items()})
    return want


def run_report(path: Path, extra: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS KiB, stdout) of one report run in a child.

    The peak is the largest of all children so far (ru_maxrss): the log writer
    runs in this process, so it is the report's own.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "supervise_smtp", "report", *extra, str(path)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, after.ru_maxrss, proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--remotes", type=int, default=0, help="distinct addresses (default: N)")
    p.add_argument("--mix", choices=("summaries", "mixed"), default="summaries")
    p.add_argument("--stamp", choices=("tai64n", "svlogd", "none"), default="tai64n")
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--keep", help="write the log here and keep it")
    a = p.parse_args(argv)
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="report-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / ("current.gz" if a.gzip else "current")
    t0 = time.perf_counter()
    want = write_log(path, a.lines, a.remotes or a.lines, a.mix, a.stamp, a.gzip)
    print(f"wrote {want['lines']} lines ({path.stat().st_size / 1e6:.0f} MB"
          f"{' gzip' if a.gzip else ''}, {a.mix}, {a.stamp} stamps) in "
          f"{time.perf_counter() - t0:.1f} s")
    try:
        for extra in ([], ["--json"]):
            wall, cpu, peak, out = run_report(path, extra)
            print(f"report {' '.join(extra) or '(text)':8} {wall:6.2f} s wall "
                  f"({want['lines'] / wall:9,.0f} lines/s), {cpu:6.2f} s CPU "
                  f"({want['lines'] / cpu:9,.0f} lines/s), peak RSS {peak / 1024:.1f} MB")
        doc = json.loads(out)
        got = doc["input"]
        for key in ("lines", "summaries", "foreign", "events"):
            assert got[key] == want[key], (key, got[key], want[key])
        assert got["malformed"] == 0, got
        for addr, (verdict, _) in HEAVY.items():
            n = want[f"heavy {addr}"]
            if n:
                top = doc["top_remotes"][verdict]["top"][0]
                assert (top["remote"], top["count"], top["error"]) == (addr, n, 0), top
        lost = doc["top_remotes"].get("client_lost_after_rcpt", {})
        print(f"checked: counts exact, heavy hitters on top; client_lost_after_rcpt table "
              f"exact={lost.get('exact')} over {lost.get('connections')} connections")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
