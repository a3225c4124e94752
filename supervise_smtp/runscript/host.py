"""What this host says about a service's settings: accounts, file access, the port.

check-service asks each question the way the program that meets the same
fact answers it, without becoming that program:

- Access: :func:`denied` walks a path with the mode bits a process of that
  uid and those groups meets (owner class, else group, else other; root
  reads and writes anything and runs what has an x bit).  tcpserver's ``-g``
  leaves qmail-smtpd exactly one group (``prot_gid``: setgroups then
  setgid), so the callers pass one.  ACLs are not read.
- The port: :func:`listeners` names the processes listening on it
  (/proc/net/tcp{,6} for the listening sockets' inodes, /proc/PID/fd for
  the processes holding them; only that port's lines are decoded, where
  psutil.net_connections decodes every socket, 0.3 s on a busy test box),
  with their working directory, which is the service dir for the
  service's own tcpserver or serve (every supervisor runs ``./run``
  there).  :func:`bind_error` binds the address as tcpserver does
  (SO_REUSEADDR; dual-stack for ``::``, as serve) and closes the socket
  without listening: nobody can connect to it, and a tcpserver starting
  at that moment still binds (SO_REUSEADDR on both sides).  That settles
  what /proc cannot show: whether an IPv6 wildcard listener is IPv6-only,
  whether the address is one of this host's.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import stat
import sys
from dataclasses import dataclass

__all__ = ["Listener", "user_name", "group_name", "grp_gid", "denied", "listeners",
           "bind_error", "resolve_address"]

_WANT = {"r": (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH),
         "w": (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH),
         "x": (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)}


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _allows(st: os.stat_result, uid: int, gids: list[int], want: str) -> bool:
    if uid == 0:
        if "x" not in want or stat.S_ISDIR(st.st_mode):
            return True
        return bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    cls = 0 if st.st_uid == uid else 1 if st.st_gid in gids else 2
    return all(st.st_mode & _WANT[w][cls] for w in want)


def denied(path: str, uid: int, gids: list[int], want: str) -> str | None:
    """Why a process of ``uid`` and ``gids`` cannot ``want`` ("r", "w", "x", "rx"...)
    ``path``: the first directory it cannot search, or the path itself; None if it can.

    Symbolic links are followed as open() follows them.
    """
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for k in range(1, len(parts)):
        d = os.sep.join(parts[:k]) or os.sep
        try:
            st = os.stat(d)
        except OSError as err:
            return f"{d}: {err.strerror}"
        if not _allows(st, uid, gids, "x"):
            return f"{d} is not searchable by uid {uid}"
    try:
        st = os.stat(real)
    except OSError as err:
        return f"{path}: {err.strerror}"
    if not _allows(st, uid, gids, want):
        verb = {"r": "readable", "w": "writable", "x": "executable"}
        what = " and ".join(verb[w] for w in want)
        return f"{path} is not {what} by uid {uid} (mode {stat.S_IMODE(st.st_mode):04o}, " \
               f"owner {st.st_uid}:{st.st_gid})"
    return None


@dataclass(frozen=True)
class Listener:
    """A process listening on the port."""

    pid: int | None   # None: a socket whose process this user cannot see
    name: str
    address: str
    cwd: str | None


def _listening_inodes(port: int) -> dict[str, str]:
    """{socket inode: local address} of the TCP sockets listening on ``port``, read
    from /proc/net/tcp and tcp6 (state 0A is LISTEN; addresses in kernel hex)."""
    want = f":{port:04X}"
    found = {}
    for name, size in (("tcp", 4), ("tcp6", 16)):
        try:
            with open(f"/proc/net/{name}", encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(want):
                        found[fields[9]] = _address(fields[1].split(":")[0], size)
        except OSError:
            continue
    return found


def _address(hexed: str, size: int) -> str:
    """A /proc/net/tcp{,6} address: 32-bit words in host byte order."""
    raw = bytes.fromhex(hexed)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if sys.byteorder == "big":
        words = raw
    return socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, words)


def listeners(port: int) -> list[Listener]:
    """The TCP listeners on ``port``, any address, IPv4 and IPv6, with their process
    when this user may read its descriptors (/proc/PID/fd)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    owners: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                owners.setdefault(link[8:-1], int(entry))
    found = []
    for inode, address in inodes.items():
        pid = owners.get(inode)
        name, cwd = "?", None
        if pid is not None:
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
                    name = fh.read().strip()
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                pass
        found.append(Listener(pid, name, address, cwd))
    return found


def resolve_address(host: str, port: int) -> tuple[int, tuple[object, ...]] | str:
    """(family, sockaddr) as tcpserver and serve take host, or why it cannot be resolved."""
    from supervise_smtp.serve.tcpenv import listen_address

    return listen_address(host, port)


def bind_error(family: int, sockaddr: tuple[object, ...]) -> int:
    """0 when tcpserver could bind there now, else the errno (never listens)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
    except OSError as err:
        return err.errno or errno.EIO
    finally:
        sock.close()
    return 0


def grp_gid(name: str) -> int:
    """The gid of group ``name``; KeyError when there is none."""
    return grp.getgrnam(name).gr_gid
