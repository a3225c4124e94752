"""``supervise-smtp collect``: Prometheus counters from the log stream, in front of the logger.

The log service's run script chain-loads it before the real logger:

    exec supervise-smtp collect --textfile /var/lib/prometheus/node-exporter/supervise_smtp.prom \\
      -- svlogd -tt ./main

collect spawns the logger with a pipe as its stdin and passes every byte it
reads from its own stdin to that pipe at once, unchanged; the logger still
timestamps, rotates and owns its directory. The ``event=summary`` lines
(logfmt or JSON, read by logs/parse.py as report reads them) are counted on
the way (metrics.py); the counters go to a node_exporter textfile (written
atomically every --interval seconds, mode 0644), to ``/metrics`` over HTTP
(--listen, served from this process's own poll loop: no thread), or both.

The log path comes first:
- Backpressure, never a drop: while the logger has not taken what was read,
  nothing more is read from stdin, so a slow logger slows the writers as it
  would without collect.  Reads and the logger's pipe are one page each
  (READ_BYTES, the pipe resized to PIPE_BYTES), so that little is in flight
  between the two if the logger dies.
- Counting, the textfile and HTTP never stop the relay: a line that cannot
  be read is counted as unreadable, a textfile that cannot be written or a
  port that cannot be bound is one warning on stderr (then retried), and the
  lines keep flowing.  The textfile is rewritten every interval, changed or
  not: its mtime says collect is alive (the SuperviseSmtpTextfileStale rule).
- stderr is the log service's own stderr (runsvdir's or svscan's
  readproctitle, s6-svscan's console): where svlogd and multilog report
  their own trouble, never the log that collect relays.

Signals: HUP, ALRM, CONT, INT, QUIT, USR1 and USR2 are passed on to the
logger as they arrive (``svc -a``, ``sv alarm`` and ``s6-svc -a`` signal
the log service's process, which is now collect).  TERM is the stop:
collect finishes the line it is reading, stops reading (what it has not
read stays in the supervisor's pipe for the next logger, as multilog leaves
it), hands the logger everything it read, and closes the logger's stdin;
the logger writes it all and exits at the end of its input.  Sending the
TERM on at once would make multilog and svlogd stop at their next newline
and lose what was still in collect's pipe.  If the logger is still running
STOP_GRACE_S later, or at a second TERM, the TERM is passed on.

Exit: the logger's status (so the supervisor restarts the pair); 128 + N
when signal N killed it, as a shell reports it; 100 usage; 111 when the
logger cannot be started.  End of stdin: the logger's stdin is closed, the
logger waited for, the textfile written a last time.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from typing import TYPE_CHECKING

from supervise_smtp.errors import TempError, UsageError, say

if TYPE_CHECKING:
    import subprocess

    from supervise_smtp.logs.http import MetricsHTTP
    from supervise_smtp.logs.metrics import Metrics, TextfileWriter

__all__ = [
    "DEFAULT_INTERVAL_S",
    "FORWARDED_SIGNALS",
    "MAX_LINE_BYTES",
    "STOP_GRACE_S",
    "USAGE",
    "Collect",
    "Config",
    "main",
    "parse_args",
]

USAGE = ("usage: supervise-smtp collect [--textfile PATH [--interval S]] "
         "[--listen ADDR:PORT] -- logger [args...]")
DEFAULT_INTERVAL_S = 15.0
READ_BYTES = 4096
PIPE_BYTES = 4096
MAX_LINE_BYTES = 65536  # longer lines are not counted (summary lines stay under 4000)
STOP_GRACE_S = 10.0
BIND_RETRY_S = 10.0
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGALRM, signal.SIGCONT, signal.SIGINT,
                     signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def help_text() -> str:
    return f"""{USAGE}

A log-stage filter: runs the logger (multilog, svlogd, s6-log) with a pipe
as its stdin, passes every byte of its own stdin on unchanged, and counts
the event=summary lines as Prometheus metrics.  At least one of:

  --textfile PATH     write the metrics to PATH (node_exporter's textfile
                      collector), atomically, mode 0644
  --interval S        ... every S seconds (default 15)
  --listen ADDR:PORT  serve them at http://ADDR:PORT/metrics (IPv4, [IPv6],
                      or :PORT for every address)

TERM: finish the current line, give the logger what was read, close its
stdin; HUP ALRM CONT INT QUIT USR1 USR2: passed on to the logger.
exit: the logger's status (128+N when signal N killed it); 100 usage;
111 the logger could not be started.
"""


class Config:
    """collect's command line."""

    __slots__ = ("textfile", "interval", "listen", "logger")

    def __init__(self, textfile: str | None, interval: float, listen: tuple[str, int] | None,
                 logger: list[str]) -> None:
        self.textfile = textfile
        self.interval = interval
        self.listen = listen
        self.logger = logger


def parse_args(args: list[str]) -> Config | None:
    """The Config, or None for --help (printed); UsageError for a bad command line."""
    from supervise_smtp.logs.http import parse_listen

    textfile: str | None = None
    interval: float | None = None
    listen: tuple[str, int] | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-h", "--help"):
            os.write(1, help_text().encode())
            return None
        if not arg.startswith("-"):
            break
        name, eq, value = arg.partition("=")
        if name not in ("--textfile", "--interval", "--listen"):
            raise UsageError(f"unknown option {arg} ({USAGE})")
        if not eq:
            if i + 1 >= len(args):
                raise UsageError(f"{name} needs a value ({USAGE})")
            i += 1
            value = args[i]
        i += 1
        if name == "--textfile":
            if not value or value.endswith("/"):
                raise UsageError(f"--textfile wants a file name, not {value!r}")
            textfile = value
        elif name == "--interval":
            try:
                interval = float(value)
            except ValueError:
                interval = -1.0
            if not 0.1 <= interval <= 86400:
                raise UsageError(f"--interval wants seconds from 0.1 to 86400, not {value!r}")
        else:
            try:
                listen = parse_listen(value)
            except ValueError as err:
                raise UsageError(f"--listen: {err}") from None
    logger = args[i:]
    if not logger:
        raise UsageError(f"no logger to run ({USAGE})")
    if textfile is None and listen is None:
        raise UsageError(f"--textfile or --listen wanted: nothing to do ({USAGE})")
    if interval is not None and textfile is None:
        raise UsageError("--interval without --textfile")
    return Config(textfile, DEFAULT_INTERVAL_S if interval is None else interval, listen,
                  logger)


def _warn(text: str) -> None:
    """One line on stderr (the supervisor's, not the log), if it takes it within 0.1 s."""
    say(f"supervise-smtp collect: {text}\n", wait_ms=100)


class Counting:
    """The summary lines of the relayed bytes, counted; never raises."""

    def __init__(self, metrics: Metrics) -> None:
        from supervise_smtp.session.linesplit import LineSplitter

        self.metrics = metrics
        self.splitter = LineSplitter(MAX_LINE_BYTES)
        self.mid_line = False  # the last byte seen was not a newline

    def feed(self, data: bytes) -> None:
        """Count the complete lines in ``data``; b"" (the end) counts an unfinished last one.

        Lines are read by logs.parse.parse_event, the tolerant reader ``report``
        uses too: both count the same lines.  A summary line it finds
        malformed, or one over MAX_LINE_BYTES, is counted as unreadable.
        """
        from supervise_smtp.logs.parse import parse_event

        self.mid_line = bool(data) and not data.endswith(b"\n")
        metrics = self.metrics
        for line, _total, truncated in self.splitter.feed(data):
            ours = line.startswith((b"event=summary", b'{"event": "summary"'))
            if not ours and not (line.startswith(b"{") and b'"summary"' in line):
                continue  # not a summary: nothing to count
            try:
                fields = "" if truncated else parse_event(line.decode("ascii", "replace"))
                if isinstance(fields, dict):
                    if fields.get("event") == "summary":
                        metrics.observe(fields)
                elif ours:
                    metrics.unreadable_line()
            except Exception:  # a counting bug never stops the relay: count it and go on
                metrics.unreadable_line()


class Collect:
    """The relay from stdin to the logger, with the counting on the side."""

    def __init__(self, cfg: Config) -> None:
        from supervise_smtp.logs.metrics import Metrics, TextfileWriter

        self.cfg = cfg
        self.metrics = Metrics()
        self.counting = Counting(self.metrics)
        self.textfile: TextfileWriter | None = None
        if cfg.textfile:
            self.textfile = TextfileWriter(self.metrics, cfg.textfile, cfg.interval, _warn)
        self.http: MetricsHTTP | None = None
        self.bind_failing = False
        self.bind_due = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the logger, until it is reaped
        self.out_fd = -1  # the logger's stdin, our end
        self.pending = b""  # read from stdin, not yet taken by the logger
        self.stdin_open = True
        self.stops = 0  # TERMs received
        self.stop_deadline: float | None = None
        self.term_sent = False
        self.wake_r = self.wake_w = -1

    # signals

    def _forward(self, signum: int, _frame: object) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signum)
            except OSError:
                pass

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stops += 1

    def _install(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._forward)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # a handler, so the wakeup fd hears it

    # the logger

    def spawn(self) -> None:
        """Start the logger on a fresh pipe; TempError when it cannot run."""
        import fcntl
        import subprocess

        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        try:
            self.proc = subprocess.Popen(self.cfg.logger, stdin=r, close_fds=True)
        except OSError as err:
            os.close(r)
            os.close(w)
            raise TempError(f"unable to spawn {self.cfg.logger[0]}: "
                            f"{err.strerror or err}", err.errno) from err
        os.close(r)
        os.set_blocking(w, False)  # our own pipe: fd 0 and 2 stay as we found them
        self.out_fd = w
        self.pid = self.proc.pid

    def _reaped(self) -> int | None:
        """The logger's exit status once it has ended (then no more signals go to it)."""
        if self.pid is None or self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        self.pid = None
        return 128 - code if code < 0 else code

    def _close_out(self) -> None:
        if self.out_fd >= 0:
            os.close(self.out_fd)
            self.out_fd = -1
            if self.stop_deadline is None:
                self.stop_deadline = time.monotonic() + STOP_GRACE_S

    def _term_logger(self) -> None:
        if not self.term_sent and self.pid is not None:
            self.term_sent = True
            self._forward(signal.SIGTERM, None)

    # the relay

    def _flush(self) -> None:
        """Give the logger what it takes of ``pending`` now."""
        while self.pending:
            try:
                n = os.write(self.out_fd, self.pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE: the logger closed its stdin or died
                self.pending = b""
                self._close_out()
                return
            self.pending = self.pending[n:]

    def _read(self) -> None:
        size = 1 if self.stops and self.counting.mid_line else READ_BYTES  # TERM: to the newline
        try:
            data = os.read(0, size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            self.counting.feed(b"")
            return
        self.pending = data
        self._flush()
        self.counting.feed(data)

    def _reading(self) -> bool:
        if not self.stdin_open or self.out_fd < 0 or self.pending:
            return False
        return not self.stops or self.counting.mid_line

    def _housekeeping(self, now: float) -> None:
        if self.stops and self.stop_deadline is None:
            self.stop_deadline = now + STOP_GRACE_S
        if self.stops > 1 or (self.stop_deadline is not None and now >= self.stop_deadline):
            self.pending = b""  # the logger is stuck or was told twice: stop it
            self._close_out()
            self._term_logger()
        elif self.out_fd >= 0 and not self.pending and (
                not self.stdin_open or self.stops and not self.counting.mid_line):
            self._close_out()  # everything read is in the logger's pipe: its end of input
        if self.textfile is not None:
            self.textfile.maybe_write(now)
        if self.cfg.listen is not None:
            self._listen(now)
        if self.http is not None:
            self.http.expire(now)

    def _listen(self, now: float) -> None:
        from supervise_smtp.logs.http import MetricsHTTP

        if self.http is not None or now < self.bind_due:
            return
        assert self.cfg.listen is not None
        host, port = self.cfg.listen
        http = MetricsHTTP(host, port, self.metrics.exposition)
        try:
            http.open()
        except OSError as err:
            self.bind_due = now + BIND_RETRY_S
            if not self.bind_failing:
                _warn(f"warning: unable to listen on {host}:{port}: {err.strerror or err}; "
                      f"still logging, retrying every {BIND_RETRY_S:g} s")
            self.bind_failing = True
            return
        if self.bind_failing:
            _warn(f"info: listening on {host}:{port} now")
        self.bind_failing = False
        self.http = http

    def _timeout_ms(self, now: float) -> int:
        due = [now + 3600.0]
        if self.textfile is not None:
            due.append(self.textfile.due)
        if self.cfg.listen is not None and self.http is None:
            due.append(self.bind_due)
        if self.http is not None:
            deadline = self.http.next_deadline()
            if deadline is not None:
                due.append(deadline)
        if self.stop_deadline is not None:
            due.append(self.stop_deadline)
        return max(0, int((min(due) - now) * 1000) + 1)

    def run(self) -> int:
        """Relay until the logger has ended; its status."""
        self._install()
        self.spawn()
        wake_r = self.wake_r
        status = None
        while True:
            now = time.monotonic()
            self._housekeeping(now)
            status = self._reaped()
            if status is not None:
                break
            poller = select.poll()
            if self.pending and self.out_fd >= 0:
                poller.register(self.out_fd, select.POLLOUT)
            elif self._reading():
                poller.register(0, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            if self.http is not None:
                for fd, events in self.http.wanted():
                    poller.register(fd, events)
            for fd, revents in poller.poll(self._timeout_ms(now)):
                if fd == wake_r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except OSError:
                        pass
                elif fd == 0:
                    if self._reading():  # not after a TERM that came with this wake-up
                        self._read()
                elif fd == self.out_fd:
                    self._flush()
                elif self.http is not None and self.http.owns(fd):
                    self.http.handle(fd, revents)
        self._finish()
        return status

    def _finish(self) -> None:
        if self.out_fd >= 0:
            os.close(self.out_fd)
            self.out_fd = -1
        if self.textfile is not None:
            self.textfile.maybe_write(time.monotonic(), force=True)
        if self.http is not None:
            self.http.close()


def main(args: list[str]) -> int:
    """Parse, spawn the logger, relay and count until it ends; its status."""
    cfg = parse_args(args)
    if cfg is None:
        return 0
    try:
        os.fstat(0)
    except OSError as err:
        if err.errno == errno.EBADF:
            raise TempError("stdin is closed: nothing to relay") from err
    return Collect(cfg).run()
