"""A /metrics HTTP endpoint driven by its owner's poll loop (no thread, no blocking call).

prometheus-client's ``start_http_server`` runs a thread: in serve's forking
parent a thread makes fork unsafe, and in ``collect`` it would share the
process with the log relay.  This endpoint is a handful of non-blocking
sockets instead, which the owner polls along with its own descriptors:

    http = MetricsHTTP(host, port, body=metrics.exposition)
    http.open()                                # OSError: cannot bind
    ... poller gets http.wanted(): [(fd, events), ...] each time round ...
    http.handle(fd, revents)                   # for each ready fd it owns
    http.expire(time.monotonic())              # closes clients past their deadline
    http.close()

It answers ``GET`` (and ``HEAD``) ``/metrics`` with ``body()`` and
``Content-Type: text/plain; version=0.0.4``, ``/`` with a pointer to
/metrics, anything else 404 (405 for other methods, 400 for what is not
HTTP), one request per connection (``Connection: close``).  Bounded: at
most MAX_CLIENTS connections (the listening socket leaves the poll set
meanwhile, the kernel's backlog holds the rest), MAX_REQUEST_BYTES of
request head, CLIENT_TIMEOUT_S per connection from accept to close.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

__all__ = ["CLIENT_TIMEOUT_S", "MAX_CLIENTS", "MAX_REQUEST_BYTES", "MetricsHTTP", "parse_listen"]

MAX_CLIENTS = 16
MAX_REQUEST_BYTES = 8192
CLIENT_TIMEOUT_S = 10.0
LINGER_S = 2.0  # after the response: read what the client still sends, so close() sends no RST
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_IN = 0x001  # select.POLLIN, without importing select for two constants
_OUT = 0x004
_ERR = 0x008 | 0x010 | 0x020  # POLLERR, POLLHUP, POLLNVAL


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` -> (host, port): IPv4, ``[IPv6]``, or empty for every address.

    ValueError with a message for anything else (a name is not resolved here:
    a log service must not wait for DNS).
    """
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"ADDR:PORT wanted, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        family = socket.AF_INET6
    elif host in ("", "*"):
        return "", int(port)
    else:
        family = socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        raise ValueError(f"not a numeric address: {host!r} (IPv6 goes in brackets)") from None
    return host, int(port)


class _Client:
    __slots__ = ("sock", "deadline", "request", "response", "lingering")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = b""
        self.response: memoryview | None = None
        self.lingering = False


class MetricsHTTP:
    """The listening socket and its clients; ``body()`` is called once per /metrics request."""

    def __init__(self, host: str, port: int, body: Callable[[], bytes],
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.host = host
        self.port = port
        self.body = body
        self.clock = clock or time.monotonic
        self.sock: socket.socket | None = None
        self.clients: dict[int, _Client] = {}
        self.served = 0  # responses sent, whatever their status

    def open(self) -> None:
        """Bind and listen, non-blocking; OSError when it cannot.

        An empty host is every address: IPv6 and IPv4 on one socket where the
        host has IPv6, else IPv4 alone.
        """
        if self.host:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            candidates = [(family, self.host)]
        else:
            candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
        for i, (family, host) in enumerate(candidates):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                if i + 1 < len(candidates):
                    continue
                raise
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and not self.host:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((host, self.port))
                sock.listen(16)
                sock.setblocking(False)
            except OSError as err:
                sock.close()
                if i + 1 < len(candidates) and err.errno in (errno.EAFNOSUPPORT,
                                                             errno.EADDRNOTAVAIL):
                    continue
                raise
            self.sock = sock
            return

    def close(self) -> None:
        """Close the listening socket and every client."""
        for fd in list(self.clients):
            self._drop(fd)
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def owns(self, fd: int) -> bool:
        return (self.sock is not None and fd == self.sock.fileno()) or fd in self.clients

    def wanted(self) -> list[tuple[int, int]]:
        """The (fd, poll events) pairs to poll now."""
        out = []
        if self.sock is not None and len(self.clients) < MAX_CLIENTS:
            out.append((self.sock.fileno(), _IN))
        for fd, client in self.clients.items():
            out.append((fd, _OUT if client.response is not None and not client.lingering
                        else _IN))
        return out

    def next_deadline(self) -> float | None:
        """The earliest client deadline (the owner's poll timeout), None without clients."""
        return min((c.deadline for c in self.clients.values()), default=None)

    def expire(self, now: float) -> None:
        """Close the clients whose time is up."""
        for fd in [fd for fd, c in self.clients.items() if c.deadline <= now]:
            self._drop(fd)

    def handle(self, fd: int, revents: int) -> None:
        """Act on one ready descriptor of ours; never raises for a client's doing."""
        if self.sock is not None and fd == self.sock.fileno():
            self._accept()
            return
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            if client.response is not None and not client.lingering:
                self._send(fd, client)
            elif revents & (_IN | _ERR):
                self._receive(fd, client)
        except OSError:
            self._drop(fd)

    def _accept(self) -> None:
        assert self.sock is not None
        while len(self.clients) < MAX_CLIENTS:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE, ECONNABORTED...: try again at the next wake-up
                if err.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                return
            conn.setblocking(False)  # like every socket here: not inherited by the logger
            self.clients[conn.fileno()] = _Client(conn, self.clock() + CLIENT_TIMEOUT_S)

    def _receive(self, fd: int, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        if client.lingering:
            if not data:
                self._drop(fd)
            return
        if not data:  # gone before a whole request
            self._drop(fd)
            return
        client.request += data
        head_end = client.request.find(b"\r\n\r\n")
        if head_end < 0:
            head_end = client.request.find(b"\n\n")
        if head_end < 0:
            if len(client.request) >= MAX_REQUEST_BYTES:
                self._respond(fd, client, *self._answer(b"", b""), head=True)
            return
        line = client.request.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._respond(fd, client, *self._answer(b"", b""), head=True)
            return
        method, target = parts[0], parts[1]
        self._respond(fd, client, *self._answer(method, target), head=method != b"HEAD")

    def _answer(self, method: bytes, target: bytes) -> tuple[str, str, bytes]:
        """(status line, content type, body) for one request."""
        if not method:
            return "400 Bad Request", "text/plain", b"bad request\n"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n"
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE, self.body()
        if path == b"/":
            return "200 OK", "text/plain", b"supervise-smtp: metrics at /metrics\n"
        return "404 Not Found", "text/plain", b"not found: try /metrics\n"

    def _respond(self, fd: int, client: _Client, status: str, ctype: str, body: bytes,
                 head: bool = True) -> None:
        extra = "Allow: GET, HEAD\r\n" if status.startswith("405") else ""
        header = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
        client.response = memoryview(header.encode("ascii") + (body if head else b""))
        client.request = b""
        self.served += 1
        self._send(fd, client)

    def _send(self, fd: int, client: _Client) -> None:
        assert client.response is not None
        try:
            sent = client.sock.send(client.response)
        except (BlockingIOError, InterruptedError):
            return
        client.response = client.response[sent:]
        if not client.response:
            # All sent: half-close, then read until the client closes (or the
            # deadline), so that unread request bytes never turn close() into an RST.
            client.sock.shutdown(socket.SHUT_WR)
            client.lingering = True
            client.deadline = min(client.deadline, self.clock() + LINGER_S)

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            client.sock.close()
