"""One forked worker of ``supervise-smtp serve``: tcpserver's child, then the session.

In tcpserver's order (ucspi-tcp 0.88 doit()): IP options killed (-O),
TCP_NODELAY (-D), the -B banner written to the client before any lookup,
the environment (tcpenv: local and remote addresses, DNS names, ident),
then the -x rules with the remote address, name and ident answer.  A
denied connection is logged (``event=deny`` under -v) and the worker exits
100; a rules file that cannot be read drops the connection with 111, and so
does a missing one unless -X.  Otherwise the connection becomes fds 0 and 1
and the session of the per-connection wrapper runs, with the environment
built here; the worker then ends exactly as the wrapper's process would.
"""

from __future__ import annotations

import errno
import os
import socket

from supervise_smtp.errors import EXIT_TEMP, EXIT_USAGE, TempError
from supervise_smtp.tcpenv import Peer, peer_of, tcp_variables

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from supervise_smtp.serve_log import ParentLog
    from supervise_smtp.serve_opts import ServeConfig

__all__ = ["run_worker", "Dropped", "say"]


class Dropped(Exception):
    """tcpserver's "warning: dropping connection": exit 111 before the session."""

    def __init__(self, where: str, err: OSError | None = None, **fields: object) -> None:
        super().__init__(where)
        self.fields: dict[str, object] = {"where": where, **fields}
        if err is not None:
            self.fields.update(error=err.strerror or str(err), errno=err.errno)


def run_worker(cfg: ServeConfig, log: ParentLog, base_env: dict[bytes, bytes], fd: int,
               addr: tuple[object, ...]) -> int:
    """The worker's exit code (or its death by the child's signal)."""
    remote = peer_of(addr)
    conn = socket.socket(fileno=fd)
    try:
        env, denied = _prepare(cfg, conn, remote, base_env)
    except Dropped as drop:
        log.error("drop", remote=remote.ip, pid=os.getpid(), **drop.fields)
        return EXIT_TEMP
    if denied is not None:
        log.status("deny", remote=remote.ip, pid=os.getpid(), **denied)
        return EXIT_USAGE
    # The parent's own non-blocking description of the log pipe becomes the
    # session's: its lines then need no writer thread (close-on-exec: the
    # child never sees it).
    log_fd, log.own_fd = log.own_fd, None
    log.close()
    os.dup2(conn.fileno(), 0)
    os.dup2(conn.fileno(), 1)
    conn.close()
    return _session(cfg, env, log_fd)


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
    from supervise_smtp.rules import RulesError, lookup

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


def _session(cfg: ServeConfig, env: dict[bytes, bytes], log_fd: int | None = None) -> int:
    """The per-connection wrapper's session, then its exit (cli.main's rules)."""
    from supervise_smtp import session

    for key in (b"PROTO", b"TCPLOCALIP", b"TCPLOCALPORT", b"TCPLOCALHOST", b"TCPREMOTEIP",
                b"TCPREMOTEPORT", b"TCPREMOTEHOST", b"TCPREMOTEINFO"):
        if key in env:  # what reads os.environ (the alert hook) sees this connection
            os.environb[key] = env[key]
        else:
            os.environb.pop(key, None)
    try:
        status = session.run(cfg.options, cfg.prog, env, log_fd)
    except TempError as err:
        say(f"supervise-smtp: fatal: {err}\n")
        return EXIT_TEMP
    if status.lost:
        return EXIT_TEMP
    if status.signal is not None:
        from supervise_smtp.process import die_like

        die_like(status.signal)
        return 128 + status.signal
    return status.code or 0


def say(text: str) -> None:
    """cli's fatal message: on fd 2 only if the log pipe takes it within a second."""
    import select

    try:
        poller = select.poll()
        poller.register(2, select.POLLOUT)
        if poller.poll(1000):
            os.write(2, text.encode("utf-8", "surrogateescape"))
    except OSError:
        pass
