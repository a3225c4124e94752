"""Both directions between the client (fds 0/1) and the child, byte-exact.

The relay knows no SMTP.  It moves bytes with non-blocking I/O and bounded
buffers, shows each chunk to a tap (the observer's seam) and owns the clock.

Rules it keeps:
- never a blocking write: a stalled reader in one direction never stalls the
  other, and memory is bounded by back-pressure (a full buffer stops reading);
- half-close is propagated: client EOF -> shutdown(SHUT_WR) toward the child
  once what is buffered is written; child EOF -> flush, then shutdown (socket)
  or close (pipe) toward the client;
- O_NONBLOCK is never set on a descriptor we may share.  A socket on fd 0/1
  (tcpserver's) is read and written with MSG_DONTWAIT instead; a pipe or tty
  there gets O_NONBLOCK and its flag is restored at the end.  fd 2 is never
  touched;
- a tap that raises is dropped (fail open): the error is kept for one
  ``observer_error`` event, and the bytes go on as before;
- the opt-in timers (idle, whole session) never fire while ``hooks.hold_timers()``
  is true, nor, once it turns false on the child's bytes, before those bytes
  have been written to the client: the caller says when a timeout would do
  harm (session: a message may be queued and its reply is not out yet).
"""

from __future__ import annotations

import _signal
import _socket
import errno
import os
import select
import stat
import time

__all__ = ["Relay", "Hooks", "ClientEnd", "BUFFER_BYTES", "CHUNK_BYTES", "FLUSH_SECONDS"]

# The most one read moves.  Larger reads mean fewer Python steps per byte for
# the observer, smaller ones keep the chunk in the CPU cache while it is sent
# on; this size keeps both budgets (figures: docs/performance.md).
CHUNK_BYTES = 128 * 1024
BUFFER_BYTES = 512 * 1024
FLUSH_SECONDS = 30.0
KILL_GRACE_SECONDS = 5.0  # after a wrapper timeout: SIGTERM, then SIGKILL

_POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR
_POLLOUT = select.POLLOUT
_DONTWAIT = _socket.MSG_DONTWAIT
_NOSIGNAL = getattr(_socket, "MSG_NOSIGNAL", 0)


TYPE_CHECKING = False  # typing costs start-up; mypy knows this name
if TYPE_CHECKING:
    from typing import Protocol

    class Tap(Protocol):
        """What the relay shows its bytes to (session's ObserverTap)."""

        def client_data(self, data: bytes) -> None:
            """Bytes read from the client (b"" at EOF)."""

        def server_data(self, data: bytes) -> None:
            """Bytes read from the child (b"" at EOF)."""

    from supervise_smtp.session.run import Session


class Hooks:
    """What the relay asks its owner, in one object (the session answers it itself);
    these defaults are a relay with nothing to watch: no stderr reader, a child never
    reported gone, no timers.
    """

    __slots__ = ()

    def stderr(self, data: bytes) -> None:
        """The child's stderr bytes (b"" at its end)."""

    def child_exited(self) -> bool:
        """True once the child is reaped (asked when its pidfd turns readable)."""
        return False

    def on_timeout(self, which: str) -> bytes | None:
        """What to tell the client when a wrapper timer fires (None: nothing)."""
        return None

    def kill_child(self, signum: int) -> None:
        """Send the child ``signum`` (after a timer fired)."""

    def hold_timers(self) -> bool:
        """True while no timer may fire (a message may be queued, its reply not out)."""
        return False


_SIOCOUTQ = 0x5411  # Linux: bytes in a TCP socket's send queue not yet acknowledged
_TCP_CLOSE = 7  # tcp_info's tcpi_state once the connection is over (reset, or closed)
ACK_WAIT_SECONDS = 1.0


def client_acked(end: ClientEnd, written: int, want: int,
                 timeout_s: float = ACK_WAIT_SECONDS) -> tuple[int, bool] | None:
    """How many of the ``written`` bytes the client's TCP acknowledged: (acked, over).

    Written is not delivered: a client that closed its socket answers our
    bytes with a reset, not an acknowledgement, and will send its message
    again; one that half-closed and reads acknowledges them.  The kernel's
    send queue still holds what was never acknowledged after a reset, so the
    count stays right when the connection is over (``over``).  Waits up to
    ``timeout_s`` for ``want`` bytes to be acknowledged or the connection to
    end; None when ``end`` is not a TCP socket (a pipe, a test's socketpair):
    there is nothing to learn.  Asked once, at the end of a session.
    """
    import fcntl
    import sys

    try:
        sock = _socket.socket(fileno=end.fd)
    except OSError:
        return None
    deadline = time.monotonic() + timeout_s
    try:
        if sock.family not in (_socket.AF_INET, _socket.AF_INET6):
            return None
        while True:
            unacked = int.from_bytes(fcntl.ioctl(end.fd, _SIOCOUTQ, bytes(4)), sys.byteorder)
            if unacked and end.fin_sent:
                unacked -= 1  # our FIN takes a sequence number, and is last
            acked = max(0, written - unacked)
            over = sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, 1)[0] == _TCP_CLOSE
            if acked >= want or over or time.monotonic() >= deadline:
                return acked, over
            time.sleep(0.01)
    except OSError:
        return None
    finally:
        sock.detach()


class ClientEnd:
    """One of fds 0/1: a socket (MSG_DONTWAIT) or anything else (O_NONBLOCK)."""

    __slots__ = ("fd", "sock", "restore_blocking", "fin_sent")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sock: _socket.socket | None = None
        self.restore_blocking = False
        self.fin_sent = False  # our shutdown queued a FIN
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return
        if stat.S_ISSOCK(mode):
            try:
                self.sock = _socket.socket(fileno=fd)
            except OSError:
                self.sock = None
        if self.sock is None and os.get_blocking(fd):
            os.set_blocking(fd, False)
            self.restore_blocking = True

    def read(self, size: int) -> bytes | None:
        """Bytes, b"" at EOF, None if nothing is ready."""
        try:
            if self.sock is not None:
                return self.sock.recv(size, _DONTWAIT)
            return os.read(self.fd, size)
        except BlockingIOError:
            return None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes written, 0 if the peer is not ready; OSError if it is gone."""
        try:
            if self.sock is not None:
                return self.sock.send(data, _DONTWAIT | _NOSIGNAL)
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def shut_write(self) -> None:
        """Tell the client we are done: shutdown a socket, close a pipe."""
        if self.sock is not None:
            try:
                self.sock.shutdown(_socket.SHUT_WR)
                self.fin_sent = True
            except OSError:
                pass
            return
        # Keep the fd number taken (by /dev/null) so that no later open()
        # lands on fd 1 by accident.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.fd)
            os.close(null)
        except OSError:
            pass

    def release(self) -> None:
        """Undo what we changed; never close the fd behind the socket object."""
        if self.sock is not None:
            self.sock.detach()
            self.sock = None
        if self.restore_blocking:
            try:
                os.set_blocking(self.fd, True)
            except OSError:
                pass
            self.restore_blocking = False


class Relay:
    """Moves bytes until the child is gone and its output is delivered.

    ``hooks`` (a Hooks) gets the child's stderr bytes and says when the child
    is reaped (polled through ``pidfd``, or every 100 ms when there is none),
    what a timer tells the client, how to stop the child and when timers must
    wait.  After the child has exited the
    relay lingers at most ``linger_s`` for descendants still holding its
    socket or stderr (qmail-scanner may outlive qmail-smtpd).
    """

    def __init__(self, cin: ClientEnd, cout: ClientEnd, server: _socket.socket,
                 err_fd: int | None, pidfd: int | None, tap: Tap | None, hooks: Hooks | Session,
                 linger_s: float = 1.0, idle_s: float = 0.0, max_s: float = 0.0,
                 rewrite=None, wakeup=None) -> None:
        self.cin = cin
        self.cout = cout
        self.server = server
        self.err_fd = err_fd
        self.pidfd = pidfd
        self.tap = tap
        self.tap_error: BaseException | None = None
        self.hooks = hooks
        self.linger_s = linger_s
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.bytes_in = 0  # read from the client
        self.bytes_out = 0  # written to the client
        self.client_eof = False  # client sent EOF (or its read failed)
        self.server_eof = False  # child closed its output
        self.server_shut = False  # we sent EOF to the child
        self.client_shut = False  # we sent EOF to the client
        self.client_gone = False  # a write to the client failed
        self.server_gone = False  # a write to the child failed
        self.client_error: str | None = None
        self.first_close: str | None = None  # "client" or "server"
        self.exited_at: float | None = None
        self.started = time.monotonic()
        self.last_activity = self.started
        self.idle_s = idle_s  # 0: off
        self.max_s = max_s  # 0: off
        self.timeout_fired: str | None = None
        self.kill_at: float | None = None
        self.timers_on = bool(idle_s or max_s)
        self.deliver_mark = 0  # a timer waits until bytes_out reaches this
        # True from a read from the client until the next read from the child:
        # the child may be working on what the client sent.  The session's
        # hold falls back on it when it cannot see the SMTP (observer dropped,
        # TLS).
        self.child_turn = False
        self.last_out = b"\n"  # last byte written to the client
        # --bare-lf fix: feed_client(bytes) -> bytes toward the child,
        # feed_server(bytes) to follow the replies; dropped if it raises.
        self.rewrite = rewrite
        self.rewrite_error: BaseException | None = None
        self.ended: float | None = None
        # process.SignalWakeup: its fd turns readable on any signal, so that a
        # handler never waits for the next I/O (None, or fd -1: tick instead)
        self.wakeup = wakeup if wakeup is not None and wakeup.fd >= 0 else None

    # -- taps ------------------------------------------------------------
    def _show(self, client: bool, data: bytes) -> None:
        tap = self.tap
        if tap is None:
            return
        try:
            if client:
                tap.client_data(data)
            else:
                tap.server_data(data)
        except Exception as exc:  # fail open: the relay must never stop for a tap
            self.tap = None
            self.tap_error = exc

    # -- the two directions ----------------------------------------------
    def _client_readable(self) -> None:
        room = min(CHUNK_BYTES, BUFFER_BYTES - len(self.c2s))
        if room <= 0:
            return  # a hangup seen while full: read it once there is room
        data = None
        try:
            data = self.cin.read(room)
        except OSError as err:
            self.client_error = errno.errorcode.get(err.errno or 0, str(err.errno))
            data = b""
        if data is None:
            return
        if not data:
            self.client_eof = True
            self.first_close = self.first_close or "client"
            self._show(True, b"")
            if self.rewrite is not None:
                self.c2s += self.rewrite.flush()
            self._flush_c2s()
            return
        self.bytes_in += len(data)
        self.last_activity = time.monotonic()
        self.child_turn = True
        wire = data if self.rewrite is None else self._rewritten(data)
        # Forward first, observe after: the observer never delays a byte.
        if self.server_gone:
            pass  # the child can no longer read: drop, keep the client moving
        elif self.c2s:
            self.c2s += wire
            self._flush_c2s()
        else:
            sent = self._send_server(wire)
            if sent < len(wire):
                self.c2s += wire[sent:]
        self._show(True, data)

    def _rewritten(self, data: bytes) -> bytes:
        try:
            return self.rewrite.feed_client(data)  # type: ignore[union-attr]
        except Exception as exc:  # fail open: the bytes go on as the client sent them
            self.rewrite, self.rewrite_error = None, exc
            return data

    def _send_server(self, data: bytes | bytearray) -> int:
        try:
            n = self.server.send(data, _NOSIGNAL)
        except BlockingIOError:
            return 0
        except OSError:
            self.server_gone = True
            self.c2s.clear()
            return len(data)
        return n

    def _flush_c2s(self) -> None:
        if self.c2s and not self.server_gone:
            n = self._send_server(self.c2s)
            del self.c2s[:n]
        if self.client_eof and not self.c2s and not self.server_shut:
            self.server_shut = True
            try:
                self.server.shutdown(_socket.SHUT_WR)
            except OSError:
                pass

    def _server_readable(self) -> None:
        room = min(CHUNK_BYTES, BUFFER_BYTES - len(self.s2c))
        if room <= 0:
            return
        try:
            data = self.server.recv(room)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.server_eof = True
            self.first_close = self.first_close or "server"
            self._show(False, b"")
            self._flush_s2c()
            return
        self.last_activity = time.monotonic()
        held = self.timers_on and self.hooks.hold_timers()
        self.child_turn = False
        if self.rewrite is not None:
            try:
                self.rewrite.feed_server(data)
            except Exception as exc:  # fail open
                self.rewrite, self.rewrite_error = None, exc
        if self.client_gone:
            pass  # nobody to tell; keep draining so the child never blocks
        elif self.s2c:
            self.s2c += data
            self._flush_s2c()
        else:
            sent = self._send_client(data)
            if sent < len(data):
                self.s2c += data[sent:]
        self._show(False, data)
        if held and not self.hooks.hold_timers():
            # These bytes ended the hold (the reply to the end of data): no
            # timer fires before they, and all before them, reach the client.
            self.deliver_mark = self.bytes_out + len(self.s2c)

    def _send_client(self, data: bytes | bytearray) -> int:
        try:
            n = self.cout.write(data)
        except OSError as err:
            self.client_gone = True
            self.client_error = self.client_error or errno.errorcode.get(err.errno or 0, "EIO")
            self.s2c.clear()
            return len(data)
        self.bytes_out += n
        if n:
            self.last_out = bytes(data[n - 1 : n])
        return n

    def _flush_s2c(self) -> None:
        if self.s2c and not self.client_gone:
            n = self._send_client(self.s2c)
            del self.s2c[:n]
        if self.server_eof and not self.s2c and not self.client_shut:
            self.client_shut = True
            if not self.client_gone:
                self.cout.shut_write()

    # -- the loop ----------------------------------------------------------
    def _stderr_readable(self) -> None:
        assert self.err_fd is not None
        try:
            data = os.read(self.err_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os.close(self.err_fd)
            self.err_fd = None
        self.hooks.stderr(data)

    def _note_exit(self) -> None:
        if self.exited_at is None and self.hooks.child_exited():
            self.exited_at = time.monotonic()
            if self.pidfd is not None:
                os.close(self.pidfd)
                self.pidfd = None

    def _remaining(self) -> float | None:
        """Seconds left before we stop waiting; None while the child runs.

        Once the child has exited we wait for its output to reach the client
        (up to FLUSH_SECONDS: a client may be slow to read the last reply) and
        for its stderr to close (up to linger_s: a descendant may hold it).
        """
        if self.exited_at is None:
            return None
        output_done = self.client_gone or (self.server_eof and not self.s2c)
        if output_done and self.err_fd is None:
            return 0.0
        limit = self.linger_s if output_done or not self.s2c else FLUSH_SECONDS
        return limit - (time.monotonic() - self.exited_at)

    def done(self) -> bool:
        """True when the child is gone and what it said has been delivered."""
        left = self._remaining()
        return left is not None and left <= 0

    # -- opt-in timeouts (off by default: qmail-smtpd's own timeout rules) --
    def _held(self) -> bool:
        """True while a due timer must wait (see hold_timers, deliver_mark)."""
        if not self.client_gone and self.bytes_out < self.deliver_mark:
            return True
        return self.hooks.hold_timers()

    def _timer_left(self) -> float | None:
        """Seconds to the next timer (idle, whole session, kill), None if none.

        A due timer that is held counts as none: only I/O can end the hold
        (the child's reply, or its bytes written to the client), and each
        wakes the loop.
        """
        now = time.monotonic()
        lefts = []
        if self.exited_at is None:
            if self.kill_at is not None:
                lefts.append(self.kill_at - now)
            elif self.timeout_fired is None:
                if self.idle_s:
                    lefts.append(self.last_activity + self.idle_s - now)
                if self.max_s:
                    lefts.append(self.started + self.max_s - now)
                if lefts and min(lefts) <= 0 and self._held():
                    lefts = []
        return min(lefts) if lefts else None

    def _check_timers(self) -> None:
        now = time.monotonic()
        if self.exited_at is not None:
            return
        if self.kill_at is not None:
            if now >= self.kill_at:
                self.hooks.kill_child(_signal.SIGKILL)  # the grace period is over
                self.kill_at = None
            return
        if self.timeout_fired is not None:
            return
        which = None
        if self.max_s and now >= self.started + self.max_s:
            which = "max_session"
        elif self.idle_s and now >= self.last_activity + self.idle_s:
            which = "idle_timeout"
        if which is not None and not self._held():
            self._fire(which, now)

    def _fire(self, which: str, now: float) -> None:
        """Say 421 if we can, close both sides, ask the child to go."""
        self.timeout_fired = which
        between_replies = not self.s2c and self.last_out == b"\n"
        if between_replies and not self.client_gone:
            message = self.hooks.on_timeout(which)
            if message:
                try:
                    self.bytes_out += self.cout.write(message)
                except OSError:
                    pass
        self.s2c.clear()
        self.c2s.clear()
        self.client_eof = self.client_shut = True
        self.first_close = self.first_close or "wrapper"
        if not self.client_gone:
            self.cout.shut_write()
        self.client_gone = True
        self.server_gone = True
        try:
            self.server.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        self.hooks.kill_child(_signal.SIGTERM)
        self.kill_at = now + KILL_GRACE_SECONDS

    def run(self) -> None:
        """Relay until done(); then close our end toward the child."""
        poller = select.poll()
        registered: dict[int, int] = {}
        cin, cout, sfd = self.cin.fd, self.cout.fd, self.server.fileno()
        while not self.done():
            want: dict[int, int] = {}
            if not self.client_eof and len(self.c2s) < BUFFER_BYTES:
                want[cin] = _POLLIN
            if self.s2c and not self.client_gone:
                want[cout] = _POLLOUT
            smask = 0
            if not self.server_eof and len(self.s2c) < BUFFER_BYTES:
                smask |= _POLLIN
            if self.c2s and not self.server_gone:
                smask |= _POLLOUT
            if smask:
                want[sfd] = smask
            if self.err_fd is not None:
                want[self.err_fd] = _POLLIN
            if self.pidfd is not None:
                want[self.pidfd] = select.POLLIN
            if self.wakeup is not None:
                want[self.wakeup.fd] = select.POLLIN
            for fd in [fd for fd in registered if fd not in want]:
                poller.unregister(fd)
                del registered[fd]
            for fd, mask in want.items():
                if registered.get(fd) != mask:
                    poller.register(fd, mask)
                    registered[fd] = mask
            left = self._remaining()
            timer = self._timer_left()
            if timer is not None and (left is None or timer < left):
                left = timer
            timeout = None if left is None else max(0.0, left) * 1000
            if (self.pidfd is None or self.wakeup is None) and (
                    timeout is None or timeout > 100.0):
                timeout = 100.0  # no pidfd (or no wakeup): look every 100 ms
            events = poller.poll(timeout)
            for fd, ev in events:
                if self.wakeup is not None and fd == self.wakeup.fd:
                    self.wakeup.drain()
                    continue
                if fd == self.pidfd:
                    self._note_exit()
                    continue
                if fd == self.err_fd:
                    self._stderr_readable()
                    continue
                if fd == sfd:
                    if ev & _POLLOUT or (ev & (select.POLLERR | select.POLLHUP) and self.c2s):
                        self._flush_c2s()
                    if ev & _POLLIN and not self.server_eof:
                        self._server_readable()
                    continue
                if fd == cout and self.s2c:
                    self._flush_s2c()
                if fd == cin and not self.client_eof:
                    self._client_readable()
            if self.pidfd is None:
                self._note_exit()
            if self.timers_on:
                self._check_timers()
        self.ended = time.monotonic()
        if self.err_fd is not None:
            os.close(self.err_fd)
            self.err_fd = None
        self.cin.release()
        self.cout.release()
