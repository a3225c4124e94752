#!/usr/bin/env python3
"""Stdio child: read all of fd 0 while writing a known stream on fd 1.

usage: sink_source.py MEGABYTES SEED DIGEST_FILE

Writes ``stream(MEGABYTES, SEED)`` (pseudo-random bytes that include NUL, CR,
LF and 0xff) to fd 1 from a thread while the main thread reads fd 0 to EOF,
so neither direction waits for the other.  Then writes
``<sha256 hex> <byte count>`` of what it read to DIGEST_FILE and exits 0.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading

PREFIX = b"\x00\r\n\xff\r\n.\r\n\n\r\x00\xff"


def stream(megabytes: int, seed: int) -> bytes:
    """The bytes this child writes; the tests compute the same."""
    return PREFIX + random.Random(seed).randbytes(megabytes * 1024 * 1024 - len(PREFIX))


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(1, view[: 1 << 20])
        view = view[n:]


def main() -> None:
    megabytes, seed, digest_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    writer = threading.Thread(target=_write_all, args=(stream(megabytes, seed),))
    writer.start()
    digest = hashlib.sha256()
    count = 0
    while True:
        data = os.read(0, 1 << 20)
        if not data:
            break
        digest.update(data)
        count += len(data)
    writer.join()
    with open(digest_file, "w") as fh:
        fh.write(f"{digest.hexdigest()} {count}\n")


if __name__ == "__main__":
    main()
