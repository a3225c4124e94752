"""``serve --daemon [--pidfile F] [--logfile F]``: detach, for hosts without a supervisor.

With python-daemon (``daemon.DaemonContext``, its pidfile
``daemon.pidfile.TimeoutPIDLockFile`` on the lockfile package): the
command returns once serve is bound, and the server goes on in the
background -- double fork, new session, umask 022, working directory /,
stdin and stdout on /dev/null, fd 2 the log file (created 0600, appended
to; /dev/null without --logfile), the pidfile written by the detached
process and removed when it stops.  The pidfile is lockfile's: created
with O_EXCL (so never through a symlink) and 0644, the one file of ours
others may read, as pidfiles are (a pid is no secret: /proc shows it).

What can fail is checked before detaching, on the caller's terminal and
exit status: the pidfile's directory must be one no other user may write
(safedir.py; -u's user may own it), the log file must open (never
through a symlink), a pidfile naming a live process, or a symlink,
refuses the start (111; a stale one is replaced), the port must bind.  The
pidfile is written before -u/-g switch user; its removal at the end needs
a directory that user may write, else it stays behind (stale, replaced at
the next start).

Never under daemontools, runit, s6 or systemd: they supervise a process
that stays in the foreground, and keep its log themselves.

python-daemon's signal map is left empty: serve's own handlers are set
after the detach, and its workers must find SIGTERM, SIGTSTP, SIGTTIN and
SIGTTOU as the wrapper would (default), not python-daemon's.  Core dumps
are not prevented (the child qmail-smtpd would inherit the limit).
"""

from __future__ import annotations

import os
import socket

from supervise_smtp.errors import TempError

__all__ = ["check_pidfile", "check_pidfile_dir", "open_logfile", "detach"]


def open_logfile(path: str | None) -> int | None:
    """fd of the log file, opened for appending (created 0600, never through a symlink)."""
    if path is None:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
    except OSError as err:
        raise TempError(f"unable to open log file {path}: {err.strerror}", err.errno) from err


def check_pidfile(path: str) -> None:
    """Refuse a pidfile that names a live process; remove a stale one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as err:
        raise TempError(f"unable to read pidfile {path}: {err.strerror}", err.errno) from err
    try:
        text = os.read(fd, 64).strip()
    except OSError as err:
        raise TempError(f"unable to read pidfile {path}: {err.strerror}", err.errno) from err
    finally:
        os.close(fd)
    pid = int(text) if text.isdigit() else 0
    if pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise TempError(f"already running as pid {pid} (pidfile {path})") from None
        else:
            raise TempError(f"already running as pid {pid} (pidfile {path})")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise TempError(f"unable to remove stale pidfile {path}: {err.strerror}",
                        err.errno) from err


def check_pidfile_dir(pidfile: str, owner: int = 0) -> None:
    """Refuse a pidfile directory another user could write (safedir.py); ``owner``:
    -u's uid, trusted too (the server, as that user, removes its pidfile there)."""
    from supervise_smtp.session.safedir import refusal

    directory = os.path.dirname(pidfile) or "."
    try:
        reason = refusal(directory, (owner,) if owner else ())
    except OSError as err:
        raise TempError(f"unable to use pidfile directory {directory}: {err.strerror}",
                        err.errno) from err
    if reason:
        raise TempError(f"refused pidfile directory: {reason}")


def detach(sock: socket.socket, pidfile: str | None, logfile: str | None,
           owner: int = 0) -> object:
    """Become the daemon (returns in it; the caller's process exits 0); the open context.

    ``owner``: the uid -u switches to (0: none), trusted with the pidfile's
    directory.  ``close(context)`` at the end removes the pidfile.
    """
    import daemon
    import daemon.pidfile

    pidfile = os.path.abspath(pidfile) if pidfile else None
    logfile = os.path.abspath(logfile) if logfile else None
    if pidfile:
        check_pidfile_dir(pidfile, owner)
    log_fd = open_logfile(logfile)
    if pidfile:
        check_pidfile(pidfile)
    log = os.fdopen(log_fd, "ab", buffering=0) if log_fd is not None else None
    context = daemon.DaemonContext(
        working_directory="/", umask=0o022, detach_process=True, prevent_core=False,
        files_preserve=[sock.fileno()], signal_map={}, stderr=log,
        pidfile=daemon.pidfile.TimeoutPIDLockFile(pidfile, acquire_timeout=0)
        if pidfile else None)
    context.open()  # the caller's process has exited 0 here; we are the daemon
    if log is not None:
        log.close()  # fd 2 is its copy now
    return context


def close(context: object) -> None:
    """Release the pidfile (remove it); a removal refused to -u's user leaves it stale."""
    try:
        context.close()  # type: ignore[attr-defined]
    except OSError:
        pass
