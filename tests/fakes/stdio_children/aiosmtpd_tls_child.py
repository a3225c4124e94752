#!/usr/bin/env python3
"""Stdio SMTP child with TLS and AUTH: aiosmtpd serving one connection on fd 0/1.

Like aiosmtpd_child.py (fd 0, a socket from the wrapper's socketpair, is
handed to asyncio with ``loop.connect_accepted_socket``; each message's
``envelope.original_content`` is stored in ``$CHILD_SPOOL/<n>.msg``), plus:

``CHILD_TLS_CERT`` / ``CHILD_TLS_KEY``
    PEM certificate and key of the server side of TLS.
``CHILD_TLS_MODE``
    ``starttls`` (default: STARTTLS offered, not required), ``smtps``
    (implicit TLS from the first byte, as on port 465) or ``none``.
``CHILD_AUTH_USER`` / ``CHILD_AUTH_PASSWORD``
    when set, AUTH PLAIN, LOGIN and CRAM-MD5 are offered (also without TLS)
    and only this user with this password is accepted.

Exits 0 once the connection is closed (QUIT, client EOF or a failed TLS
handshake).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import socket
import ssl
from pathlib import Path

from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword
from aiosmtpd_child import OneConnection  # the script's own directory is on sys.path


class Spool:
    """aiosmtpd handler writing each message to the spool directory; CRAM-MD5 too."""

    def __init__(self, directory: Path, users: dict[bytes, bytes]) -> None:
        self.directory = directory
        self.users = users
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        self.count += 1
        path = self.directory / f"{self.count}.msg"
        path.write_bytes(envelope.original_content)
        return "250 OK stored"

    async def auth_CRAM__MD5(self, server, args) -> AuthResult:  # noqa: N802
        """RFC 2195: challenge, then ``user hex(hmac_md5(password, challenge))``."""
        challenge = f"<{secrets.randbelow(10**9)}.{os.getpid()}@child.test>".encode()
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:
            return AuthResult(success=False)
        user, _, digest = answer.partition(b" ")
        password = self.users.get(user)
        if password is None:
            return AuthResult(success=False, handled=False)
        want = hmac.new(password, challenge, "md5").hexdigest().encode()
        ok = hmac.compare_digest(want, digest)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user, b""))

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        """The authenticator of the built-in PLAIN and LOGIN."""
        want = self.users.get(auth_data.login)
        ok = want is not None and hmac.compare_digest(want, auth_data.password)
        return AuthResult(success=ok, handled=False)


def tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.environ["CHILD_TLS_CERT"], os.environ["CHILD_TLS_KEY"])
    return ctx


async def serve() -> None:
    loop = asyncio.get_running_loop()
    closed: asyncio.Future = loop.create_future()
    users: dict[bytes, bytes] = {}
    if os.environ.get("CHILD_AUTH_USER"):
        users[os.environ["CHILD_AUTH_USER"].encode()] = os.environ["CHILD_AUTH_PASSWORD"].encode()
    spool = Spool(Path(os.environ["CHILD_SPOOL"]), users)
    mode = os.environ.get("CHILD_TLS_MODE", "starttls")
    kw: dict = {"data_size_limit": None, "hostname": "child.test", "loop": loop}
    if users:
        kw.update(authenticator=spool.authenticate, auth_require_tls=False)
    if mode == "starttls":
        kw.update(tls_context=tls_context(), require_starttls=False)
    sock = socket.socket(fileno=os.dup(0))
    sock.setblocking(False)
    await loop.connect_accepted_socket(
        lambda: OneConnection(spool, closed, **kw),
        sock,
        ssl=tls_context() if mode == "smtps" else None,
    )
    await closed


if __name__ == "__main__":
    # aiosmtpd warns on stderr about AUTH without TLS and deprecated fields:
    # the wrapper would log them as child_stderr, noise for these tests.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    asyncio.run(serve())
