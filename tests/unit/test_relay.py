"""The relay in-process: a tap that raises is dropped and the bytes go on (fail open)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import threading
import time

import pytest

from supervise_smtp.session.relay import ClientEnd, Hooks, Relay


class Exploding:
    """A tap that fails on its third chunk, as an observer bug would."""

    def __init__(self) -> None:
        self.calls = 0

    def client_data(self, data: bytes) -> None:
        self.calls += 1
        if self.calls == 3:
            raise ValueError("observer bug")

    server_data = client_data


class _Hooks(Hooks):
    """The relay's hooks from plain callables, as a test gives them."""

    __slots__ = ("exited", "timeout_reply", "kill", "hold")

    def __init__(self, exited, on_timeout=None, kill_child=None, hold_timers=None) -> None:
        self.exited, self.timeout_reply = exited, on_timeout
        self.kill, self.hold = kill_child, hold_timers

    def child_exited(self) -> bool:
        return self.exited()

    def on_timeout(self, which: str) -> bytes | None:
        return self.timeout_reply(which) if self.timeout_reply else None

    def kill_child(self, signum: int) -> None:
        if self.kill is not None:
            self.kill(signum)

    def hold_timers(self) -> bool:
        return bool(self.hold()) if self.hold is not None else False


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
    relay = Relay(cin, cout, ours, None, None, tap, _Hooks(exited.is_set), linger_s=0.2)
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


# -- opt-in timers and the end-of-data window ------------
# The relay knows no SMTP: the session gives it hold_timers(), true while a
# message may be queued and its reply is not out.  Here a tap plays that part:
# held from the client's b".\r\n" to the child's b"250".

TIMEOUT = b"421 timeout\r\n"


class DataEnd:
    """A stand-in observer: ``awaiting`` from a client ``.`` line to a server 250."""

    def __init__(self) -> None:
        self.awaiting = False

    def client_data(self, data: bytes) -> None:
        if b".\r\n" in data:
            self.awaiting = True

    def server_data(self, data: bytes) -> None:
        if b"250 " in data:
            self.awaiting = False


def _run(child, up: bytes, tap=None, hold=None, read_after: float = 0.0, **timers):
    """Relay ``up`` from a client to ``child(sock)`` with timers; what the client got.

    The client writes ``up`` and keeps its side open (it stays idle); it starts
    reading ``read_after`` seconds later.  The child ends when its socket is
    closed (the relay shuts it down when a timer fires).  ``hold(relay)`` is
    what the session's hold_timers() would say.
    """
    cin_r, cin_w = os.pipe()
    cout_r, cout_w = os.pipe()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    exited = threading.Event()
    got: list[bytes] = []
    kills: list[int] = []

    def fake_child() -> None:
        try:
            child(theirs)
            while theirs.recv(65536):
                pass
        except OSError:
            pass  # the relay shut its end down first
        finally:
            theirs.close()
            exited.set()

    def client_reader() -> None:
        time.sleep(read_after)
        with os.fdopen(cout_r, "rb") as r:
            while chunk := r.read1(65536):
                got.append(chunk)

    threads = [threading.Thread(target=t, daemon=True) for t in (fake_child, client_reader)]
    for t in threads:
        t.start()
    os.write(cin_w, up)
    box: list[Relay] = []
    hooks = _Hooks(exited.is_set, on_timeout=lambda which: TIMEOUT, kill_child=kills.append,
                   hold_timers=(lambda: hold(box[0])) if hold else None)
    relay = Relay(ClientEnd(cin_r), ClientEnd(cout_w), ours, None, None, tap, hooks,
                  linger_s=0.2, **timers)
    box.append(relay)
    relay.run()
    os.close(cout_w)
    for t in threads:
        t.join(10)
    os.close(cin_r)
    os.close(cin_w)
    ours.close()
    return relay, b"".join(got), kills


def _answer(reply: bytes, after: float):
    """A child that reads the client's line, then answers ``reply`` ``after`` seconds later."""
    def child(sock: socket.socket) -> None:
        sock.recv(65536)
        time.sleep(after)
        sock.sendall(reply)
    return child


@pytest.mark.parametrize("timer", ["idle_s", "max_s"])
def test_relay_timer_held_until_reply_to_end_of_data(timer):
    """A timer due between the end of data and its reply fires only after the reply."""
    tap = DataEnd()
    relay, got, kills = _run(_answer(b"250 ok queued\r\n", 1.0), b".\r\n", tap,
                             hold=lambda relay: tap.awaiting, **{timer: 0.3})
    assert got == b"250 ok queued\r\n" + TIMEOUT
    assert relay.timeout_fired == {"idle_s": "idle_timeout", "max_s": "max_session"}[timer]
    assert kills[:1] == [signal.SIGTERM]


def test_relay_timer_held_until_reply_is_written_to_client():
    """The reply that ends the hold is delivered whole, though the client reads late."""
    reply = b"x" * (300 * 1024) + b"\r\n250 ok queued\r\n"  # more than the pipe holds
    tap = DataEnd()
    relay, got, _ = _run(_answer(reply, 0.5), b".\r\n", tap, hold=lambda relay: tap.awaiting,
                         read_after=1.5, max_s=0.2)
    assert relay.timeout_fired == "max_session"
    assert got.startswith(reply)  # the 421 after it is best effort (a full pipe drops it)


def test_relay_timer_not_held_for_other_bytes():
    """A client that does not read other replies is still cut off by the timer."""
    reply = b"x" * (300 * 1024) + b"\r\n"
    tap = DataEnd()
    relay, got, _ = _run(_answer(reply, 0.0), b"NOOP\r\n", tap, hold=lambda relay: tap.awaiting,
                         read_after=1.5, idle_s=0.3)
    assert relay.timeout_fired == "idle_timeout"
    assert len(got) < len(reply)


def test_relay_child_turn_fallback():
    """Without an observer, held while the child has not answered the client's last bytes."""
    relay, got, _ = _run(_answer(b"250 ok\r\n", 1.0), b"anything\r\n",
                         hold=lambda relay: relay.child_turn, max_s=0.3)
    assert got == b"250 ok\r\n" + TIMEOUT
    assert relay.timeout_fired == "max_session"


@pytest.mark.parametrize(("how", "want"), [("half", True), ("full", False)])
def test_client_acked_tells_half_close_from_close(how, want):
    """A client that half-closed acknowledges what we write; one that closed resets it
    (the reset leaves the reply unacknowledged, and the connection over)."""
    from supervise_smtp.session.relay import ClientEnd, client_acked

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    with listener, client, ours:
        if how == "half":
            client.shutdown(socket.SHUT_WR)
        else:
            client.close()
        assert ours.recv(10) == b""
        time.sleep(0.05)
        reply = b"250 ok 1 qp 2\r\n"
        ours.send(reply)
        end = ClientEnd(ours.fileno())
        try:
            acked, over = client_acked(end, len(reply), len(reply), 5.0)
        finally:
            end.release()
        assert (acked == len(reply), over) == (want, not want)


def test_client_acked_is_none_on_a_pipe():
    """Not a TCP socket: nothing to ask, the caller keeps what it wrote."""
    from supervise_smtp.session.relay import ClientEnd, client_acked

    r, w = os.pipe()
    try:
        assert client_acked(ClientEnd(w), 3, 3, 0.1) is None
    finally:
        os.close(r)
        os.close(w)
