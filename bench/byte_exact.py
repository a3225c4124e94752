#!/usr/bin/env python3
"""The deep byte-exactness run: many generated sessions through the real processes.

    bench/byte_exact.py --mode serve --sessions 1000000
    bench/byte_exact.py --mode wrapper --sessions 20000
    bench/byte_exact.py --mode serve --sessions 50 --seed 7 --replay 31

The CI tests (tests/e2e/test_byte_exact.py) play a hundred or so Hypothesis
examples per mode; this plays as many sessions as asked from the same
generator (tests/byte_sessions.py) driven by a seeded PRNG: session ``i``
of seed ``S`` is drawn from ``random.Random(f"{S}-{i}")``, so ``--replay i``
plays that one session again.  ``--mode wrapper`` is the per-connection
wrapper under a real tcpserver, ``--mode serve`` is ``supervise-smtp
serve``; both with the default options (observe mode), in front of
tests/fakes/script_child.c.  ``--concurrency`` sessions run at once.

Every session must arrive exactly both ways, its summary must count its
bytes and pass the child's exit code on, and every log line must parse
strictly.  Progress goes to stderr every ``--every`` seconds; the result
(counts, seconds, sessions/s, the first failures described) is printed as
JSON and saved in bench/results/.  Exit 0 when every session was exact, 1
otherwise.  ``--minutes`` stops early (the counts say how far it got).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from benchlib import wrapper_command  # noqa: E402
from byte_sessions import Server, play_many, script_child  # noqa: E402
from log_keys import check_keys  # noqa: E402

RESULTS = HERE / "results"


def _server(mode: str, workdir: Path) -> Server:
    child = str(script_child())
    child_dir = workdir / "child"
    child_dir.mkdir()
    if mode == "wrapper":
        return Server(["tcpserver"], [*wrapper_command(), "--", child], child_dir,
                      limit=200, check_line=check_keys)
    return Server([*wrapper_command(), "serve"], [child], child_dir, limit=200,
                  check_line=check_keys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("wrapper", "serve"), required=True)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--replay", type=int, default=None, help="play only this session index")
    ap.add_argument("--max-pause-us", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0: no limit)")
    ap.add_argument("--every", type=float, default=60.0, help="progress every N seconds")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="byte-exact-") as tmp:
        server = _server(args.mode, Path(tmp))
        def progress(line: str) -> None:
            print(f"byte_exact {args.mode}: {line}", file=sys.stderr, flush=True)

        try:
            result = asyncio.run(play_many(
                server, args.sessions, args.seed, concurrency=args.concurrency,
                max_pause_us=args.max_pause_us, minutes=args.minutes, every=args.every,
                only=args.replay, progress=progress))
        finally:
            server.stop()
    result = {"mode": args.mode, "seed": args.seed, "asked": args.sessions,
              "concurrency": args.concurrency, "max_pause_us": args.max_pause_us, **result}
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"{stamp}-byte-exact-{args.mode}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=1))
    ok = result["failed"] == 0 and not result["bad_lines"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
