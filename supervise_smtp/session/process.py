"""The child: spawn it on a socketpair, reap it, pass its fate on.

Only builtin modules here (os, _socket, _signal): this runs before the
banner, on every connection.  The child is spawned first of all, so that
qmail-smtpd's own start-up and banner overlap the wrapper's imports.

No pty, no ptrace: the child's fd 0 and fd 1 are one end of an AF_UNIX
socketpair (qmail-smtpd only needs read/write on them), fd 2 is a pipe the
wrapper reads, and the environment is passed on untouched (TCPREMOTEIP,
RELAYCLIENT, QMAILQUEUE...).
"""

from __future__ import annotations

import _signal
import _socket
import errno
import os

from supervise_smtp.errors import EXIT_TEMP, TempError

__all__ = ["Child", "ExitStatus", "FORWARDED_SIGNALS", "STOP_SIGNALS", "SignalWakeup",
           "become_subreaper",
           "default_sigchld", "die_like", "forward_signals", "original_environ", "reap",
           "reap_pid", "signal_name", "spawn", "standard_fds"]

# Python ignores these at start-up and an ignored disposition survives exec:
# qmail-smtpd must get them back at their defaults, as under plain tcpserver.
_RESET_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)
SOCKET_SNDBUF = 256 * 1024


class Child:
    """A running child: its pid, our end of the socketpair, its stderr pipe.

    ``status`` is set once it is reaped; from then on its pid may belong to
    another process, so nothing is ever sent to it again.
    """

    __slots__ = ("pid", "sock", "err_fd", "pidfd", "argv", "status")

    def __init__(self, pid: int, sock: _socket.socket, err_fd: int, pidfd: int | None,
                 argv: list[str]) -> None:
        self.pid = pid
        self.sock = sock
        self.err_fd = err_fd
        self.pidfd = pidfd
        self.argv = argv
        self.status: ExitStatus | None = None

    def signal(self, signum: int) -> None:
        """Send ``signum`` (forwarded, or a wrapper timeout's); never once reaped."""
        if self.status is None:
            try:
                os.kill(self.pid, signum)
            except OSError:
                pass

    def exited(self) -> bool:
        """Reap it if it has ended (never blocks); True once it has."""
        if self.status is None:
            self.status = reap(self, block=False)
        return self.status is not None


# An operator's orders (svc -d on a process group, a reload, shutdown): passed
# on to the child, and remembered for the verdict ``stopped``.  ALRM is
# passed on too, but it is no order to stop.
STOP_SIGNALS = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT)
FORWARDED_SIGNALS = (*STOP_SIGNALS, _signal.SIGALRM)


def forward_signals(child: Child) -> list[int]:
    """Pass TERM, HUP, INT and ALRM on to the child; returns the stop signals received."""
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum in STOP_SIGNALS and child.status is None and signum not in received:
            received.append(signum)
        child.signal(signum)

    for sig in FORWARDED_SIGNALS:
        _signal.signal(sig, forward)
    return received


class SignalWakeup:
    """A pipe the C-level signal handler writes a byte to: the relay polls its read end.

    Python runs a signal's handler between bytecodes.  A signal that lands
    after the last check and before the relay's poll() enters the kernel
    (the thread released the GIL and was preempted there) would otherwise
    wait for the next I/O, which a quiet child never makes: ``svc -d`` then
    hangs.  The byte in the pipe wakes poll(), and the handler runs.
    """

    __slots__ = ("fd", "_w", "_old")

    def __init__(self) -> None:
        self.fd = self._w = self._old = -1
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # out of descriptors: the relay's 100 ms tick stands in
            return
        try:
            self._old = _signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: nothing to wake
            os.close(r)
            os.close(w)
            return
        self.fd, self._w = r, w

    def drain(self) -> None:
        """Empty the pipe (the handlers themselves run on their own)."""
        try:
            while os.read(self.fd, 512):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """Give the wakeup back (serve's workers run many sessions)."""
        if self._w < 0:
            return
        _signal.set_wakeup_fd(self._old)
        os.close(self.fd)
        os.close(self._w)
        self.fd = self._w = -1


class ExitStatus:
    """How the child ended, with its resource usage.

    ``lost``: the status could not be read (someone else reaped the child);
    then ``code`` and ``signal`` are both None -- never an invented exit 0.
    """

    __slots__ = ("code", "signal", "core", "user_s", "sys_s", "maxrss_kb", "wstatus", "lost")

    @classmethod
    def unknown(cls) -> ExitStatus:
        status = cls(0, None)
        status.code = None
        status.lost = True
        return status

    def passed_on(self) -> int:
        """The wait status of a process that ends as the wrapper ends for this child.

        The one rule for both modes (cli exits so, serve's worker reports it):
        the child's exit code, or its signal (without a core), so that
        tcpserver's ``end PID status S`` is what it would be without us; a
        status that was lost is exit 111, never an invented 0.
        """
        if self.lost:
            return EXIT_TEMP << 8
        if self.signal is not None:
            return self.signal
        return (self.code or 0) << 8

    def __init__(self, wstatus: int, rusage: object | None) -> None:
        self.lost = False
        self.wstatus = wstatus
        if os.WIFSIGNALED(wstatus):
            self.code: int | None = None
            self.signal: int | None = os.WTERMSIG(wstatus)
            self.core = os.WCOREDUMP(wstatus)
        else:
            self.code = os.WEXITSTATUS(wstatus)
            self.signal = None
            self.core = False
        self.user_s = float(getattr(rusage, "ru_utime", 0.0))
        self.sys_s = float(getattr(rusage, "ru_stime", 0.0))
        self.maxrss_kb = int(getattr(rusage, "ru_maxrss", 0))


def standard_fds() -> TempError | None:
    """Make sure fds 0, 1 and 2 are open before we create any descriptor.

    A descriptor we create takes the lowest free number: with fd 2 closed (a
    run script without ``exec 2>&1``), the socketpair would become our fd 2
    and every event line would go to qmail-smtpd as an SMTP command.  So, as
    daemontools programs do: fd 2 closed gets /dev/null (the lines are lost,
    the mail is not).  fd 0 or 1 closed means there is no client: the error
    to report (exit 111), with nothing started.  Three fstat calls when all
    is well.
    """
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    if not closed:
        return None
    if closed[0] != 2:
        return TempError(f"fd {closed[0]} is closed: no client connection", errno.EBADF)
    try:
        null = os.open("/dev/null", os.O_WRONLY)  # fds 0 and 1 are open: this is fd 2
    except OSError as err:
        return TempError(f"fd 2 is closed and /dev/null cannot be opened: {err.strerror}",
                         err.errno)
    if null != 2:  # cannot happen, but never leave one of ours below 3 but fd 2
        os.dup2(null, 2)
        os.close(null)
    else:
        os.set_inheritable(2, True)
    return None


def original_environ() -> dict[bytes, bytes] | os._Environ[bytes]:
    """The environment exactly as we were started with it.

    Not os.environ: with no locale set (as under runsv or envdir -i), CPython
    adds LC_CTYPE=C.UTF-8 to it at start-up (PEP 538 locale coercion), and
    qmail-smtpd must see what tcpserver gave, nothing more.  The kernel keeps
    the environment block of execve in /proc/self/environ.
    """
    try:
        fd = os.open("/proc/self/environ", os.O_RDONLY)
    except OSError:
        return os.environb
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return os.environb
    finally:
        os.close(fd)
    env: dict[bytes, bytes] = {}
    for entry in b"".join(chunks).split(b"\0"):
        key, eq, value = entry.partition(b"=")
        if eq and key:
            env.setdefault(key, value)
    return env


def default_sigchld() -> None:
    """SIGCHLD back to its default: an inherited SIG_IGN makes the kernel reap our
    child itself, and its exit status -- the whole point -- would be lost."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)


def spawn(argv: list[str], env: dict[bytes, bytes] | None = None) -> Child:
    """Start argv with a socketpair end on fds 0/1 and a pipe on fd 2.

    Raises TempError (exit 111) when it cannot: EMFILE, ENOENT, EACCES...
    glibc's posix_spawn reports exec failures back to us, so "not found" and
    "not executable" are known here rather than as a mysterious exit 127.
    """
    try:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        # Room for more than one relay chunk on the way to the child: fewer
        # partial sends and buffer copies (figures: docs/performance.md).
        # Linux doubles it; net.core.wmem_max caps it.
        ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, SOCKET_SNDBUF)
    except OSError as err:
        raise TempError(f"unable to create socketpair: {err.strerror}", err.errno) from err
    try:
        err_r, err_w = os.pipe()
    except OSError as err:
        ours.close()
        theirs.close()
        raise TempError(f"unable to create pipe: {err.strerror}", err.errno) from err
    child_fd = theirs.fileno()
    actions = [
        (os.POSIX_SPAWN_DUP2, child_fd, 0),
        (os.POSIX_SPAWN_DUP2, child_fd, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    try:
        pid = os.posix_spawnp(argv[0], argv, original_environ() if env is None else env,
                              file_actions=actions,
                              setsigdef=_RESET_SIGNALS)
    except OSError as err:
        ours.close()
        os.close(err_r)
        raise TempError(f"unable to spawn {argv[0]}: {err.strerror}", err.errno) from err
    finally:
        theirs.close()
        os.close(err_w)
    ours.setblocking(False)
    os.set_blocking(err_r, False)
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None  # old kernel: the relay polls with waitpid instead
    return Child(pid, ours, err_r, pidfd, argv)


def reap(child: Child, block: bool = True) -> ExitStatus | None:
    """wait4 the child; None if it is still running and block is False."""
    while True:
        try:
            pid, wstatus, rusage = os.wait4(child.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return ExitStatus.unknown()  # someone else reaped it: we cannot know how it ended
        if pid == 0:
            return None
        if os.WIFEXITED(wstatus) or os.WIFSIGNALED(wstatus):
            return ExitStatus(wstatus, rusage)


def signal_name(signum: int) -> str:
    """SIGSEGV for 11; computed on demand (the signal module costs an enum import)."""
    for name in dir(_signal):
        if name.startswith("SIG") and not name.startswith("SIG_") and name not in (
            "SIGCLD", "SIGIOT", "SIGPOLL"
        ) and getattr(_signal, name) == signum:
            return name
    return f"SIG{signum}"


def die_like(signum: int) -> None:
    """Kill ourselves with the child's signal, default action, no core.

    So that ``tcpserver -v`` logs the same ``end PID status S`` as it would
    without the wrapper.  Does not return unless the signal does not kill.
    """
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):
        pass
    try:
        _signal.signal(signum, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [signum])
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signum)


def become_subreaper() -> str | None:
    """PR_SET_CHILD_SUBREAPER, for --subreaper only; an error text, None when done.

    Not by default: qmail-scanner detects its parent's death with
    getppid() == 1, which a subreaper hides (we then report it ourselves).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return os.strerror(ctypes.get_errno())
    except (OSError, AttributeError, ImportError) as err:
        return str(err)
    return None


def reap_pid(pid: int, timeout_s: float) -> ExitStatus | None:
    """Wait up to timeout_s for an adopted orphan (the queue program) and reap it."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None
    try:
        if fd is not None:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(timeout_s * 1000)
        got, wstatus, rusage = os.wait4(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return None  # not ours after all (not a subreaper, or already reaped)
    finally:
        if fd is not None:
            os.close(fd)
    if got == 0:
        return None
    return ExitStatus(wstatus, rusage)
