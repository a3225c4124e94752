"""``supervise-smtp serve``: a resident tcpserver that pays Python's start-up once.

The parent binds host:port, switches to -u/-g, imports everything a session
needs and then only accepts, forks, reaps and counts.  Each connection is a
forked worker that does what tcpserver's child does before its exec (banner,
environment with its DNS and ident lookups, the -x rules: serve's tcpenv,
dns and rules modules) and then runs the very session of the
per-connection wrapper, ``session.run(options, prog, env)``, with the
wrapper options parsed once in the parent; it exits as the wrapper would
(the child's code, its signal, 111 when the child could not run, 100 when
the rules deny), so the parent's ``event=end ... status=S`` is what
``tcpserver -v`` prints as ``end PID status S`` for the same connection.

Fork safety: the parent never starts a thread (its lines are written
synchronously, serve/log.py), freezes the garbage collector's objects
before each fork so that workers keep sharing its pages, and blocks the
signals it handles around fork() so that a worker starts with tcpserver's
dispositions (SIGCHLD, TERM, HUP, ALRM, INT as the wrapper finds them), no
wakeup fd and none of the parent's descriptors (listening socket, wakeup
pipe, log descriptor: all close-on-exec, and closed in the worker).

Signals: SIGCHLD wakes the poll loop through a wakeup pipe and every
finished worker is reaped (waitpid(-1, WNOHANG) until none is left, so
none is lost when several end at once).  SIGTERM (and SIGINT) close the
listening socket and exit 0, leaving running sessions to finish as
tcpserver does (``--drain S`` first waits up to S seconds for them).
SIGHUP and SIGALRM do nothing.  At the -c limit the listening socket leaves
the poll set: nothing is accepted, the kernel backlog holds new clients.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import signal
import socket
import time
from typing import Any

from supervise_smtp.errors import TempError, say
from supervise_smtp.serve import fds as serve_fds
from supervise_smtp.serve.config import InfoRequested, ServeConfig, help_text, parse_serve
from supervise_smtp.serve.exporter import Exporter
from supervise_smtp.serve.listen import address_of, listen_on, null_stdio, standard_fds, switch_user
from supervise_smtp.serve.log import ParentLog
from supervise_smtp.serve.stats import DENY_STATUS, ServeStats
from supervise_smtp.serve.tcpenv import peer_of
from supervise_smtp.serve.title import set_title
from supervise_smtp.serve.worker import DONE, encode_addr, serve_loop

__all__ = ["main", "Server", "Worker", "ACCEPT_BURST", "EMFILE_PAUSE_S", "IDLE_TRIM_S"]

ACCEPT_BURST = 16  # connections accepted per wake-up before reaping again
IDLE_TRIM_S = 2.0  # a worker idle this long beyond --spare-workers exits
EMFILE_PAUSE_S = 0.1  # out of descriptors: stop accepting this long, not spin
ACCEPT_ERROR_EVERY_S = 10.0  # ... and say so at most this often (repeated=N)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (signal.SIGCHLD, *_STOP_SIGNALS, signal.SIGHUP, signal.SIGALRM)
_NO_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def main(args: list[str]) -> int:
    """Parse, bind, switch user, serve until SIGTERM; 0 then (UsageError 100, TempError 111)."""
    try:
        cfg = parse_serve(args)
    except InfoRequested as asked:
        if asked.what == "help":
            os.write(1, help_text().encode())
        else:
            from supervise_smtp import __version__

            os.write(1, f"supervise-smtp {__version__}\n".encode())
        return 0
    standard_fds()
    family, address = address_of(cfg.host, cfg.port)
    _preload(cfg)
    if cfg.daemon:
        return _daemon(cfg, family, address)
    server = Server(cfg)  # signals caught before anyone can know our port (-1)
    server.listen(listen_on(family, address, cfg.backlog))
    server.open_metrics()  # a port below 1024 needs the user we start as
    switch_user(cfg.gid, cfg.uid)
    if cfg.print_port:
        os.write(1, b"%d\n" % server.sock.getsockname()[1])
    null_stdio()
    return server.run()


def _daemon(cfg: ServeConfig, family: int, address: tuple[object, ...]) -> int:
    """--daemon: bind, detach (serve_daemon.py), then as in the foreground."""
    from supervise_smtp.serve import daemon as serve_daemon

    sock = listen_on(family, address, cfg.backlog)
    if cfg.print_port:
        os.write(1, b"%d\n" % sock.getsockname()[1])
    # A SIGTERM as soon as the pidfile is there must stop us through Server's
    # handler (which removes the pidfile), not kill us: blocked until then.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    context = serve_daemon.detach(sock, cfg.pidfile, cfg.logfile, cfg.uid)
    try:  # in the daemon now: errors go to the log file
        server = Server(cfg)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        server.listen(sock)
        server.open_metrics()
        switch_user(cfg.gid, cfg.uid)
        return server.run()
    finally:
        serve_daemon.close(context)


def _preload(cfg: ServeConfig) -> None:
    """Import once, in the parent, what every worker would import for itself.

    The per-connection wrapper imports most of this lazily, after spawning
    its child; a forked worker finds it all loaded and shared.
    """
    import importlib

    opts = cfg.options
    names = ["supervise_smtp.session.run", "supervise_smtp.session.relay",
             "supervise_smtp.observer", "supervise_smtp.observer.auth",
             "supervise_smtp.observer.tls", "supervise_smtp.session.diagnose",
             "supervise_smtp.session.output", "supervise_smtp.session.stderr",
             "supervise_smtp.session.linesplit", "supervise_smtp.session.procfs",
             "supervise_smtp.serve.tcpenv",
             "ipaddress", "resource",
             "fcntl",  # relay.client_acked, at a session's end (the TCP send queue)
             "setproctitle"]  # each worker's title (serve/title.py), set after -u/-g
    if opts.capture:
        names.append("supervise_smtp.session.capture")
    if opts.alert_exec:
        names.append("supervise_smtp.session.alert")
    if opts.bare_lf == "fix":
        names.append("supervise_smtp.session.barelf")
    if cfg.rules is not None:
        names += ["supervise_smtp.serve.rules", "cdblib"]  # rules.lookup imports cdblib lazily
    if cfg.metrics_listen is not None or cfg.metrics_textfile is not None:
        names.append("supervise_smtp.logs.tally")  # each worker's end-of-session record
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:  # the worker will meet it again and drop (111)
            if name.startswith("supervise_smtp."):
                raise TempError(f"unable to load {name}: {err}") from err


class Server:
    """The accept loop: one listening socket, the workers alive, the log."""

    sock: socket.socket  # given by listen(), before run()

    def __init__(self, cfg: ServeConfig) -> None:
        """The wakeup pipe and the signal handlers; ``listen`` gives the socket."""
        from supervise_smtp.session.process import original_environ

        self.cfg = cfg
        self.log = ParentLog(cfg.options.format, cfg.verbosity)
        self.env = dict(original_environ())  # each worker's starts from this
        self.active: dict[int, str] = {}  # pid of a worker in a session -> remote address
        self.workers: dict[int, Worker] = {}  # every worker not yet reaped, by pid
        self.by_fd: dict[int, Worker] = {}  # the parent's end of each control socket
        self.idle: list[Worker] = []  # ready for a connection; the last one is the warmest
        self.stopping = 0  # the signal that stops us
        self.listening = False  # the listening socket is in the poll set
        self.paused_until = 0.0  # out of descriptors: no accept until then
        self.accept_errors = 0  # ... how many times since the last line said so
        self.accept_error_next = 0.0  # ... and when the next line may say it
        self.poller = select.poll()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller.register(self.wake_r, select.POLLIN)
        self.old_handlers: dict[int, object] = {}
        self.stats = ServeStats(cfg.stats_interval_s)
        self.exporter: Exporter | None = None  # with --metrics-listen or --metrics-textfile
        self._catch_signals()
        # a descriptor per worker: the limit is raised, or -c capped (said in run)
        self.nofile_short = serve_fds.make_room(cfg.limit, cfg.spare_workers)
        self.limit = cfg.limit  # -c, or what the descriptors allow
        self.held: tuple[int, tuple[object, ...]] | None = None  # accepted, out of fds

    def listen(self, sock: socket.socket) -> None:
        self.sock = sock

    def open_metrics(self) -> None:
        """serve's own metrics (exporter.py), the parent's alone; TempError when the
        /metrics port cannot be bound."""
        cfg = self.cfg
        if cfg.metrics_listen is not None or cfg.metrics_textfile is not None:
            self.exporter = Exporter(cfg, self.log, lambda: len(self.active))

    @property
    def metrics(self) -> Any:
        """The counters (logs.metrics.Metrics), or None without metrics."""
        return self.exporter.metrics if self.exporter is not None else None

    def run(self) -> int:
        """Serve until SIGTERM; 0."""
        local = self.sock.getsockname()
        cfg = self.cfg
        if self.nofile_short:
            http = self.exporter.clients if self.exporter is not None else 0
            self.limit = min(cfg.limit, serve_fds.room(cfg.spare_workers, http))
            self.log.error("serve_error", where="nofile", missing=self.nofile_short,
                           limit=self.limit,
                           error="RLIMIT_NOFILE hard limit too low for -c: -c capped")
        self.log.status("listen", pid=os.getpid(), local=local[0], local_port=local[1],
                        limit=self.limit, backlog=cfg.backlog, prog=cfg.prog[0])
        set_title("parent", f"{local[0]} {local[1]} -c {self.limit}")
        trouble = self.stats.start()  # psutil's import, once listening, before the freeze
        if trouble:
            self.log.error("serve_error", where="stats", error=trouble)
        gc.collect()
        gc.freeze()
        self._spare()
        while not self.stopping:
            self._wait(self._deadline())
            self._reap()
            now = time.monotonic()
            if self.stats.due(now):
                self._write_stats()
            if self.exporter is not None:
                self.exporter.tick(now)
            self._trim(now)
            if not self.stopping:
                self._accept()
        return self._stop()

    def _deadline(self) -> float | None:
        """When the loop must wake without a client: statistics, or an idle worker to end."""
        deadlines = [self.stats.next_at] if self.stats.next_at is not None else []
        if self.exporter is not None:
            deadlines += self.exporter.deadlines()
        if len(self.idle) > self.cfg.spare_workers:
            deadlines.append(self.idle[0].idle_since + IDLE_TRIM_S)
        return min(deadlines, default=None)

    def _trim(self, now: float) -> None:
        """Idle workers beyond --spare-workers end once idle IDLE_TRIM_S: a burst of
        clients keeps its workers for the next burst instead of forking anew."""
        while len(self.idle) > self.cfg.spare_workers \
                and self.idle[0].idle_since + IDLE_TRIM_S <= now:
            self._unlink(self.idle[0])

    def _write_stats(self) -> None:
        try:
            fields = self.stats.fields(len(self.active), list(self.workers))
        except Exception as err:  # psutil's trouble must not stop the server
            self.log.error("serve_error", where="stats", error=repr(err)[:200])
            return
        self.log.info("serve_stats", **fields)

    # -- signals ---------------------------------------------------------------
    def _catch_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in _HANDLED:
            self.old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Only remember; the wakeup pipe has already woken the poll loop."""
        if signum in _STOP_SIGNALS and not self.stopping:
            self.stopping = signum

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- the loop --------------------------------------------------------------
    def _wait(self, deadline: float | None) -> None:
        """Poll the wakeup pipe, the workers, and the listening socket while there is room."""
        now = time.monotonic()
        want = (not self.stopping and len(self.active) < self.limit
                and now >= self.paused_until and self.held is None)
        if want != self.listening:
            if want:
                self.poller.register(self.sock.fileno(), select.POLLIN)
            else:
                self.poller.unregister(self.sock.fileno())
            self.listening = want
        timeout_s = deadline - now if deadline is not None else None
        if now < self.paused_until and not self.stopping:
            pause = self.paused_until - now
            timeout_s = pause if timeout_s is None else min(timeout_s, pause)
        ms = -1 if timeout_s is None else max(0, int(timeout_s * 1000) + 1)
        if self.exporter is not None:
            self.exporter.poll(self.poller)
        for fd, revents in self.poller.poll(ms):
            if fd == self.wake_r:
                self._drain_wakeups()
            elif fd in self.by_fd:
                self._hear(self.by_fd[fd])
            elif self.exporter is not None:
                self.exporter.handle(fd, revents)

    def _hear(self, worker: Worker) -> None:
        """What a worker said: a session's end (its status), or EOF (it is exiting)."""
        while worker.ctl is not None:
            try:
                msg = worker.ctl.recv(8192, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                self._unlink(worker)
                return
            head, _, record = msg.partition(b"\n")
            if head.startswith(DONE + b" ") and head[2:].isdigit() and worker.pid in self.active:
                self._ended(worker, int(head[2:]))
                if record and self.metrics is not None:
                    self.metrics.observe_record(record)

    def _ended(self, worker: Worker, status: int) -> None:
        """A session is over, with the wait status its own process would have had."""
        remote = self.active.pop(worker.pid, None)
        self.stats.ended(status)
        if status == DENY_STATUS and self.metrics is not None:
            self.metrics.denied()
        worker.served += 1
        self.log.status("end", remote=remote, pid=worker.pid, status=status,
                        active=len(self.active), limit=self.limit)
        if worker.ctl is None or self.stopping or worker.served >= self.cfg.worker_sessions:
            self._unlink(worker)  # EOF ends it (one at its last session ends by itself)
        else:
            worker.idle_since = time.monotonic()
            self.idle.append(worker)  # the warmest last: taken first, the coldest trimmed

    def _unlink(self, worker: Worker) -> None:
        """No more connections for this worker: our end of its control socket closed."""
        if worker.ctl is not None:
            fd = worker.ctl.fileno()
            self.poller.unregister(fd)
            del self.by_fd[fd]
            worker.ctl.close()
            worker.ctl = None
        if worker in self.idle:
            self.idle.remove(worker)

    def _reap(self) -> None:
        """Every finished worker; one that died in a session ends it with its raw status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._hear(worker)  # a last "done" may be waiting behind its exit
            self._unlink(worker)
            if pid in self.active:  # crashed or killed in a session: tcpserver's view
                remote = self.active.pop(pid)
                self.stats.ended(status)
                self.log.status("end", remote=remote, pid=pid, status=status,
                                active=len(self.active), limit=self.limit)
            elif status:
                self.log.error("worker_lost", pid=pid, status=status, served=worker.served)

    def _accept(self) -> None:
        """Accept while there is room (at most ACCEPT_BURST), a worker for each."""
        if self.held is not None:  # accepted when descriptors ran out: its turn first
            if time.monotonic() < self.paused_until or len(self.active) >= self.limit:
                return
            (fd, addr), self.held = self.held, None
            if not self._give(fd, addr):
                return
        if not self.listening:
            return
        for _ in range(ACCEPT_BURST):
            if len(self.active) >= self.limit:
                return
            try:
                fd, addr = self.sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in _NO_FDS:
                    self._out_of_fds("accept", err)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            self.stats.accepted += 1
            if not self._give(fd, addr):
                return

    def _out_of_fds(self, where: str, err: OSError) -> None:
        """EMFILE and the like on the way to a session: pause accepting, one line per 10 s."""
        now = time.monotonic()
        self.accept_errors += 1
        if now >= self.accept_error_next:  # one line per 10 s while it lasts
            self.log.error("serve_error", where=where, error=err.strerror,
                           errno=err.errno, repeated=self.accept_errors)
            self.accept_errors = 0
            self.accept_error_next = now + ACCEPT_ERROR_EVERY_S
        self.paused_until = now + EMFILE_PAUSE_S

    def _give(self, fd: int, addr: tuple[object, ...]) -> bool:
        """Hand the connection over and close our copy of it; False: it is held.

        Out of descriptors for its worker, the client keeps waiting, as in
        the backlog (never accepted and closed): held, and handed over first
        once the pause is over.
        """
        try:
            handed = self._hand(fd, addr)
        except BaseException:
            os.close(fd)
            raise
        if handed:
            os.close(fd)
            return True
        self.held = (fd, addr)
        return False

    def _hand(self, fd: int, addr: tuple[object, ...]) -> bool:
        """The connection to an idle worker (a new one if none is): its fd goes over.

        False when no worker could be made for want of descriptors (the
        caller holds the connection); True when it was handed over, or
        dropped for another reason.
        """
        message = [b"C " + encode_addr(addr)]
        while True:
            fresh = not self.idle
            try:
                worker = self.idle.pop() if self.idle else self._fork()
            except OSError as err:
                if err.errno in _NO_FDS:
                    self._out_of_fds("fork", err)
                    return False
                self.log.error("drop", remote=str(addr[0]), where="fork", error=err.strerror,
                               errno=err.errno)
                return True
            assert worker.ctl is not None
            try:
                socket.send_fds(worker.ctl, message, [fd],
                                socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                break
            except OSError as err:  # an idle worker that died: the next one, or a new one
                self._unlink(worker)
                if fresh:
                    self.log.error("drop", remote=str(addr[0]), where="hand",
                                   error=err.strerror, errno=err.errno)
                    return True
        self.active[worker.pid] = peer_of(addr).ip
        if len(self.active) == self.limit:
            self.log.status("limit", active=len(self.active), limit=self.limit)
            if self.metrics is not None:
                self.metrics.limit_reached()
        return True

    def _spare(self) -> None:
        """The idle workers, forked before the first client needs one."""
        while len(self.idle) < self.cfg.spare_workers and not self.stopping:
            try:
                worker = self._fork()
            except OSError as err:
                self.log.error("serve_error", where="fork", error=err.strerror, errno=err.errno)
                return
            worker.idle_since = time.monotonic()
            self.idle.append(worker)

    def _fork(self) -> Worker:
        """A new worker, waiting on its control socket (OSError when fork fails)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        gc.freeze()  # objects made since the last fork join the shared ones
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            self._become_worker(mask, theirs)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        worker = Worker(pid, ours)
        self.workers[pid] = worker
        self.by_fd[ours.fileno()] = worker
        self.poller.register(ours.fileno(), select.POLLIN)
        return worker

    def _stop(self) -> int:
        """Stop accepting; with --drain, wait for the running sessions first."""
        if self.listening:
            self.poller.unregister(self.sock.fileno())
            self.listening = False
        self.sock.close()
        if self.held is not None:  # as a client left in the backlog: closed with it
            os.close(self.held[0])
            self.held = None
        for worker in list(self.idle):
            self._unlink(worker)  # idle workers end now; busy ones after their session
        self.log.status("stop", signal=signal.Signals(self.stopping).name,
                        active=len(self.active), drain_s=self.cfg.drain_s)
        deadline = time.monotonic() + self.cfg.drain_s
        while self.active and time.monotonic() < deadline:
            self._wait(deadline)
            self._reap()
        if self.exporter is not None:
            self.exporter.write_textfile(force=True)  # what the drained sessions added
            self.exporter.close()
        return 0

    # -- in the worker -----------------------------------------------------------
    def _become_worker(self, mask: set[int | signal.Signals], ctl: socket.socket) -> None:
        """Right after fork: the parent's signals and descriptors undone; never returns."""
        code = 111
        try:
            signal.set_wakeup_fd(-1)
            for sig, old in self.old_handlers.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)  # type: ignore[arg-type]
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.sock.close()
            if self.exporter is not None:  # else a restarted serve could not bind its port
                self.exporter.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            for other in self.workers.values():  # else they would never see our EOF
                if other.ctl is not None:
                    other.ctl.close()
            serve_fds.restore()  # the session's child gets tcpserver's limit
            set_title("worker", f"of {os.getppid()}")
            code = serve_loop(self.cfg, self.log, self.env, ctl, self.cfg.worker_sessions)
        except BaseException as exc:  # a bug of ours: never back into the parent's loop
            say(f"supervise-smtp serve: fatal: worker failed: {exc!r}"[:1000] + "\n")
            code = 111
        finally:
            os._exit(code)


class Worker:
    """A forked worker as the parent sees it: its pid and its control socket."""

    __slots__ = ("pid", "ctl", "served", "idle_since")

    def __init__(self, pid: int, ctl: socket.socket) -> None:
        self.pid = pid
        self.ctl: socket.socket | None = ctl  # None once we closed our end
        self.served = 0
        self.idle_since = 0.0  # monotonic time it last became idle
