"""Throughput of the sans-IO SMTP observer alone on a large DATA body.

Feeds a clean CRLF text body (default 100 MB, 128 KiB chunks, some
dot-stuffed lines) through Observer.feed_client after a normal session
start, and prints MB/s.  Target: >= 900 MB/s (clean).

    python3 bench/observer_throughput.py [MEGABYTES] [--dirty] [--prose] [--chunk=KIB]

``--dirty`` sprinkles bare LF, bare CR and 8-bit bytes to time the slow paths;
``--prose`` uses lines full of dots (sentences, URLs, numbers) instead of
dot-free ones; ``--chunk`` sets the read size (default 128 KiB, as the relay).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import observer_in_data  # noqa: E402

CHUNK = 131072  # what the relay reads at once


def _body(megabytes: int, dirty: bool, prose: bool = False) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, 0123456789 abcdefghijklmno\r\n"
    if prose:
        line = b"Hello Mr. Smith. See https://example.com/x.y for details, n.b. 3.14 etc.\r\n"
    block = line * 200 + b"..dot-stuffed line\r\n"
    if dirty:
        block += b"bare lf\nbare cr\rlatin \xe9\r\n"
    n = megabytes * 1024 * 1024 // len(block) + 1
    return block * n


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    megabytes = int(args[0]) if args else 100
    body = _body(megabytes, "--dirty" in sys.argv, "--prose" in sys.argv)
    size = CHUNK
    for a in sys.argv[1:]:
        if a.startswith("--chunk="):
            size = int(a.split("=", 1)[1]) * 1024
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    best = 0.0
    for _ in range(3):
        feed = observer_in_data().feed_client  # type: ignore[attr-defined]
        start = time.perf_counter()
        for chunk in chunks:
            feed(chunk)
        events = feed(b"\r\n.\r\n")
        elapsed = time.perf_counter() - start
        assert events and type(events[-1]).__name__ == "DataEnd", events
        best = max(best, len(body) / elapsed / 1e6)
    print(f"observer DATA body: {len(body) / 1e6:.0f} MB in {size // 1024} KiB chunks: "
          f"{best:.0f} MB/s (best of 3)")


if __name__ == "__main__":
    main()
