#!/usr/bin/env python3
"""Stdio SMTP child: aiosmtpd serving the one connection on fd 0/1.

fd 0 (a socket from the wrapper's socketpair) is handed to asyncio with
``loop.connect_accepted_socket``.  Each message's DATA content, as aiosmtpd
gives it in ``envelope.original_content`` (dot-unstuffed, CRLF kept), is
stored in ``$CHILD_SPOOL/<n>.msg``.  Exits 0 once the connection is closed
(QUIT or client EOF).
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from aiosmtpd.smtp import SMTP


class Spool:
    """aiosmtpd handler writing each message to the spool directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        self.count += 1
        path = self.directory / f"{self.count}.msg"
        path.write_bytes(envelope.original_content)
        return "250 OK stored"


class OneConnection(SMTP):
    """SMTP that resolves ``closed`` when its connection is gone."""

    def __init__(self, handler, closed: asyncio.Future, **kw) -> None:
        super().__init__(handler, **kw)
        self.closed = closed

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    closed: asyncio.Future = loop.create_future()
    spool = Spool(Path(os.environ["CHILD_SPOOL"]))
    sock = socket.socket(fileno=os.dup(0))
    sock.setblocking(False)
    await loop.connect_accepted_socket(
        lambda: OneConnection(spool, closed, data_size_limit=None, hostname="child.test",
                              loop=loop),
        sock,
    )
    await closed


if __name__ == "__main__":
    asyncio.run(serve())
