"""One connection's environment, exactly as tcpserver sets it (ucspi-tcp 0.88 doit()).

In tcpserver's order: PROTO=TCP, TCPLOCALIP, TCPLOCALPORT, TCPLOCALHOST
(-l name as given, ``-l 0`` is the name "0"; else the DNS name of the local
address, unset when there is none), TCPREMOTEIP, TCPREMOTEPORT,
TCPREMOTEHOST (-h, the default: the DNS name of the remote address; -p: only
when that name maps back to the address; -H: unset), TCPREMOTEINFO (-r, the
default: the RFC 1413 answer of the client's identd within -t seconds, unset
when it fails; -R: unset).  The rules of -x come after (rules.py), so they
can override any of these.  A variable "unset" is removed from what the
server itself was started with.

IPv6, with ucspi-tcp6's conventions: an IPv6 client gets PROTO=TCP6, its
addresses in RFC 5952 form (``::1``) in TCPLOCALIP/TCPREMOTEIP, the TCP6*
copies (TCP6LOCALIP, TCP6LOCALPORT, TCP6LOCALHOST, TCP6REMOTEIP,
TCP6REMOTEPORT, TCP6REMOTEHOST) and TCP6INTERFACE for a scoped (link-local)
address; an IPv4 client of a ``::`` socket (an IPv4-mapped address) is plain
IPv4 with PROTO=TCP, as if the socket were IPv4.

All of it runs in the forked worker (DNS and ident can take seconds).
"""

from __future__ import annotations

import os
import socket
import time

from supervise_smtp.serve import dns as tcpdns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from supervise_smtp.serve.config import ServeConfig

__all__ = ["Peer", "peer_of", "tcp_variables", "ident", "listen_address", "MAX_INFO_BYTES"]

MAX_INFO_BYTES = 256  # remoteinfo.c stops once the answer is longer than this


class Peer:
    """One end of the connection: address text, port, and what DNS needs."""

    __slots__ = ("ip", "port", "v6", "scope_id")

    def __init__(self, ip: str, port: int, v6: bool, scope_id: int = 0) -> None:
        self.ip = ip
        self.port = port
        self.v6 = v6
        self.scope_id = scope_id

    def packed(self) -> bytes:
        return socket.inet_pton(socket.AF_INET6 if self.v6 else socket.AF_INET, self.ip)


def listen_address(host: str, port: int) -> tuple[int, tuple[object, ...]] | str:
    """(family, sockaddr) to bind, as tcpserver takes host; or why there is none.

    0 or "" is 0.0.0.0; names go through getaddrinfo (/etc/hosts, then DNS),
    IPv4 first, as tcpserver takes the first IPv4 address; an IPv6 address
    or a name with only IPv6 addresses gives an IPv6 socket.  (serve binds
    with it; check-service asks whether the port is free with it.)
    """
    if host in ("", "0"):
        host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICSERV)
    except socket.gaierror as err:
        return f"no IP address for {host}: {err.strerror}"
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return family, sockaddr
    return f"no IP address for {host}"


def peer_of(sockaddr: tuple[object, ...]) -> Peer:
    """A socket address as tcpserver shows it: IPv4-mapped IPv6 becomes plain IPv4."""
    host, port = str(sockaddr[0]), int(str(sockaddr[1]))
    if ":" not in host:
        return Peer(host, port, False)
    host = host.split("%", 1)[0]
    packed = socket.inet_pton(socket.AF_INET6, host)
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return Peer(socket.inet_ntop(socket.AF_INET, packed[12:]), port, False)
    scope = int(str(sockaddr[3])) if len(sockaddr) > 3 else 0
    return Peer(_rfc5952(packed), port, True, scope)


def _rfc5952(packed: bytes) -> str:
    """Compressed IPv6 text, never with a dotted quad (inet_ntop writes ::0.0.0.2)."""
    import ipaddress

    return ipaddress.IPv6Address(packed).compressed


def tcp_variables(cfg: ServeConfig, local: Peer,
                  remote: Peer) -> tuple[list[tuple[str, str | None]], str | None, str | None]:
    """(variables in tcpserver's order, None = unset; remote host; remote info)."""
    local_host = cfg.local_name if cfg.local_name is not None else tcpdns.name_of(local.ip)
    remote_host = _remote_host(cfg, remote) if cfg.remote_host else None
    info = None
    if cfg.remote_info:
        info = ident(local, remote, cfg.timeout_s)
    proto = "TCP6" if remote.v6 else "TCP"
    variables: list[tuple[str, str | None]] = [
        ("PROTO", proto),
        ("TCPLOCALIP", local.ip), ("TCPLOCALPORT", str(local.port)),
        ("TCPLOCALHOST", local_host),
        ("TCPREMOTEIP", remote.ip), ("TCPREMOTEPORT", str(remote.port)),
        ("TCPREMOTEHOST", remote_host),
        ("TCPREMOTEINFO", info),
    ]
    if remote.v6:
        variables += [(f"TCP6{name[3:]}", value) for name, value in variables[1:7]]
        if local.scope_id:
            try:
                variables.append(("TCP6INTERFACE", socket.if_indextoname(local.scope_id)))
            except OSError:
                pass
    return variables, remote_host, info


def _remote_host(cfg: ServeConfig, remote: Peer) -> str | None:
    """The remote DNS name; with -p only when one of its addresses is the remote's."""
    name = tcpdns.name_of(remote.ip)
    if name is None or not cfg.paranoid:
        return name
    if remote.packed() in tcpdns.addresses_of(name, remote.v6):
        return name
    return None


def ident(local: Peer, remote: Peer, timeout_s: float) -> str | None:
    """TCPREMOTEINFO as ucspi-tcp's remoteinfo.c reads it; None when the query fails.

    From the local address, to port 113 of the client: ``rport , lport``;
    the answer up to its LF, blanks (space, tab, CR) dropped everywhere,
    everything after the third colon kept (so ``ERROR : NO-USER`` gives the
    empty string), at most 257 bytes.  One deadline of ``timeout_s`` for the
    connect, the question and the answer.
    """
    deadline = time.monotonic() + timeout_s
    family = socket.AF_INET6 if remote.v6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((local.ip, 0) if not remote.v6 else (local.ip, 0, 0, local.scope_id))
            sock.settimeout(max(timeout_s, 0.001))
            sock.connect((remote.ip, 113) if not remote.v6
                         else (remote.ip, 113, 0, remote.scope_id))
            _send_by(sock, f"{remote.port} , {local.port}\r\n".encode(), deadline)
            return _read_info(sock, deadline)
    except OSError:
        return None


def _send_by(sock: socket.socket, data: bytes, deadline: float) -> None:
    while data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("ident: no time left")
        sock.settimeout(left)
        data = data[sock.send(data):]


def _read_info(sock: socket.socket, deadline: float) -> str | None:
    out = bytearray()
    colons = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        data = sock.recv(128)
        if not data:
            return None
        for ch in data:
            if ch in b" \t\r":
                continue
            if ch == 10:
                return os.fsdecode(bytes(out))
            if colons < 3:
                colons += ch == 58
                continue
            out.append(ch)
            if len(out) > MAX_INFO_BYTES:
                return os.fsdecode(bytes(out))
