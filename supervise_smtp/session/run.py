"""One connection, in the steps of docs/design.md: spawn, relay, observe, watch, diagnose.

This wires the parts together and decides nothing itself: process spawns and
reaps, relay moves bytes, the tap shows them to the SMTP observer, stderr and
procfs watch what runs under the child, diagnose gives the verdict, output
writes the lines.  Everything runs in one process, one thread, no asyncio
(output's writer thread only moves finished lines to fd 2).  The resident
server runs this same ``run`` in each forked worker.
"""

from __future__ import annotations

import os
import time

from supervise_smtp.errors import EXIT_TEMP, TempError
from supervise_smtp.session.process import (
    Child,
    ExitStatus,
    SignalWakeup,
    default_sigchld,
    forward_signals,
    reap,
    signal_name,
    spawn,
)

TYPE_CHECKING = False  # typing is a costly import per connection; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from supervise_smtp.observer import Event, Observer
    from supervise_smtp.session.diagnose import Facts
    from supervise_smtp.session.options import Options
    from supervise_smtp.session.output import Output
    from supervise_smtp.session.procfs import QueueWatch
    from supervise_smtp.session.relay import Relay
    from supervise_smtp.session.stderr import StderrWatch

__all__ = ["ANOMALY_EVENTS", "LOG_DRAIN_SECONDS", "ObserverTap", "run", "say_refused"]

LOG_DRAIN_SECONDS = 1.0  # at the end, how long the event lines may wait for fd 2

# What is worth a line of its own while the session runs: anomalies only,
# so that a clean session stays quiet (its summary says the rest).
ANOMALY_EVENTS = frozenset({
    "bare_lf", "smuggling", "data_rejected", "line_too_long", "pipelining_violation",
    "early_talker", "starttls_injection", "malformed_reply", "tls_alert", "tls_not_tls",
    "not_smtp", "reject",
})


def run(opts: Options, argv: list[str], env: dict[bytes, bytes] | None = None,
        log_fd: int | None = None, summary: dict[str, object] | None = None) -> ExitStatus:
    """Supervise one connection; returns how the child ended (raises TempError: 111).

    ``env`` is the child's environment: by default exactly the one we were
    started with (tcpserver's); the resident server passes the one it made
    for this connection.  Our own lines read TCPREMOTEIP and friends from it.
    ``log_fd``: an O_NONBLOCK description of the log pipe of our own (serve's
    workers inherit one from the parent), written without a thread.
    ``summary``: filled with the summary line's fields (serve's metrics).
    """
    s = Session(opts, argv, env, log_fd)  # spawn: qmail-smtpd starts while we import the rest
    s.observe()
    s.relay()
    status = s.watch()
    verdict, line = s.diagnose(status)
    if summary is not None:
        summary.update(line)
    s.report(verdict, line)
    s.out.close(LOG_DRAIN_SECONDS)
    return status


class Session:
    """The parts of one connection, by name; each step of ``run`` is a method."""

    __slots__ = ("opts", "started", "env", "log_fd", "base", "child", "stop_signals",
                 "subreaper_error", "out", "facts", "stderr_watch", "queue", "tap", "link", "fixer",
                 "wakeup")

    def __init__(self, opts: Options, argv: list[str],
                 env: dict[bytes, bytes] | None = None, log_fd: int | None = None) -> None:
        """Spawn first of all; then signals, the output and what watches the child."""
        self.opts = opts
        self.started = time.monotonic()
        self.env = env
        self.log_fd = log_fd
        self.base: dict[str, object] = {"remote": self._getenv("TCPREMOTEIP"),
                                        "pid": os.getpid()}
        default_sigchld()
        try:
            self.child = spawn(argv, env)
        except TempError as err:
            self._refused(err)
            raise
        self.stop_signals = forward_signals(self.child)
        self.wakeup = SignalWakeup()
        self.subreaper_error = None
        if opts.subreaper:
            from supervise_smtp.session.process import become_subreaper

            self.subreaper_error = become_subreaper()
        # Imported while the child starts and prints its banner; what only some
        # sessions need (the stderr splitter, /proc) waits until it is needed.
        from supervise_smtp.session.diagnose import Facts

        self.out = self._output()  # never waits for the log service
        self.out.base = self.base
        self.out.emit("connect", _connect_fields(self.child, self._getenv))
        self.facts = Facts()
        self.stderr_watch: StderrWatch | None = None  # at the first stderr bytes: most have none
        self.queue: QueueWatch | None = None  # at the first DATA: most sessions have none
        self.fixer: Any = None

    def _getenv(self, name: str) -> str | None:
        if self.env is None:
            return os.environ.get(name)
        value = self.env.get(name.encode())
        return None if value is None else value.decode("utf-8", "surrogateescape")

    def _refused(self, err: TempError) -> None:
        """The child could not start: say so in the usual lines (then exit 111)."""
        out = self._output()
        out.base = self.base
        say_refused(out, "spawn", err, self._elapsed_ms())

    def _output(self) -> Output:
        """The event lines: never waiting for the log service.

        A pipe (the log service) gets a writer thread, or, in serve's
        workers, our own non-blocking description of it; a file or /dev/null
        never blocks a write, so it is written directly, with no thread.
        """
        from supervise_smtp.session.output import Output

        if self.log_fd is not None:
            return Output(self.opts.format, fd=self.log_fd, nonblocking=True)
        return Output(self.opts.format, background=not _never_blocks(2))

    def _elapsed_ms(self, until: float | None = None) -> int:
        return int(((until or time.monotonic()) - self.started) * 1000)

    # -- observe -------------------------------------------------------------
    def observe(self) -> None:
        """The tap the relay shows its bytes to; a transcript if --capture asks."""
        from supervise_smtp.observer import Observer

        opts = self.opts
        wanted = {"all": None, "none": frozenset()}.get(opts.events, ANOMALY_EVENTS)
        self.tap = ObserverTap(Observer(), self.out.emit, wanted, self.facts)
        self.tap.on_data_start = self._data_start
        try:
            self.tap.capture = _make_capture(opts, self.base)
        except Exception as exc:  # fail open: no transcript, the mail goes on
            self.out.emit("capture_error", error=repr(exc)[:200])
        if opts.bare_lf == "fix":
            from supervise_smtp.session.barelf import BareLFFixer

            self.fixer = BareLFFixer()

    # -- relay ---------------------------------------------------------------
    def relay(self) -> None:
        """Both directions until the child is gone and what it said is delivered."""
        from supervise_smtp.session.relay import ClientEnd, Relay

        opts, child = self.opts, self.child
        self.link: Relay = Relay(
            ClientEnd(0), ClientEnd(1), child.sock, child.err_fd, child.pidfd, self.tap,
            self, linger_s=opts.linger_s, idle_s=opts.idle_timeout_s,
            max_s=opts.max_session_s, rewrite=self.fixer, wakeup=self.wakeup)
        try:
            self.link.run()
        finally:
            self.wakeup.close()

    # -- what the relay asks (relay.Hooks) ------------------------------------
    def stderr(self, data: bytes) -> None:
        """The child's stderr bytes (b"" at its end), to the stderr watcher."""
        if self.stderr_watch is None:
            if not data:
                return
            from supervise_smtp.session.stderr import StderrWatch

            self.stderr_watch = StderrWatch(self.facts, self.out.emit, self.out.write_raw,
                                      self.child.pid, self.opts.stderr_mode == "pass")
        self.stderr_watch.feed(data)

    def _data_start(self) -> None:
        """qmail-smtpd forked its queue program before the 354: note who it is."""
        if self.queue is None:
            from supervise_smtp.session.procfs import QueueWatch

            self.queue = QueueWatch(self.child.pid)
        self.queue.at_data_start()

    def child_exited(self) -> bool:
        if self.child.status is None and self.child.exited() and self.queue is not None:
            self.queue.at_child_exit()  # did the queue program outlive qmail-smtpd?
        return self.child.status is not None

    def kill_child(self, signum: int) -> None:
        """A wrapper timer's SIGTERM, then SIGKILL."""
        self.child.signal(signum)

    def on_timeout(self, which: str) -> bytes | None:
        """What the client hears when a wrapper timeout fires: 421, unless in TLS."""
        observer = self.tap.observer
        if observer.state.tls_active or observer.stage in ("starttls", "tls"):
            return None
        return b"421 4.4.2 " + os.uname().nodename.encode() + b" timeout\r\n"

    def hold_timers(self) -> bool:
        """No wrapper timeout between the end of data and its reply: it may be queued.

        (The relay then also waits until that reply is written to the client.)
        When we cannot see the SMTP -- the observer failed and was dropped, or
        the session is in TLS -- we cannot tell where that window is, and a
        timeout fired in it makes the client send the message again.  So hold
        whenever it may be there: while the child has not answered the client's
        last bytes.  A client silent after a reply is still cut off; one that
        keeps sending is bounded by qmail-smtpd's own timeout, as without the
        wrapper's timers.
        """
        if self.link.tap is None or self.tap.observer.state.tls_active:
            return self.link.child_turn
        return self.tap.observer.awaiting_data_reply

    # -- watch ---------------------------------------------------------------
    def watch(self) -> ExitStatus:
        """The child's end, its stderr's last words, the queue program's fate."""
        out, facts, child = self.out, self.facts, self.child
        if self.fixer is not None:
            for sender, count, first_line, dots in self.fixer.messages:
                out.emit("bare_lf_fixed", sender=sender, count=count, first_line=first_line,
                         dot_lines=dots or None)
            if self.fixer.messages:
                facts.notes.append("bare_lf_fixed")
        if self.link.rewrite_error is not None:
            out.emit("wrapper_error", where="bare_lf_fix", **_error_fields(self.link.rewrite_error))
        if child.status is None:
            child.status = reap(child) or ExitStatus.unknown()
            if self.queue is not None:
                self.queue.at_child_exit()
        child.sock.close()
        self.stderr(b"")
        self._watch_queue()
        status = child.status
        facts.stopped_by = [signal_name(s) for s in self.stop_signals]
        if self.tap.observer.state.not_smtp:
            facts.notes.append("not_smtp")
        if self.link.tap_error is not None:
            out.emit("observer_error", **_error_fields(self.link.tap_error))
        out.emit("child_exit", child_pid=child.pid, **_exit_fields(status),
                 user_s=round(status.user_s, 3), sys_s=round(status.sys_s, 3),
                 maxrss_kb=status.maxrss_kb)
        link = self.link
        out.emit("disconnect", child_pid=child.pid, bytes_in=link.bytes_in,
                 bytes_out=link.bytes_out, first_close=link.first_close or "none",
                 client_error=link.client_error, duration_ms=self._elapsed_ms(link.ended),
                 **_exit_fields(status))
        return status

    def _watch_queue(self) -> None:
        """The queue program seen at DATA: did it outlive qmail-smtpd (--subreaper: reap it)?"""
        facts, queue = self.facts, self.queue
        if queue is None or queue.pid is None:
            return
        facts.queue_watch_pid = queue.pid
        facts.queue_outlived = bool(queue.outlived)
        if self.subreaper_error is not None:
            self.out.emit("wrapper_error", where="subreaper", error=self.subreaper_error)
        elif self.opts.subreaper and facts.queue_outlived:
            from supervise_smtp.session.process import reap_pid

            qstatus = reap_pid(queue.pid, max(self.opts.linger_s, 1.0))
            self.stderr(b"")  # what it wrote before it ended
            if qstatus is not None:
                facts.queue_reaped = _exit_fields(qstatus)
                facts.scanner_died_pid = facts.scanner_died_pid or queue.pid
                self.out.emit("queue_parent_died", queue_pid=queue.pid, **facts.queue_reaped)

    # -- diagnose ------------------------------------------------------------
    def diagnose(self, status: ExitStatus) -> tuple[str, dict[str, object]]:
        """The one line that says what happened: event=summary verdict=..."""
        from supervise_smtp.session.diagnose import diagnose

        facts, link = self.facts, self.link
        facts.take_end(self.tap.observer.state if link.tap is not None else None, status,
                       signal_name(status.signal) if status.signal is not None else None, link)
        facts.reply_acked, facts.quit_heard = self._acknowledged()
        try:
            verdict, fields = diagnose(facts)
        except Exception as exc:  # fail open: a diagnose bug never costs the exit status
            verdict, fields = "wrapper_error", {"reason": f"diagnose failed: {exc!r}"[:200]}
        line = {"verdict": verdict, "remote": self.base["remote"], "pid": self.base["pid"],
                "child_pid": self.child.pid, **fields, "log_dropped": self.out.dropped or None,
                "duration_ms": self._elapsed_ms(link.ended), **_exit_fields(status)}
        self.out.emit("summary", line)
        return verdict, line

    def _acknowledged(self) -> tuple[bool | None, bool | None]:
        """Did the client's TCP take the reply to '.', and every byte before QUIT's?

        The first is reply_delivered; the second tells a client that was there
        for its session's end from one gone before its pipelined QUIT was
        answered.  True, False (never all written, or the connection ended
        first), None (not TCP, or no answer within relay.ACK_WAIT_SECONDS).
        """
        st, link, facts = self.facts.state, self.link, self.facts
        if st is None:
            return None, None
        reply = st.end_reply_offset if facts.end_replies else None
        before_quit = st.quit_reply_start if st.quit_sent and st.quit_answered else None
        wants = [o for o in (reply, before_quit) if o is not None]
        if not wants:
            return None, None
        measured = None
        if min(wants) <= link.bytes_out:
            from supervise_smtp.session.relay import client_acked

            measured = client_acked(link.cout, link.bytes_out,
                                    max(o for o in wants if o <= link.bytes_out))

        def took(offset: int | None) -> bool | None:
            if offset is None:
                return None
            if offset > link.bytes_out:
                return False  # never all written: the client cannot have it
            if measured is None:
                return None
            acked, over = measured
            return True if acked >= offset else (False if over else None)

        return took(reply), took(before_quit)

    # -- after the verdict -----------------------------------------------------
    def report(self, verdict: str, line: dict[str, object]) -> None:
        """The transcript kept or dropped by verdict, and the alert hook."""
        out, tap, opts = self.out, self.tap, self.opts
        if tap.capture is not None:
            capture, tap.capture = tap.capture, None
            try:
                path = capture.finish(verdict)
            except Exception as exc:
                path, capture.error = None, capture.error or f"capture failed: {exc!r}"[:200]
            if capture.error:
                out.emit("capture_error", error=capture.error)
            elif path:
                out.emit("capture", file=path)
        if opts.alert_exec:
            from supervise_smtp.session.alert import maybe_alert

            try:
                result = maybe_alert(opts.alert_exec, opts.alert_on, opts.alert_rate,
                                     opts.state_dir, verdict, line,
                                     self.facts.scanner_died_pid is not None, self.env)
            except Exception as exc:  # an alert problem never changes the session's outcome
                result = {"action": "error", "error": repr(exc)[:200]}
            if result:
                out.emit("alert", {"verdict": verdict, **result})


def say_refused(out: Output, where: str, err: TempError, duration_ms: int) -> None:
    """The lines of a connection refused before its child ran (exit 111): the
    wrapper_error and its summary, the same wherever the refusal came from."""
    out.emit("wrapper_error", where=where, error=str(err), errno=err.errno)
    out.emit("summary", verdict="wrapper_error", stage="connect", reason=str(err),
             duration_ms=duration_ms, exit=EXIT_TEMP)
    out.close(LOG_DRAIN_SECONDS)


class ObserverTap:
    """Shows the relay's bytes to the SMTP observer, logs and remembers what it finds.

    An exception here (the observer's or the output's) is caught by the
    relay, which drops the tap and goes on relaying: fail open.
    """

    __slots__ = ("observer", "emit", "wanted", "facts", "on_data_start", "capture")

    def __init__(self, observer: Observer, emit: Callable[..., None],
                 wanted: frozenset[str] | None, facts: Facts) -> None:
        self.observer = observer
        self.emit = emit
        self.wanted = wanted  # None: every event
        self.facts = facts
        self.on_data_start: Callable[[], None] | None = None
        self.capture: Any = None  # --capture: a capture.Capture fed the same events

    def _log(self, events: list[Event]) -> None:
        wanted, note = self.wanted, self.facts.note
        for ev in events:
            name = ev.NAME
            note(ev)
            if name == "data_start" and self.on_data_start is not None:
                self.on_data_start()  # qmail-smtpd forked its queue program before the 354
            if wanted is None or (name in wanted and not getattr(ev, "encrypted", False)):
                # an encrypted alert is most often TLS 1.2's close_notify: not news
                self.emit(name, ev.fields())

    def client_data(self, data: bytes) -> None:
        capture = self.capture
        if capture is not None and capture.body != "none" and (
                self.observer.stage == "data_body"):
            capture.body_data(data)  # --capture-body: bytes of the message itself
        events = self.observer.feed_client(data)
        if events:
            self._log(events)
            if self.capture is not None:
                self._capture("<", events)

    def server_data(self, data: bytes) -> None:
        events = self.observer.feed_server(data)
        if events:
            self._log(events)
            if self.capture is not None:
                self._capture(">", events)

    def _capture(self, direction: str, events: list[Event]) -> None:
        capture = self.capture
        try:
            for ev in events:
                capture.event(direction, ev)
        except Exception as exc:  # a capture bug costs the transcript, not the observer
            capture.error = capture.error or f"capture failed: {exc!r}"[:200]


def _connect_fields(child: Child, getenv: Callable[[str], str | None]) -> dict[str, object]:
    return {
        "remote_port": getenv("TCPREMOTEPORT"),
        "remote_host": getenv("TCPREMOTEHOST"),
        "remote_info": getenv("TCPREMOTEINFO"),
        "local": getenv("TCPLOCALIP"),
        "local_port": getenv("TCPLOCALPORT"),
        "child_pid": child.pid,
        "prog": child.argv[0],
    }


def _exit_fields(status: ExitStatus) -> dict[str, object]:
    if status.lost:
        return {"exit": "unknown"}
    return {
        "exit": status.code,
        "signal": signal_name(status.signal) if status.signal is not None else None,
        "core": status.core if status.signal is not None else None,
    }


_S_IFMT, _S_IFREG, _S_IFCHR = 0o170000, 0o100000, 0o020000  # no `stat` import: start-up
_DEV_NULL = os.makedev(1, 3)


def _never_blocks(fd: int) -> bool:
    """fd is a regular file or /dev/null: a write to it never waits for a reader."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    kind = st.st_mode & _S_IFMT
    return kind == _S_IFREG or (kind == _S_IFCHR and st.st_rdev == _DEV_NULL)


def _error_fields(exc: BaseException) -> dict[str, object]:
    """What an observer bug looks like in the log: the error and where it was raised."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    at = None
    if tb is not None:
        at = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
    return {"error": repr(exc)[:300], "at": at}


def _make_capture(opts: Options, base: dict[str, object]) -> Any:
    """A transcript for this connection when --capture asks for one (and the peer matches)."""
    if not opts.capture:
        return None
    remote = base.get("remote")
    if opts.capture_remote is not None:
        import ipaddress

        try:
            addr = ipaddress.ip_address(str(remote))
        except ValueError:
            return None
        if not any(addr in net for net in opts.capture_remote if net.version == addr.version):
            return None
    from supervise_smtp.session.capture import Capture

    return Capture(opts.capture, int(str(base["pid"])), str(remote) if remote else None,
                   opts.capture_when, max_bytes=opts.capture_max_bytes, body=opts.capture_body)
