"""metrics_http.MetricsHTTP: a /metrics endpoint driven by its owner's poll loop.

The endpoint listens on 127.0.0.1 (port 0: the kernel picks); the test is
the owner: it polls what ``wanted()`` asks for and calls ``handle`` and
``expire`` as serve's and collect's loops do, with a clock it controls.
"""

from __future__ import annotations

import select
import socket

import pytest

from supervise_smtp.logs.http import MAX_CLIENTS, MAX_REQUEST_BYTES, MetricsHTTP, parse_listen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint():
    calls = []

    def body() -> bytes:
        calls.append(1)
        return b"supervise_smtp_connections_total 1.0\n"

    clock = Clock()
    http = MetricsHTTP("127.0.0.1", 0, body, clock=clock)
    http.open()
    yield http, clock, calls
    http.close()


def pump(http: MetricsHTTP, rounds: int = 20) -> None:
    """Run the owner's loop until nothing is ready (or ``rounds`` times)."""
    for _ in range(rounds):
        poller = select.poll()
        for fd, events in http.wanted():
            poller.register(fd, events)
        ready = poller.poll(5)
        if not ready:
            return
        for fd, revents in ready:
            if http.owns(fd):
                http.handle(fd, revents)


def client(http: MetricsHTTP) -> socket.socket:
    assert http.sock is not None
    sock = socket.create_connection(http.sock.getsockname()[:2], timeout=5)
    return sock


def response(sock: socket.socket, http: MetricsHTTP) -> bytes:
    data = b""
    while True:
        pump(http)
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_metrics_http_request_sent_byte_by_byte_gets_the_body(endpoint):
    """A request that arrives in pieces is answered once it is whole, body() called once."""
    http, _clock, calls = endpoint
    sock = client(http)
    for byte in b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n":
        sock.send(bytes([byte]))
        pump(http, 2)
    got = response(sock, http)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert b"Content-Length: 37" in head and b"Connection: close" in head
    assert body == b"supervise_smtp_connections_total 1.0\n"
    assert calls == [1] and http.served == 1
    assert len(http.clients) == 1  # lingering: reads until the client closes
    sock.close()
    pump(http)
    assert not http.clients


@pytest.mark.parametrize("request_bytes, status", [
    (b"HEAD /metrics HTTP/1.0\r\n\r\n", b"200 OK"),
    (b"GET / HTTP/1.1\n\n", b"200 OK"),
    (b"GET /other HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405 Method Not Allowed"),
    (b"\x16\x03\x01\x02\x00 TLS hello\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics\r\n\r\n", b"400 Bad Request"),
    (b"G" * (MAX_REQUEST_BYTES + 10), b"400 Bad Request"),
])
def test_metrics_http_answers_what_is_not_a_metrics_get(endpoint, request_bytes, status):
    """Other paths, methods and junk get their status; body() is only for /metrics."""
    http, _clock, calls = endpoint
    sock = client(http)
    sock.sendall(request_bytes)
    got = response(sock, http)
    assert got.startswith(b"HTTP/1.1 " + status + b"\r\n")
    if request_bytes.startswith(b"HEAD"):
        assert got.endswith(b"\r\n\r\n") and calls == [1]
    elif b"/metrics" not in request_bytes or status != b"200 OK":
        assert calls == []


def test_metrics_http_clients_are_capped_and_time_out(endpoint):
    """At MAX_CLIENTS idle connections the listener leaves the poll set; when their
    deadline passes they are closed and the next client is served."""
    http, clock, _calls = endpoint
    idle = [client(http) for _ in range(MAX_CLIENTS)]
    pump(http)
    assert len(http.clients) == MAX_CLIENTS
    assert http.sock is not None
    assert (http.sock.fileno(), select.POLLIN) not in http.wanted()
    late = client(http)  # waits in the kernel's backlog
    late.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    pump(http)
    assert http.served == 0
    deadline = http.next_deadline()
    assert deadline is not None and deadline > clock.now
    clock.now = deadline
    http.expire(clock.now)
    assert not http.clients
    for sock in idle:
        assert sock.recv(10) == b""  # closed without a word
        sock.close()
    assert response(late, http).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:9125", ("127.0.0.1", 9125)), ("[::1]:9125", ("::1", 9125)),
    (":9125", ("", 9125)), ("*:9125", ("", 9125)),
])
def test_metrics_http_parse_listen(text, parsed):
    """ADDR:PORT: numeric IPv4, [IPv6], or every address."""
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["localhost:9125", "::1:9125", "1.2.3.4", "1.2.3.4:0",
                                  "1.2.3.4:65536", "1.2.3.4:x", "[1.2.3.4]:80"])
def test_metrics_http_parse_listen_refuses(text):
    """Names (no DNS in a log service), bare IPv6, bad ports: ValueError."""
    with pytest.raises(ValueError):
        parse_listen(text)
