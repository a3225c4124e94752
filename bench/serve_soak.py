"""Soak of ``supervise-smtp serve``'s parent: its RSS and fds over many connections.

    python bench/serve_soak.py [--warmup 1000] [--count 100000] [--every 10000]
                               [--clients 4] [--stats-interval 5]

serve runs the C SMTP responder (bench/smtp_sink.c) behind each worker; the C
client (bench/smtp_blast.c) does banner + QUIT on CLIENTS parallel
connections.  After the warm-up, and every EVERY connections, the parent's
VmRSS (/proc/PID/status) and open descriptors (/proc/PID/fd) are printed,
each read once no worker is left; at the end, the growth over the baseline.
The CI test (tests/e2e/test_serve_soak.py) runs the same pieces with 10,000
connections; this is the long run (100,000 by default), not in CI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import build, build_sink, parent_fds, printed_port, wrapper_command  # noqa: E402

__all__ = ["Soak", "parent_status", "main"]


def parent_status(pid: int) -> dict[str, int]:
    """VmRSS in KiB and the number of open descriptors of ``pid``, now."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (serve's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


class Soak:
    """serve on 127.0.0.1 (port from -1) in front of the C sink; its log in a file."""

    def __init__(self, log_path: Path, extra: list[str] | None = None,
                 clients: int = 4) -> None:
        self.sink = str(build_sink())
        self.blast_exe = str(build("smtp_blast", "-pthread"))
        self.clients = clients
        self.log_path = log_path
        argv = [*wrapper_command(), "serve", "-R", "-H", "-l", "0", "-c", "100",
                *(extra or []), "-1", "127.0.0.1", "0", self.sink]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=log,
                                         start_new_session=True)
        port = printed_port(self.proc, 15)
        if port is None:
            self.stop()
            raise RuntimeError(f"serve did not start: {log_path.read_bytes()[-2000:]!r}")
        self.port = port
        self.done = 0
        self.failures = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def blast(self, count: int, chunk_s: float = 1.0) -> float:
        """At least ``count`` more sessions (in CHUNK_S runs of the C client); the seconds."""
        start = time.monotonic()
        target = self.done + count
        while self.done < target:
            out = subprocess.run([self.blast_exe, str(self.port), str(self.clients),
                                  str(chunk_s)], capture_output=True, text=True,
                                 check=True, timeout=chunk_s + 60).stdout
            fields = dict(kv.split("=") for kv in out.split())
            self.done += int(fields["sessions"])
            self.failures += int(fields["failures"])
        return time.monotonic() - start

    def quiet_status(self, timeout: float = 30.0) -> dict[str, int]:
        """The parent's status once no session runs and its workers are settled.

        Idle workers stay (--spare-workers), each with its control socket in
        the parent: ``fds_own`` counts the parent's descriptors without those.
        """
        deadline = time.monotonic() + timeout
        last: list[int] | None = None
        while True:
            workers = sorted(children(self.pid))
            busy = any(children(w) for w in workers)
            if not busy and workers == last:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sessions still running: {workers}")
            last = None if busy else workers
            time.sleep(0.2)  # a retiring worker is gone and reaped by then
        status = parent_status(self.pid)
        status["workers"] = len(workers)
        status["fds_own"] = len(parent_fds(self.pid))
        return status

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        try:
            self.proc.terminate()
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            return self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--stats-interval", default="5")
    ap.add_argument("--log", default="/dev/null", help="serve's stderr (default: discarded)")
    args = ap.parse_args(argv)
    soak = Soak(Path(args.log), ["--stats-interval", args.stats_interval], args.clients)
    try:
        soak.blast(args.warmup)
        base = soak.quiet_status()
        print(f"warm-up {soak.done} connections: rss_kb={base['rss_kb']} fds={base['fds_own']}",
              flush=True)
        done0, t0 = soak.done, time.monotonic()
        while soak.done - done0 < args.count:
            soak.blast(min(args.every, args.count - (soak.done - done0)))
            now = soak.quiet_status()
            rate = (soak.done - done0) / (time.monotonic() - t0)
            print(f"{soak.done - done0:>7} connections: rss_kb={now['rss_kb']} "
                  f"(+{now['rss_kb'] - base['rss_kb']}) fds={now['fds_own']} "
                  f"failures={soak.failures} {rate:.0f} conn/s", flush=True)
        growth = now["rss_kb"] - base["rss_kb"]
        flat = growth < 1024 and now["fds_own"] == base["fds_own"] and not soak.failures
        print(f"growth: rss_kb={growth} fds={now['fds_own'] - base['fds_own']} "
              f"failures={soak.failures}: {'flat' if flat else 'NOT FLAT'}")
        return 0 if flat else 1
    finally:
        soak.stop()


if __name__ == "__main__":
    sys.exit(main())
