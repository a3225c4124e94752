"""--alert-exec: run a program, detached and rate-limited, after an abnormal verdict.

``maybe_alert()`` is called once per connection, after the summary, and
returns within a few milliseconds whatever the alert program does: it never
waits for the program.

Matching: the verdict is in the ``--alert-on`` set (default ``DEFAULT_ON``),
or a qmail-scanner parent death was seen and ``parent_died`` is in the set,
whatever the verdict.  ``client_lost_after_*`` stands for every
``client_lost_after_<stage>`` verdict.

Rate limit (``--alert-rate N/PERIOD``, needs ``--state-dir``): a sliding
window of the last N send times plus the count of alerts suppressed since the
last one sent, in ``DIR/alert.state`` (the dir is created 0700, the file
0600 and never through a symlink; a directory another user could write is
refused, safedir.py, and the alert is then an error, not sent), read and
written under ``fcntl.flock`` so that the many wrapper processes of one
tcpserver share it.  Wall-clock times: a send time in the
future (the clock was set back) is dropped rather than trusted, so that a
clock step can cost at most an extra alert, never silence alerts.  A send is
recorded only once the program was started; a program that cannot be started
neither spends the budget nor resets the suppressed count.

How the program runs (the one place where this project detaches a process;
the connection's own child is never daemonized):

- ``argv = [PROG]`` (argv[0] as given): PROG is a path (or a name looked up in ``$PATH``), never
  a shell command line and never split into arguments; use a small script to
  add arguments.
- wrapper -> A (``setsid()``, forks B, exits at once; the wrapper reaps A
  immediately, so no zombie and no wait) -> B, the watcher, forks C = PROG in
  its own process group, waits for it at most ``ALERT_TIMEOUT_S`` seconds
  (``SUPERVISE_SMTP_ALERT_TIMEOUT`` in the wrapper's environment overrides
  it), SIGKILLs C's process group when it overruns, reaps C and exits.  B is
  reparented to init (or the nearest subreaper), which reaps it.
- C: stdin and stdout are /dev/null; fd 2 is kept, so that the program's own
  errors reach the log; every other fd is closed (the client socket and the
  state file lock are never held by an alert); signal dispositions and mask
  are reset to the defaults.
- Environment: the connection's (the one its child got: the wrapper's
  own, or the one serve made with the rule's variables), minus any inherited ``SUPERVISE_SMTP_*``
  (except ``SUPERVISE_SMTP_ALERT_TIMEOUT``), plus ``SUPERVISE_SMTP_<KEY>`` for
  each summary field rendered as in the log (escaped printable ASCII, ints in
  decimal, ``true``/``false``, sequences comma-joined, None left out, capped
  at ``output.MAX_VALUE_CHARS``), plus ``SUPERVISE_SMTP_VERDICT`` and
  ``SUPERVISE_SMTP_SUPPRESSED`` (alerts suppressed since the previous one).

Results, logged by the session as ``event=alert``: None (no alert called
for), ``{"action": "suppressed", "suppressed": n}``, ``{"action": "sent",
"alert_pid": pid of C, "suppressed_before": n}`` or ``{"action": "error",
"error": text}``; this module never raises out of ``maybe_alert``.

No ``subprocess`` (a costly import per connection): os.fork/execve.
"""

from __future__ import annotations

import os

from supervise_smtp.errors import UsageError
from supervise_smtp.session.diagnose import STAGES, VERDICTS, client_lost

TYPE_CHECKING = False  # typing costs start-up; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_ON",
    "ALERT_TIMEOUT_S",
    "MAX_RATE_COUNT",
    "STATE_FILE",
    "parse_verdicts",
    "parse_rate",
    "maybe_alert",
]

DEFAULT_ON = frozenset({"server_crashed", "queue_temp_fail", "queue_perm_fail",
                        "wrapper_error", "parent_died"})
ALERT_TIMEOUT_S = 30.0
MAX_RATE_COUNT = 10000  # the window keeps N send times in the state file
STATE_FILE = "alert.state"
_TIMEOUT_ENV = "SUPERVISE_SMTP_ALERT_TIMEOUT"
_PREFIX = "SUPERVISE_SMTP_"
_WILDCARD = "client_lost_after_*"
_CLIENT_LOST = frozenset(client_lost(s) for s in STAGES)
_NAMES = frozenset(VERDICTS) | {"parent_died"}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SPAWN_WAIT_MS = 2000  # safety bound on reading the watcher's report (normally < 5 ms)
_POLL_S = 0.05


def parse_verdicts(text: str) -> frozenset[str]:
    """The verdict set of ``--alert-on``; raises UsageError naming a bad entry."""
    names: set[str] = set()
    for entry in text.split(","):
        name = entry.strip()
        if name == _WILDCARD:
            names |= _CLIENT_LOST
        elif name in _NAMES:
            names.add(name)
        else:
            raise UsageError(f"bad verdict in --alert-on: {name!r}")
    return frozenset(names)


def parse_rate(text: str) -> tuple[int, float]:
    """``N/PERIOD`` (PERIOD in seconds, optional unit s, m, h or d) -> (N, seconds)."""
    count, slash, period = text.partition("/")
    unit = _UNITS.get(period[-1:], 0.0)
    number = period[:-1] if unit else period
    try:
        if not (slash and count.isdigit() and number and number.replace(".", "", 1).isdigit()):
            raise ValueError
        n, seconds = int(count), float(number) * (unit or 1.0)
        if not (1 <= n <= MAX_RATE_COUNT and seconds > 0):
            raise ValueError
    except ValueError:
        raise UsageError(f"bad value for --alert-rate: {text!r} (N/PERIOD, e.g. 10/1h, "
                         f"1 <= N <= {MAX_RATE_COUNT})") from None
    return n, seconds


def _wanted(on: frozenset[str], verdict: str, parent_died: bool) -> bool:
    if verdict in on or (parent_died and "parent_died" in on):
        return True
    return verdict in _CLIENT_LOST and _WILDCARD in on


def maybe_alert(prog: str, on: frozenset[str] | None, rate: tuple[int, float] | None,
                state_dir: str | None, verdict: str, fields: dict[str, object],
                parent_died: bool, env: dict[bytes, bytes] | None = None,
                ) -> dict[str, object] | None:
    """Run ``prog`` detached if this connection calls for an alert; see the module doc.

    ``env``: the connection's environment, the one its child got (serve's
    workers pass the one they made, with the rule's variables); None: ours.
    """
    base = os.environb if env is None else env
    try:
        if not _wanted(DEFAULT_ON if on is None else on, verdict, parent_died):
            return None
        if rate is None:
            return _send(prog, verdict, fields, 0, base)
        if not state_dir:
            return {"action": "error", "error": "--alert-rate needs --state-dir"}
        return _limited(prog, rate, state_dir, verdict, fields, base)
    except Exception as exc:  # never raise into the session
        return {"action": "error", "error": _err_text(exc)}


def _err_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"[:200]
    return repr(exc)[:200]


# -- rate-limit state -------------------------------------------------------

def _read_state(fd: int) -> tuple[int, list[float]]:
    """(suppressed, send times) from the state file; anything unreadable is a fresh state."""
    data = b""
    while True:
        chunk = os.pread(fd, 65536, len(data))
        if not chunk:
            break
        data += chunk
    try:
        head, _, times = data.decode("ascii").strip().partition("\n")
        tag, suppressed = head.split(" ")
        if tag != "v1":
            raise ValueError
        return max(0, int(suppressed)), [float(t) for t in times.split()]
    except ValueError:
        return 0, []


def _write_state(fd: int, suppressed: int, times: list[float]) -> None:
    data = f"v1 {suppressed}\n{' '.join(f'{t:.3f}' for t in times)}\n".encode("ascii")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _limited(prog: str, rate: tuple[int, float], state_dir: str, verdict: str,
             fields: dict[str, object], base: Mapping[bytes, bytes]) -> dict[str, object]:
    import fcntl
    import time

    count, period = rate
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    from supervise_smtp.session.safedir import refusal

    reason = refusal(state_dir)
    if reason:  # another user could rewrite the state: no alert rather than a forged budget
        return {"action": "error", "error": f"refused --state-dir: {reason}"[:200]}
    fd = os.open(os.path.join(state_dir, STATE_FILE),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close below
        suppressed, times = _read_state(fd)
        now = time.time()
        times = [t for t in times if now - period < t <= now]
        if len(times) >= count:
            _write_state(fd, suppressed + 1, times[-count:])
            return {"action": "suppressed", "suppressed": suppressed + 1}
        # Spawn under the lock (a few ms): the send is recorded only if it started.
        result = _send(prog, verdict, fields, suppressed, base)
        if result["action"] == "sent":
            _write_state(fd, 0, [*times, now][-count:])
        return result
    finally:
        os.close(fd)


# -- the detached program ---------------------------------------------------

def _env_key(key: str) -> str:
    return _PREFIX + "".join(c if c.isascii() and c.isalnum() else "_" for c in key).upper()


def _alert_env(verdict: str, fields: dict[str, object], suppressed: int,
               base: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The alert program's environment (bytes), as described in the module doc.

    Each value as the log line shows it (output.render): escaped, capped.
    """
    from supervise_smtp.session.output import escape, render

    env = {k: v for k, v in base.items()
           if not k.startswith(_PREFIX.encode()) or k == _TIMEOUT_ENV.encode()}
    for key, value in fields.items():
        text = render(value)
        if text is not None:
            env[_env_key(key).encode("ascii")] = text.encode("ascii")
    env[b"SUPERVISE_SMTP_VERDICT"] = escape(verdict).encode("ascii")
    env[b"SUPERVISE_SMTP_SUPPRESSED"] = str(suppressed).encode("ascii")
    return env


def _timeout_s(base: Mapping[bytes, bytes]) -> float:
    try:
        value = float(base.get(_TIMEOUT_ENV.encode(), b""))
    except ValueError:
        return ALERT_TIMEOUT_S
    return value if 0 < value <= 86400 else ALERT_TIMEOUT_S


def _resolve(prog: str, base: Mapping[bytes, bytes]) -> str:
    """PROG as a path: as given when it has a slash, else looked up in $PATH."""
    if "/" in prog:
        return prog
    path_var = base.get(b"PATH", os.defpath.encode()).decode("utf-8", "surrogateescape")
    for directory in path_var.split(os.pathsep):
        path = os.path.join(directory or ".", prog)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return prog  # execve fails with ENOENT, reported as an error


def _close_from_3_except(keep: int) -> None:
    os.closerange(3, keep)
    os.closerange(max(3, keep + 1), 1 << 20)  # close_range(2) on Linux: cheap whatever the limit


def _send(prog: str, verdict: str, fields: dict[str, object],
          suppressed: int, base: Mapping[bytes, bytes]) -> dict[str, object]:
    """Start prog detached; ``sent`` with its pid, or ``error``."""
    path = _resolve(prog, base)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        import errno

        code = errno.EISDIR if os.path.isdir(path) else (
            errno.EACCES if os.path.exists(path) else errno.ENOENT)
        return {"action": "error", "error": f"unable to run {prog}: {os.strerror(code)}"}
    env = _alert_env(verdict, fields, suppressed, base)
    timeout = _timeout_s(base)
    rfd, wfd = os.pipe()
    try:
        pid_a = os.fork()
    except OSError as err:
        os.close(rfd)
        os.close(wfd)
        return {"action": "error", "error": f"unable to fork: {err.strerror}"}
    if pid_a == 0:  # A: never returns
        _first_child(rfd, wfd, path, prog, env, timeout)
    os.close(wfd)
    try:
        report = _read_report(rfd)
    finally:
        os.close(rfd)
        try:
            os.waitpid(pid_a, 0)  # A exits right after forking B
        except ChildProcessError:
            pass
    if report.startswith(b"P"):
        return {"action": "sent", "alert_pid": int(report[1:]), "suppressed_before": suppressed}
    if report.startswith(b"E"):
        kind, _, num = report[1:].partition(b" ")
        what = "exec" if kind == b"x" else "fork"
        return {"action": "error",
                "error": f"unable to {what} {prog}: {os.strerror(int(num or b'0'))}"}
    return {"action": "error", "error": f"unable to run {prog}: no report from the watcher"}


def _read_report(fd: int) -> bytes:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while len(data) < 64 and poller.poll(_SPAWN_WAIT_MS):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data


def _first_child(rfd: int, wfd: int, path: str, argv0: str, env: dict[bytes, bytes],
                 timeout: float) -> None:
    """A: new session, fds 0/1 to /dev/null, fork the watcher B, exit."""
    code = 0
    try:
        os.close(rfd)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        _close_from_3_except(wfd)  # the client socket, the state lock, the child's pipes
        try:
            pid_b = os.fork()
        except OSError as err:
            os.write(wfd, b"Ef %d" % (err.errno or 0))
            os._exit(1)
        if pid_b == 0:
            _watcher(wfd, path, argv0, env, timeout)
    except BaseException:
        code = 1
    os._exit(code)


def _watcher(wfd: int, path: str, argv0: str, env: dict[bytes, bytes], timeout: float) -> None:
    """B: fork C (the program), report its pid, wait at most ``timeout``, kill on overrun."""
    import signal
    import time

    code = 0
    try:
        deadline = time.monotonic() + timeout
        er, ew = os.pipe()  # exec error channel, closed by a successful execve (CLOEXEC)
        try:
            pid_c = os.fork()
        except OSError as err:
            os.write(wfd, b"Ef %d" % (err.errno or 0))
            os._exit(1)
        if pid_c == 0:
            _exec_prog(er, ew, wfd, path, argv0, env)
        os.close(ew)
        try:
            os.setpgid(pid_c, pid_c)  # also done in C: no race with killpg below
        except OSError:
            pass
        failed = b""
        while chunk := os.read(er, 16):
            failed += chunk
        os.close(er)
        os.write(wfd, b"Ex " + failed if failed else b"P%d" % pid_c)
        os.close(wfd)
        while True:
            done, _ = os.waitpid(pid_c, os.WNOHANG)
            if done:
                break
            if time.monotonic() >= deadline:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid_c, signal.SIGKILL)
                    except OSError:
                        pass
                os.waitpid(pid_c, 0)
                break
            time.sleep(_POLL_S)
    except BaseException:
        code = 1
    os._exit(code)


def _exec_prog(er: int, ew: int, wfd: int, path: str, argv0: str,
               env: dict[bytes, bytes]) -> None:
    """C: own process group, default signals, only fds 0-2, then execve."""
    import signal

    errno_ = 0
    try:
        os.close(er)
        os.close(wfd)
        os.setpgid(0, 0)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT,
                    signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        _close_from_3_except(ew)
        os.execve(path, [argv0], env)
    except OSError as err:
        errno_ = err.errno or 0
    except BaseException:
        errno_ = 0
    try:
        os.write(ew, b"%d" % errno_)
    finally:
        os._exit(127)
