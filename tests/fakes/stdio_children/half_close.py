#!/usr/bin/env python3
"""Stdio child that half-closes its output first.

Writes ``bye\\n`` on fd 1, shuts down the write side of the socket on fd 1
(a real half-close: fd 0 is the same socket and stays open), then reads fd 0
to EOF and reports what it read on stderr as ``child-read <n> <hex>``.
"""

from __future__ import annotations

import os
import socket


def main() -> None:
    os.write(1, b"bye\n")
    out = socket.socket(fileno=os.dup(1))
    out.shutdown(socket.SHUT_WR)
    out.close()
    got = b""
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        got += data
    os.write(2, f"child-read {len(got)} {got.hex()}\n".encode())


if __name__ == "__main__":
    main()
