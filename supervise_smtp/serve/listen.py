"""Where serve listens and whom it becomes: its fds, address, socket and user.

As tcpserver does it, in its order: fds 0/1/2 taken first, the address
resolved, the socket bound (SO_REUSEADDR, dual-stack for ::), then -g and
-u, then fds 0 and 1 on /dev/null once listening.
"""

from __future__ import annotations

import os
import socket

from supervise_smtp.errors import TempError, UsageError
from supervise_smtp.serve.tcpenv import listen_address

__all__ = ["address_of", "listen_on", "null_stdio", "port_number", "standard_fds",
           "switch_user"]


def standard_fds() -> None:
    """fds 0, 1, 2 open (on /dev/null if closed) before we make any descriptor."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def null_stdio() -> None:
    """tcpserver closes fds 0 and 1 once listening; /dev/null keeps them taken."""
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def port_number(name: str) -> int:
    if name.isdigit() and name.isascii():
        if int(name) > 65535:
            raise UsageError(f"bad port {name}")
        return int(name)
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        raise TempError(f"unable to figure out port number for {name}") from None


def address_of(host: str, port_name: str) -> tuple[int, tuple[object, ...]]:
    """host and port as tcpserver takes them (tcpenv.listen_address); TempError if none."""
    where = listen_address(host, port_number(port_name))
    if isinstance(where, str):
        raise TempError(where)
    return where


def listen_on(family: int, address: tuple[object, ...], backlog: int) -> socket.socket:
    """The listening socket: SO_REUSEADDR as tcpserver, dual-stack for ::, close-on-exec."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise TempError(f"unable to create socket: {err.strerror}", err.errno) from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as err:
        sock.close()
        raise TempError(f"unable to bind: {err.strerror}", err.errno) from err
    sock.setblocking(False)
    return sock


def switch_user(gid: int, uid: int) -> None:
    """-g then -u, as tcpserver's prot_gid/prot_uid: groups become just gid; 0 = no switch."""
    try:
        if gid:
            os.setgroups([gid])
            os.setgid(gid)
    except OSError as err:
        raise TempError(f"unable to set gid: {err.strerror}", err.errno) from err
    try:
        if uid:
            os.setuid(uid)
    except OSError as err:
        raise TempError(f"unable to set uid: {err.strerror}", err.errno) from err
