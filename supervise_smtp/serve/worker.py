"""One forked worker of ``supervise-smtp serve``: tcpserver's child, then the session.

In tcpserver's order (ucspi-tcp 0.88 doit()): IP options killed (-O),
TCP_NODELAY (-D), the -B banner written to the client before any lookup,
the environment (tcpenv: local and remote addresses, DNS names, ident),
then the -x rules with the remote address, name and ident answer.  A
denied connection is logged (``event=deny`` under -v) and the worker exits
100; a rules file that cannot be read drops the connection with 111, and so
does a missing one unless -X.  Otherwise the connection becomes fds 0 and 1
and the session of the per-connection wrapper runs, with the environment
built here.

A worker serves up to ``--worker-sessions`` connections, one at a time,
then exits (``serve_loop``): the parent hands it each accepted connection
over a control socket and hears back, per session, the raw wait status the
per-connection wrapper's process would have ended with (the child's exit
code << 8, the child's signal, 111 << 8 when it could not run, 100 << 8
when the rules deny), which is what the parent logs as tcpserver's
``end PID status S``.  Between sessions the worker is back as it was
forked: the wrapper's signal dispositions, fds 0 and 1 on /dev/null, no
child left (an orphan the session's subreaper adopted is reaped).  A fresh
fork per connection pays the fork and exit plus copy-on-write faults on
every page the session touches (figures: docs/serve.md); a reused worker
pays them once.  A worker that crashes mid-session costs that one connection only:
the parent logs its real wait status instead.
"""

from __future__ import annotations

import errno
import os
import signal
import socket

from supervise_smtp.errors import EXIT_TEMP, EXIT_USAGE, TempError, say
from supervise_smtp.serve.tcpenv import Peer, peer_of, tcp_variables

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from supervise_smtp.serve.config import ServeConfig
    from supervise_smtp.serve.log import ParentLog

__all__ = ["serve_loop", "run_worker", "Dropped", "say", "encode_addr", "DONE"]

DONE = b"D"  # a worker's message: b"D <status>" at the end of each session


class Dropped(Exception):
    """tcpserver's "warning: dropping connection": exit 111 before the session."""

    def __init__(self, where: str, err: OSError | None = None, **fields: object) -> None:
        super().__init__(where)
        self.fields: dict[str, object] = {"where": where, **fields}
        if err is not None:
            self.fields.update(error=err.strerror or str(err), errno=err.errno)


def encode_addr(addr: tuple[object, ...]) -> bytes:
    """The client's address as accept() gave it, for the control socket."""
    return " ".join(str(part) for part in addr).encode()


def _decode_addr(data: bytes) -> tuple[object, ...]:
    host, port, *rest = data.decode().split(" ")
    return (host, int(port), *(int(x) for x in rest))


def serve_loop(cfg: ServeConfig, log: ParentLog, base_env: dict[bytes, bytes],
               ctl: socket.socket, sessions: int) -> int:
    """Serve the connections the parent sends, at most ``sessions``; the exit code.

    The parent ends an idle worker by closing its end of ``ctl`` (EOF here).
    A session that raised (a bug of ours) is reported as 111 and ends the
    worker: what it left behind is not carried into another connection.
    """
    dispositions = {sig: signal.getsignal(sig) for sig in _SESSION_SIGNALS}
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    served = 0
    while served < sessions:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 512, 1)
        except OSError:
            return 0
        if not msg:
            return 0  # the parent retired us, or is gone
        if not fds:
            # The descriptor did not arrive (no room for it here: the kernel
            # drops it, and the client sees its connection closed).  The
            # parent counts this worker busy until it hears: say "dropped",
            # and end, so that the next connection gets a fresh worker.
            log.error("drop", pid=os.getpid(), where="hand", error="no descriptor received")
            try:
                ctl.send(DONE + b" %d\n" % (EXIT_TEMP << 8), socket.MSG_NOSIGNAL)
            except OSError:
                pass
            return EXIT_TEMP
        failed = False
        summary: dict[str, object] = {}
        try:
            status = run_worker(cfg, log, base_env, fds[0], _decode_addr(msg[2:]), summary)
        except Exception as exc:
            say(f"supervise-smtp serve: fatal: worker failed: {exc!r}"[:1000] + "\n")
            status, failed = EXIT_TEMP << 8, True
        for sig, handler in dispositions.items():
            if handler is not None:
                signal.signal(sig, handler)
        os.dup2(null, 0)  # the client's connection is closed here, before the parent hears
        os.dup2(null, 1)
        _reap_orphans()
        served += 1
        try:
            ctl.send(DONE + b" %d\n" % status + _record(cfg, summary), socket.MSG_NOSIGNAL)
        except OSError:
            return 0
        if failed:
            return EXIT_TEMP
    return 0


def _record(cfg: ServeConfig, summary: dict[str, object]) -> bytes:
    """The summary's counters for the parent's metrics (logs/tally.py); none if off."""
    if not summary or not (cfg.metrics_listen or cfg.metrics_textfile):
        return b""
    from supervise_smtp.logs.tally import record

    try:
        return record(summary)
    except Exception:  # fail open: a metrics problem never costs the connection's end
        return b""


# What a session changes and the next one must find as the worker started.
_SESSION_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM,
                    signal.SIGCHLD)


def _reap_orphans() -> None:
    """Children the session left (adopted under --subreaper): none may stay a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_worker(cfg: ServeConfig, log: ParentLog, base_env: dict[bytes, bytes], fd: int,
               addr: tuple[object, ...], summary: dict[str, object] | None = None) -> int:
    """One connection, start to end: the raw wait status tcpserver would see."""
    remote = peer_of(addr)
    conn = socket.socket(fileno=fd)
    try:
        env, denied = _prepare(cfg, conn, remote, base_env)
    except Dropped as drop:
        conn.close()
        log.error("drop", remote=remote.ip, pid=os.getpid(), **drop.fields)
        return EXIT_TEMP << 8
    if denied is not None:
        conn.close()
        log.status("deny", remote=remote.ip, pid=os.getpid(), **denied)
        return EXIT_USAGE << 8
    os.dup2(conn.fileno(), 0)
    os.dup2(conn.fileno(), 1)
    conn.close()
    # The parent's own non-blocking description of the log pipe is the
    # session's too: its lines then need no writer thread (close-on-exec:
    # the child never sees it).
    return _session(cfg, env, log.own_fd, summary)


def _prepare(cfg: ServeConfig, conn: socket.socket, remote: Peer,
             base_env: dict[bytes, bytes]) -> tuple[dict[bytes, bytes], dict[str, object] | None]:
    """Socket options, banner, environment, rules: (the child's env, deny fields or None)."""
    if cfg.kill_ip_options and conn.family == socket.AF_INET:
        try:
            conn.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
        except OSError:
            pass  # tcpserver ignores this failure too
    if cfg.nodelay:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    if cfg.banner:
        try:
            conn.sendall(cfg.banner)
        except OSError as err:
            raise Dropped("banner", err) from err
    try:
        local = peer_of(conn.getsockname())
    except OSError as err:
        raise Dropped("local_address", err) from err
    variables, remote_host, info = tcp_variables(cfg, local, remote)
    env = dict(base_env)
    _apply(env, variables)
    denied: dict[str, object] | None = None
    if cfg.rules is not None:
        rule = _rule(cfg, remote.ip, info, remote_host)
        if rule is not None:
            _apply(env, rule.env)
            if not rule.allow:
                denied = {"remote_port": remote.port, "remote_host": remote_host,
                          "remote_info": info, "local": local.ip, "local_port": local.port}
    return env, denied


def _apply(env: dict[bytes, bytes], variables: Iterable[tuple[str, str | None]]) -> None:
    """Set (or, for None, unset) each (name, value), in order, as pathexec_env does.

    A rule may set a variable with an empty name (``,="x"``), which tcpserver
    passes on as ``=x``; no exec can pass that (posix_spawn refuses it): skipped.
    """
    for name, value in variables:
        key = os.fsencode(name)
        if not key:
            continue
        if value is None:
            env.pop(key, None)
        else:
            env[key] = os.fsencode(value)


def _rule(cfg: ServeConfig, ip: str, info: str | None, host: str | None) -> Any:
    """The -x rule for this client; a missing file is no rule under -X, else dropped."""
    from supervise_smtp.serve.rules import RulesError, lookup

    assert cfg.rules is not None
    try:
        return lookup(cfg.rules, ip, info, host)
    except RulesError as err:
        code = getattr(err, "errno", None)
        if code is None and err.args and isinstance(err.args[0], int):
            code = err.args[0]
        if code == errno.ENOENT and cfg.allow_no_rules:
            return None
        raise Dropped("rules", None, file=cfg.rules, errno=code,
                      error=os.strerror(code) if isinstance(code, int) else str(err)) from err


def _session(cfg: ServeConfig, env: dict[bytes, bytes], log_fd: int | None = None,
             summary: dict[str, object] | None = None) -> int:
    """The per-connection wrapper's session; its process's wait status (cli.main's rules)."""
    from supervise_smtp.session import run as session

    try:
        status = session.run(cfg.options, cfg.prog, env, log_fd, summary)
    except TempError as err:
        say(f"supervise-smtp: fatal: {err}\n")
        if summary is not None:  # its summary line said so: counted the same
            summary.update(verdict="wrapper_error", stage="connect", exit=EXIT_TEMP)
        return EXIT_TEMP << 8
    return status.passed_on()
