"""Opt-in wrapper timeouts: 421 to the client, child stopped, verdict timeout."""

from __future__ import annotations

import socket
import time

import pytest
from helpers import event, events

FAKE = "tests/fakes/fake-qmail-smtpd"


def _read_until_eof(sock: socket.socket, limit_s: float = 20.0) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.e2e
@pytest.mark.parametrize(("option", "which"), [("--idle-timeout", "idle-timeout"),
                                               ("--max-session", "max-session")])
def test_timeouts_fire_with_421_and_verdict(tcpserver, wrapper, option, which):
    """An idle client behind the double gets 421, the child is stopped, verdict=timeout."""
    server = tcpserver([*wrapper, option, "1", "--", FAKE])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"220 ")
        sock.sendall(b"HELO client.example\r\n")
        time.sleep(0.3)
        rest = _read_until_eof(sock)
    assert rest.startswith(b"250 ")
    assert rest.endswith(b" timeout\r\n") and b"\r\n421 4.4.2 " in rest
    deadline = time.monotonic() + 15
    while not any(e["event"] == "summary" for e in events(server.log())):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    summary = event(server.log(), "summary")
    assert summary["verdict"] == "timeout"
    assert summary["reason"] == f"wrapper --{which} fired in stage ehlo"
    # we close its socket and send SIGTERM: it dies by the signal or exits 1 on the EOF
    assert summary.get("signal") == "SIGTERM" or summary.get("exit") == "1", summary
