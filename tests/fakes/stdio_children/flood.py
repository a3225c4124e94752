#!/usr/bin/env python3
"""Stdio child that floods fd 1 while still reading fd 0.

usage: flood.py MEGABYTES

A thread writes MEGABYTES of data to fd 1 (blocking when nobody reads); the
main thread reads one line from fd 0, reports it on stderr as
``got <line>``, and the process exits 0 at once, flood finished or not.
"""

from __future__ import annotations

import os
import sys
import threading


def _flood(megabytes: int) -> None:
    chunk = b"x" * 65535 + b"\n"
    try:
        for _ in range(megabytes * 16):
            os.write(1, chunk)
    except OSError:
        pass


def main() -> None:
    threading.Thread(target=_flood, args=(int(sys.argv[1]),), daemon=True).start()
    line = b""
    while not line.endswith(b"\n"):
        data = os.read(0, 1)
        if not data:
            break
        line += data
    os.write(2, b"got " + line.rstrip(b"\n") + b"\n")
    os._exit(0)


if __name__ == "__main__":
    main()
