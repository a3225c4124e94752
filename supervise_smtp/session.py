"""One connection: spawn the child, relay, watch, write what happened.

This wires the parts together and decides nothing itself: process spawns and
reaps, relay moves bytes, the tap (the SMTP observer) watches them, output
writes the lines.  Everything runs in one process, one thread, no asyncio.
"""

from __future__ import annotations

import _signal
import os
import time

from supervise_smtp.errors import TempError
from supervise_smtp.process import Child, ExitStatus, reap, signal_name, spawn

TYPE_CHECKING = False  # typing costs 8 ms of start-up; mypy knows this name
if TYPE_CHECKING:
    from supervise_smtp.relay import Tap

__all__ = ["Options", "run", "FORWARDED_SIGNALS", "MAX_STDERR_TAG_BYTES", "MAX_STDERR_PASS_BYTES"]

FORWARDED_SIGNALS = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT, _signal.SIGALRM)
MAX_STDERR_TAG_BYTES = 1024  # keeps an event line under PIPE_BUF
MAX_STDERR_PASS_BYTES = 65536


class Options:
    """Per-connection settings, parsed by cli."""

    __slots__ = ("stderr_mode", "format", "linger_s")

    def __init__(self, stderr_mode: str = "tag", format: str = "logfmt",
                 linger_s: float = 1.0) -> None:
        self.stderr_mode = stderr_mode
        self.format = format
        self.linger_s = linger_s


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


def _make_tap(opts: Options) -> Tap | None:
    """The observer's seam: returns the object the relay shows bytes to.

    None until the SMTP observer is plugged in; the relay then only moves
    bytes.
    """
    return None


def run(opts: Options, argv: list[str]) -> ExitStatus:
    """Supervise one connection; returns how the child ended."""
    started = time.monotonic()
    env = os.environ
    base: dict[str, object] = {"remote": env.get("TCPREMOTEIP"), "pid": os.getpid()}
    try:
        child = spawn(argv)  # first: qmail-smtpd starts while we import the rest
    except TempError as err:
        from supervise_smtp.output import Output

        out = Output(opts.format)
        out.base = base
        out.emit("wrapper_error", where="spawn", error=str(err), errno=err.errno)
        raise
    reaped: list[ExitStatus] = []

    def forward(signum: int, _frame: object) -> None:
        if not reaped:
            try:
                os.kill(child.pid, signum)
            except OSError:
                pass

    for sig in FORWARDED_SIGNALS:
        _signal.signal(sig, forward)

    from supervise_smtp.lines import LineSplitter
    from supervise_smtp.output import Output
    from supervise_smtp.relay import ClientEnd, Relay
    from supervise_smtp.scanner import classify

    out = Output(opts.format)
    out.base = base

    out.emit("connect", _connect_fields(env, child))
    passthrough = opts.stderr_mode == "pass"
    lines = LineSplitter(MAX_STDERR_PASS_BYTES if passthrough else MAX_STDERR_TAG_BYTES,
                         split=passthrough)

    def on_stderr(data: bytes) -> None:
        for line, total, truncated in lines.feed(data):
            source = classify(line)
            if passthrough:
                out.write_raw(line + b"\n")
            else:
                out.emit("child_stderr", child_pid=child.pid, source=source, text=line,
                         line_bytes=total, truncated=True if truncated else None)

    def child_exited() -> bool:
        if not reaped:
            status = reap(child, block=False)
            if status is not None:
                reaped.append(status)
        return bool(reaped)

    cin, cout = ClientEnd(0), ClientEnd(1)
    relay = Relay(cin, cout, child.sock, child.err_fd, child.pidfd, _make_tap(opts),
                  on_stderr, child_exited, linger_s=opts.linger_s)
    relay.run()
    if not reaped:
        reaped.append(reap(child) or ExitStatus(0, None))
    child.sock.close()
    on_stderr(b"")
    status = reaped[0]
    if relay.tap_error is not None:
        out.emit("observer_error", error=repr(relay.tap_error))
    out.emit("child_exit", child_pid=child.pid, **_exit_fields(status),
             user_s=round(status.user_s, 3), sys_s=round(status.sys_s, 3),
             maxrss_kb=status.maxrss_kb)
    end = relay.ended or time.monotonic()
    out.emit("disconnect", child_pid=child.pid, bytes_in=relay.bytes_in,
             bytes_out=relay.bytes_out, first_close=relay.first_close or "none",
             client_error=relay.client_error,
             duration_ms=int((end - started) * 1000), **_exit_fields(status))
    return status
