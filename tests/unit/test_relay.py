"""The relay in-process: a tap that raises is dropped and the bytes go on (fail open)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading

from supervise_smtp.relay import ClientEnd, Relay


class Exploding:
    """A tap that fails on its third chunk, as an observer bug would."""

    def __init__(self) -> None:
        self.calls = 0

    def client_data(self, data: bytes) -> None:
        self.calls += 1
        if self.calls == 3:
            raise ValueError("observer bug")

    server_data = client_data


def test_relay_tap_error_fails_open(tmp_path):
    """After the tap raises, every byte still arrives both ways and the error is kept."""
    up = random.Random(2).randbytes(4 * 1024 * 1024)
    down = random.Random(3).randbytes(4 * 1024 * 1024)
    cin_r, cin_w = os.pipe()  # the client's bytes toward the wrapper's fd "0"
    cout_r, cout_w = os.pipe()  # the wrapper's fd "1" toward the client
    ours, child = socket.socketpair()
    ours.setblocking(False)
    got_up: list[bytes] = []
    got_down: list[bytes] = []
    exited = threading.Event()

    def fake_child() -> None:
        child.sendall(down)
        child.shutdown(socket.SHUT_WR)
        while chunk := child.recv(65536):
            got_up.append(chunk)
        child.close()
        exited.set()

    def client_writer() -> None:
        with os.fdopen(cin_w, "wb") as w:
            w.write(up)

    def client_reader() -> None:
        with os.fdopen(cout_r, "rb") as r:
            while chunk := r.read(65536):
                got_down.append(chunk)

    threads = [threading.Thread(target=t, daemon=True)
               for t in (fake_child, client_writer, client_reader)]
    for t in threads:
        t.start()
    tap = Exploding()
    cin, cout = ClientEnd(cin_r), ClientEnd(cout_w)
    relay = Relay(cin, cout, ours, None, None, tap, lambda data: None, exited.is_set,
                  linger_s=0.2)
    relay.run()
    # pipes on fds 0/1 may be shared: their O_NONBLOCK is undone at the end
    assert os.get_blocking(cin_r) and os.get_blocking(cout_w)
    os.close(cout_w)
    for t in threads:
        t.join(10)
    os.close(cin_r)
    ours.close()
    assert isinstance(relay.tap_error, ValueError)
    assert relay.tap is None
    assert hashlib.sha256(b"".join(got_up)).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(b"".join(got_down)).digest() == hashlib.sha256(down).digest()
    assert (relay.bytes_in, relay.bytes_out) == (len(up), len(down))
