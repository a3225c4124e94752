"""One connection: spawn the child, relay, watch, write what happened.

This wires the parts together and decides nothing itself: process spawns and
reaps, relay moves bytes, the tap (the SMTP observer) watches them, output
writes the lines.  Everything runs in one process, one thread, no asyncio
(output's writer thread only moves finished lines to fd 2).
"""

from __future__ import annotations

import _signal
import os
import time

from supervise_smtp.errors import TempError
from supervise_smtp.options import Options
from supervise_smtp.process import Child, ExitStatus, reap, signal_name, spawn

TYPE_CHECKING = False  # typing costs 8 ms of start-up; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from supervise_smtp.diagnose import Facts
    from supervise_smtp.observer import Event, Observer
    from supervise_smtp.output import Output
    from supervise_smtp.relay import Relay

__all__ = ["Options", "run", "FORWARDED_SIGNALS", "MAX_STDERR_TAG_BYTES", "MAX_STDERR_PASS_BYTES"]

FORWARDED_SIGNALS = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT, _signal.SIGALRM)
MAX_STDERR_TAG_BYTES = 1024  # keeps an event line under PIPE_BUF
MAX_STDERR_PASS_BYTES = 65536
LOG_DRAIN_SECONDS = 1.0  # at the end, how long the event lines may wait for fd 2


def _connect_fields(env: os._Environ[str], child: Child) -> dict[str, object]:
    return {
        "remote_port": env.get("TCPREMOTEPORT"),
        "remote_host": env.get("TCPREMOTEHOST"),
        "remote_info": env.get("TCPREMOTEINFO"),
        "local": env.get("TCPLOCALIP"),
        "local_port": env.get("TCPLOCALPORT"),
        "child_pid": child.pid,
        "prog": child.argv[0],
    }


def _exit_fields(status: ExitStatus) -> dict[str, object]:
    return {
        "exit": status.code,
        "signal": signal_name(status.signal) if status.signal is not None else None,
        "core": status.core if status.signal is not None else None,
    }


# Observer events that diagnose needs remembered.
_NOTED = frozenset({"reply", "peer_closed", "starttls", "tls_server_hello", "tls_alert",
                    "data_start"})

# What is worth a line of its own while the session runs: anomalies only,
# so that a clean session stays quiet (its summary says the rest).
ANOMALY_EVENTS = frozenset({
    "bare_lf", "smuggling", "data_rejected", "line_too_long", "pipelining_violation",
    "early_talker", "starttls_injection", "malformed_reply", "tls_alert", "tls_not_tls",
    "not_smtp", "reject",
})


class ObserverTap:
    """Shows the relay's bytes to the SMTP observer and logs what it finds.

    An exception here (the observer's or the output's) is caught by the
    relay, which drops the tap and goes on relaying: fail open.
    """

    __slots__ = ("observer", "emit", "wanted", "facts", "client_eof", "on_data_start", "capture")

    def __init__(self, observer: Observer, emit: Callable[..., None],
                 wanted: frozenset[str] | None, facts: Facts) -> None:
        self.observer = observer
        self.emit = emit
        self.wanted = wanted  # None: every event
        self.facts = facts
        self.client_eof = False
        self.on_data_start: Callable[[], None] | None = None
        self.capture: Any = None  # --capture: a capture.Capture fed the same events

    def _log(self, events: list[Event]) -> None:
        wanted = self.wanted
        for ev in events:
            if ev.NAME in _NOTED:
                self._note(ev)
            if wanted is None or (ev.NAME in wanted and not getattr(ev, "encrypted", False)):
                # an encrypted alert is most often TLS 1.2's close_notify: not news
                self.emit(ev.NAME, ev.fields())

    def _note(self, ev: Any) -> None:
        """Keep what diagnose needs beyond the observer's own state."""
        f = self.facts
        name = ev.NAME
        if name == "reply":
            if ev.command in ("DATA_END", "BDAT_LAST"):
                f.end_replies.append((ev.code, ev.text or b""))
                f.reply_after_client_eof = self.client_eof
            elif ev.code >= 400 and ev.command is not None:
                f.refusals.append((ev.code, ev.text or b""))
                del f.refusals[:-5]
        elif name == "peer_closed":
            if ev.peer == "client" and f.client_stage is None:
                f.client_stage = ev.stage
        elif name == "data_start":
            if self.on_data_start is not None:
                self.on_data_start()
        elif name == "starttls":
            f.tls_started = True
        elif name == "tls_server_hello":
            f.tls_version, f.tls_cipher, f.tls_hello_done = ev.version, ev.cipher, True
        elif name == "tls_alert":
            if f.tls_alert is None and ev.level == "fatal":
                f.tls_alert = (ev.level, ev.description, ev.direction)

    def client_data(self, data: bytes) -> None:
        if not data:
            self.client_eof = True
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
    if opts.capture_remote:
        import ipaddress

        try:
            addr = ipaddress.ip_address(str(remote))
        except ValueError:
            return None
        nets = [ipaddress.ip_network(n, strict=False) for n in opts.capture_remote.split(",")]
        if not any(addr in net for net in nets if net.version == addr.version):
            return None
    from supervise_smtp.capture import Capture

    when = None if opts.capture_when == "always" else frozenset(opts.capture_when.split(","))
    return Capture(opts.capture, int(str(base["pid"])), str(remote) if remote else None,
                   when, max_bytes=opts.capture_max_bytes, body=opts.capture_body)


def _make_tap(opts: Options, emit: Callable[..., None], facts: Facts) -> ObserverTap:
    """The observer's seam: the object the relay shows bytes to.

    Always observing (the end of the session is judged on what it saw);
    ``--events`` only chooses what is logged as it happens.
    """
    from supervise_smtp.observer import Observer

    wanted = {"all": None, "none": frozenset()}.get(opts.events, ANOMALY_EVENTS)
    return ObserverTap(Observer(), emit, wanted, facts)


def run(opts: Options, argv: list[str]) -> ExitStatus:
    """Supervise one connection; returns how the child ended."""
    started = time.monotonic()
    env = os.environ
    base: dict[str, object] = {"remote": env.get("TCPREMOTEIP"), "pid": os.getpid()}
    try:
        child = spawn(argv)  # first: qmail-smtpd starts while we import the rest
    except TempError as err:
        from supervise_smtp.output import Output

        out = Output(opts.format, background=True)
        out.base = base
        out.emit("wrapper_error", where="spawn", error=str(err), errno=err.errno)
        out.emit("summary", verdict="wrapper_error", stage="connect", reason=str(err),
                 duration_ms=int((time.monotonic() - started) * 1000), exit=111)
        out.close(LOG_DRAIN_SECONDS)
        raise
    reaped: list[ExitStatus] = []

    def signal_child(signum: int) -> None:
        """Forwarded signals and wrapper timeouts; never once the pid is reaped."""
        if not reaped:
            try:
                os.kill(child.pid, signum)
            except OSError:
                pass

    stop_signals: list[int] = []  # TERM, HUP, INT sent to us while the child ran

    def forward(signum: int, _frame: object) -> None:
        """An operator's signal (svc -d, a reload, shutdown) goes on to the child.

        Remembered for the verdict ``stopped``; ALRM is forwarded, not an order to stop.
        """
        if signum != _signal.SIGALRM and not reaped and signum not in stop_signals:
            stop_signals.append(signum)
        signal_child(signum)

    for sig in FORWARDED_SIGNALS:
        _signal.signal(sig, forward)
    subreaper_error = None
    if opts.subreaper:
        from supervise_smtp.process import become_subreaper

        subreaper_error = become_subreaper()

    # The rest is imported while the child starts and prints its banner;
    # what only some sessions need (procfs, the stderr splitter and
    # classifier) waits until it is needed: every module costs start-up CPU.
    from supervise_smtp.diagnose import Facts
    from supervise_smtp.output import Output
    from supervise_smtp.relay import ClientEnd, Relay

    out = Output(opts.format, background=True)  # never waits for the log service
    out.base = base
    out.emit("connect", _connect_fields(env, child))
    passthrough = opts.stderr_mode == "pass"
    splitter: list[Any] = []  # the LineSplitter, made at the first stderr bytes
    facts = Facts()

    def on_stderr(data: bytes) -> None:
        if not splitter:
            if not data:
                return
            from supervise_smtp.lines import LineSplitter

            splitter.append(LineSplitter(
                MAX_STDERR_PASS_BYTES if passthrough else MAX_STDERR_TAG_BYTES,
                split=passthrough))
        from supervise_smtp.scanner import classify, parent_died_pid

        for line, total, truncated in splitter[0].feed(data):
            source = classify(line)
            if source == "qmail-scanner":
                died = parent_died_pid(line)
                if died is not None:
                    facts.scanner_died_pid = died
            elif source != "child" and source not in facts.queue_notes:
                facts.queue_notes.append(source)
            if passthrough:
                out.write_raw(line + b"\n")
            else:
                out.emit("child_stderr", child_pid=child.pid, source=source, text=line,
                         line_bytes=total, truncated=True if truncated else None)

    queue: list[tuple[int, int | None]] = []  # (pid, start ticks) of the last messages

    def on_data_start() -> None:
        """qmail-smtpd forked its queue program before the 354: note who it is."""
        from supervise_smtp import procfs

        for pid in procfs.children(child.pid):
            queue.append((pid, procfs.start_ticks(pid)))
            del queue[:-4]
            return

    outlived: list[bool] = []

    def child_exited() -> bool:
        if not reaped:
            status = reap(child, block=False)
            if status is not None:
                reaped.append(status)
                if queue:  # did the queue program outlive qmail-smtpd?
                    from supervise_smtp import procfs

                    outlived.append(procfs.alive(*queue[-1]))
        return bool(reaped)

    cin, cout = ClientEnd(0), ClientEnd(1)
    tap = _make_tap(opts, out.emit, facts)
    tap.on_data_start = on_data_start
    try:
        tap.capture = _make_capture(opts, base)
    except Exception as exc:  # fail open: no transcript, the mail goes on
        out.emit("capture_error", error=repr(exc)[:200])

    def on_timeout(which: str) -> bytes | None:
        """What the client hears when a wrapper timeout fires: 421, unless in TLS."""
        if tap.observer.state.tls_active or tap.observer.stage in ("starttls", "tls"):
            return None
        return b"421 4.4.2 " + os.uname().nodename.encode() + b" timeout\r\n"

    def hold_timers() -> bool:
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
        if relay.tap is None or tap.observer.state.tls_active:
            return relay.child_turn
        return tap.observer.awaiting_data_reply

    fixer = None
    if opts.bare_lf == "fix":
        from supervise_smtp.barelf import BareLFFixer

        fixer = BareLFFixer()
    relay = Relay(cin, cout, child.sock, child.err_fd, child.pidfd, tap,
                  on_stderr, child_exited, linger_s=opts.linger_s,
                  idle_s=opts.idle_timeout_s, max_s=opts.max_session_s,
                  on_timeout=on_timeout, kill_child=signal_child, rewrite=fixer,
                  hold_timers=hold_timers)
    relay.run()
    if fixer is not None:
        for sender, count, first_line, dots in fixer.messages:
            out.emit("bare_lf_fixed", sender=sender, count=count, first_line=first_line,
                     dot_lines=dots or None)
        if fixer.messages:
            facts.notes.append("bare_lf_fixed")
    if relay.rewrite_error is not None:
        out.emit("wrapper_error", where="bare_lf_fix", **_error_fields(relay.rewrite_error))
    if not reaped:
        reaped.append(reap(child) or ExitStatus(0, None))
    child.sock.close()
    on_stderr(b"")
    if queue:
        facts.queue_watch_pid = queue[-1][0]
        facts.queue_outlived = bool(outlived and outlived[0])
    if subreaper_error is not None:
        out.emit("wrapper_error", where="subreaper", error=subreaper_error)
    elif opts.subreaper and queue and facts.queue_outlived:
        from supervise_smtp.process import reap_pid

        qstatus = reap_pid(queue[-1][0], max(opts.linger_s, 1.0))
        on_stderr(b"")  # what it wrote before it ended
        if qstatus is not None:
            facts.queue_reaped = _exit_fields(qstatus)
            facts.scanner_died_pid = facts.scanner_died_pid or queue[-1][0]
            out.emit("queue_parent_died", queue_pid=queue[-1][0], **facts.queue_reaped)
    status = reaped[0]
    facts.stopped_by = [signal_name(s) for s in stop_signals]
    if tap.observer.state.not_smtp:
        facts.notes.append("not_smtp")
    if relay.tap_error is not None:
        out.emit("observer_error", **_error_fields(relay.tap_error))
    out.emit("child_exit", child_pid=child.pid, **_exit_fields(status),
             user_s=round(status.user_s, 3), sys_s=round(status.sys_s, 3),
             maxrss_kb=status.maxrss_kb)
    end = relay.ended or time.monotonic()
    out.emit("disconnect", child_pid=child.pid, bytes_in=relay.bytes_in,
             bytes_out=relay.bytes_out, first_close=relay.first_close or "none",
             client_error=relay.client_error,
             duration_ms=int((end - started) * 1000), **_exit_fields(status))
    verdict, fields = _summary(out, facts, relay, tap, status, child,
                               int((end - started) * 1000))
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
        from supervise_smtp.alert import maybe_alert, parse_rate, parse_verdicts

        try:
            result = maybe_alert(
                opts.alert_exec,
                parse_verdicts(opts.alert_on) if opts.alert_on else None,
                parse_rate(opts.alert_rate) if opts.alert_rate else None,
                opts.state_dir, verdict, fields, facts.scanner_died_pid is not None)
        except Exception as exc:  # an alert problem never changes the session's outcome
            result = {"action": "error", "error": repr(exc)[:200]}
        if result:
            out.emit("alert", {"verdict": verdict, **result})
    out.close(LOG_DRAIN_SECONDS)
    return status


def _summary(out: Output, facts: Facts, relay: Relay, tap: ObserverTap, status: ExitStatus,
             child: Child, duration_ms: int) -> tuple[str, dict[str, object]]:
    """The one line that says what happened: event=summary verdict=..."""
    from supervise_smtp.diagnose import diagnose

    facts.state = tap.observer.state if relay.tap is not None else None
    if relay.tap_error is not None:
        facts.wrapper_error = f"observer failed: {relay.tap_error!r}"[:200]
    facts.exit_code = status.code
    facts.signal = status.signal
    facts.signal_name = signal_name(status.signal) if status.signal is not None else None
    facts.core = status.core
    facts.first_close = relay.first_close
    facts.client_gone = relay.client_gone
    facts.bytes_in = relay.bytes_in
    facts.bytes_out = relay.bytes_out
    st = facts.state
    if (st is not None and st.end_reply_offset is not None and not relay.client_gone
            and relay.out_at_client_eof is not None
            and relay.out_at_client_eof < st.end_reply_offset <= relay.bytes_out):
        # The reply to '.' went out after the client's EOF: did it take it?
        from supervise_smtp.relay import client_acked

        facts.reply_acked = client_acked(relay.cout.fd)
    facts.timeout_fired = relay.timeout_fired
    try:
        verdict, fields = diagnose(facts)
    except Exception as exc:  # fail open: a diagnose bug never costs the exit status
        verdict, fields = "wrapper_error", {"reason": f"diagnose failed: {exc!r}"[:200]}
    line = {"verdict": verdict, "remote": out.base.get("remote"), "pid": out.base.get("pid"),
            "child_pid": child.pid, **fields, "log_dropped": out.dropped or None,
            "duration_ms": duration_ms,
            **_exit_fields(status)}
    out.emit("summary", line)
    return verdict, line
