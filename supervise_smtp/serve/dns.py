"""DNS the way tcpserver does it: djbdns's stub resolver, not the C library's.

tcpserver's TCPLOCALHOST, TCPREMOTEHOST and its -p check come from djbdns's
client library (dns_name4, dns_ip4): one query to the servers in
$DNSCACHEIP, else the ``nameserver`` lines of /etc/resolv.conf (IPv4 only,
0.0.0.0 meaning 127.0.0.1), else 127.0.0.1; /etc/hosts and nsswitch.conf are
never read.  ``socket.gethostbyaddr`` would answer ``localhost`` for
127.0.0.1 from /etc/hosts where tcpserver leaves TCPREMOTEHOST unset, so the
same packets are sent here instead: recursion desired, each server tried in
turn with timeouts of 1, 3, 11 and 45 seconds, an unrelated or failed
(SERVFAIL, REFUSED...) answer skipped, a truncated one asked again over TCP;
the first PTR of the answer is the name, lowercased, with bytes outside
``a-z0-9-_`` written ``\\ooo`` (djbdns's dns_domain_todot_cat).

Only the forked worker calls this, never the accepting parent: a slow or
dead resolver costs that one connection its lookup time, as under tcpserver.
IPv6 (ucspi-tcp6's conventions): PTR under ip6.arpa, AAAA for -p.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["name_of", "addresses_of", "servers", "TIMEOUTS_S"]

TIMEOUTS_S = (1, 3, 11, 45)  # djbdns dns_transmit.c, per server and round
TCP_TIMEOUT_S = 10
_T_A, _T_PTR, _T_AAAA = 1, 12, 28
_MAX_SERVERS = 16
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


def _ip4_scan(text: str) -> tuple[str | None, int]:
    """djbdns ip4_scan: a dotted quad at the start of text, and its length."""
    parts, i = [], 0
    for n in range(4):
        j = i
        while j < len(text) and text[j].isdigit() and text[j].isascii():
            j += 1
        if j == i:
            return None, 0
        parts.append(int(text[i:j]) & 255)
        i = j
        if n < 3:
            if text[i:i + 1] != ".":
                return None, 0
            i += 1
    return ".".join(map(str, parts)), i


def servers() -> list[str]:
    """The resolvers djbdns would ask ($DNSCACHEIP, resolv.conf, else 127.0.0.1)."""
    found: list[str] = []
    cache = os.environ.get("DNSCACHEIP")
    if cache:
        i = 0
        while len(found) < _MAX_SERVERS and i < len(cache):
            if cache[i] == ".":
                i += 1
                continue
            ip, used = _ip4_scan(cache[i:])
            if ip is None:
                break
            found.append(ip)
            i += used
    if not found:
        try:
            with open("/etc/resolv.conf", "rb") as fh:
                text = fh.read(65536).decode("latin-1")
        except OSError:
            text = ""
        for line in text.split("\n"):
            if len(found) < _MAX_SERVERS and line.startswith(("nameserver ", "nameserver\t")):
                ip, _ = _ip4_scan(line[10:].lstrip(" \t"))
                if ip is not None:
                    found.append("127.0.0.1" if ip == "0.0.0.0" else ip)
    return found or ["127.0.0.1"]


def _wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def _reverse_name(ip: str) -> list[bytes]:
    addr = socket.inet_pton(socket.AF_INET6, ip) if ":" in ip else socket.inet_aton(ip)
    if len(addr) == 4:
        return [str(b).encode() for b in reversed(addr)] + [b"in-addr", b"arpa"]
    nibbles = addr.hex()[::-1]
    return [c.encode() for c in nibbles] + [b"ip6", b"arpa"]


def _getname(packet: bytes, pos: int) -> tuple[list[bytes], int]:
    """A (possibly compressed) name at pos: its labels and the position after it."""
    labels: list[bytes] = []
    end = -1
    for _ in range(128):  # bounds a pointer loop
        if pos >= len(packet):
            raise ValueError("name past the end")
        length = packet[pos]
        if length >= 192:
            if pos + 1 >= len(packet):
                raise ValueError("bad pointer")
            if end < 0:
                end = pos + 2
            pos = ((length & 63) << 8) | packet[pos + 1]
            continue
        if length >= 64:
            raise ValueError("bad label")
        if length == 0:
            return labels, (end if end >= 0 else pos + 1)
        labels.append(packet[pos + 1:pos + 1 + length])
        pos += 1 + length
    raise ValueError("name too long")


def _todot(labels: list[bytes]) -> str:
    """djbdns dns_domain_todot_cat: lowercase, \\ooo for anything unusual."""
    if not labels:
        return "."
    out = []
    for label in labels:
        chars = []
        for ch in label.lower():
            chars.append(chr(ch) if ch in _SAFE else f"\\{ch:03o}")
        out.append("".join(chars))
    return ".".join(out)


def _irrelevant(packet: bytes, query: bytes) -> bool:
    """djbdns irrelevant(): not the answer to our question (id, QDCOUNT 1, name, type)."""
    try:
        if len(packet) < 12 or packet[:2] != query[:2] or packet[4:6] != b"\0\1":
            return True
        labels, pos = _getname(packet, 12)
        qlabels, qpos = _getname(query, 12)
        if [x.lower() for x in labels] != [x.lower() for x in qlabels]:
            return True
        return packet[pos:pos + 2] != query[qpos:qpos + 2] or packet[pos + 2:pos + 4] != b"\0\1"
    except ValueError:
        return True


def _server_failed(packet: bytes) -> bool:
    rcode = packet[3] & 15
    return rcode not in (0, 3)


def _udp(server: str, query: bytes, timeout_s: float) -> bytes | str | None:
    """One UDP try: the answer, "tcp" when truncated, None to try the next server."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((server, 53))
            sock.send(query)
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                packet = sock.recv(65536)
                if _irrelevant(packet, query):
                    continue
                if packet[2] & 2:
                    return "tcp"
                return None if _server_failed(packet) else packet
    except OSError:  # refused (ICMP), timeout, unreachable: the next server
        return None
    return None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("short answer")
        data += chunk
    return data


def _tcp(server: str, query: bytes) -> bytes | None:
    """The same question over TCP, after a truncated UDP answer."""
    try:
        with socket.create_connection((server, 53), timeout=TCP_TIMEOUT_S) as sock:
            sock.sendall(len(query).to_bytes(2, "big") + query)
            size = int.from_bytes(_recv_exactly(sock, 2), "big")
            packet = _recv_exactly(sock, size)
    except OSError:
        return None
    if _irrelevant(packet, query) or _server_failed(packet):
        return None
    return packet


def _resolve(labels: list[bytes], qtype: int) -> bytes | None:
    """The answer packet to one question, or None when no server gave one."""
    query = (os.urandom(2) + b"\1\0\0\1\0\0\0\0\0\0" + _wire(labels)
             + qtype.to_bytes(2, "big") + b"\0\1")
    hosts = servers()
    for timeout_s in TIMEOUTS_S:
        for server in hosts:
            got = _udp(server, query, timeout_s)
            if got == "tcp":
                return _tcp(server, query)
            if isinstance(got, bytes):
                return got
    return None


def _answers(packet: bytes, qtype: int) -> list[tuple[bytes, int]]:
    """(rdata, its offset) of every answer record of type qtype, class IN."""
    found = []
    try:
        _, pos = _getname(packet, 12)
        pos += 4
        for _ in range(int.from_bytes(packet[6:8], "big")):
            _, pos = _getname(packet, pos)
            head = packet[pos:pos + 10]
            if len(head) < 10:
                break
            size = int.from_bytes(head[8:10], "big")
            if head[0:2] == qtype.to_bytes(2, "big") and head[2:4] == b"\0\1":
                found.append((packet[pos + 10:pos + 10 + size], pos + 10))
            pos += 10 + size
    except ValueError:
        pass
    return found


def name_of(ip: str) -> str | None:
    """TCPREMOTEHOST / TCPLOCALHOST for ip: the first PTR name, None if none or no answer."""
    packet = _resolve(_reverse_name(ip), _T_PTR)
    if packet is None:
        return None
    for _, offset in _answers(packet, _T_PTR):
        try:
            name = _todot(_getname(packet, offset)[0])
        except ValueError:
            continue
        return name or None
    return None


def _literal4(name: str) -> list[bytes] | None:
    """djbdns dns_ip4: a name made of digits and dots is read as addresses, not asked."""
    if any(c not in "0123456789.[]" for c in name):
        return None
    out, code = bytearray(), 0
    for ch in name + ".":
        if ch in "[]":
            continue
        if ch == ".":
            out.append(code & 255)
            code = 0
        else:
            code = code * 10 + int(ch)
    return [bytes(out[i:i + 4]) for i in range(0, len(out) - 3, 4)]


def _fromdot(name: str) -> list[bytes]:
    """djbdns dns_domain_fromdot: labels of a dotted name, \\ooo and \\c escapes read."""
    labels: list[bytes] = []
    label = bytearray()
    i = 0
    while i < len(name):
        ch = name[i]
        i += 1
        if ch == ".":
            if label:
                labels.append(bytes(label))
            label = bytearray()
            continue
        if ch == "\\" and i < len(name):
            digits = name[i:i + 3]
            if len(digits) == 3 and all(d in "01234567" for d in digits):
                label.append(int(digits, 8) & 255)
                i += 3
                continue
            ch = name[i]
            i += 1
        label += ch.encode("latin-1", "replace")
    if label:
        labels.append(bytes(label))
    return [x[:63] for x in labels]


def addresses_of(name: str, v6: bool = False) -> list[bytes]:
    """The A (or AAAA) records of name, packed, for -p; [] when none or no answer."""
    if not v6:
        literal = _literal4(name)
        if literal is not None:
            return literal
    qtype = _T_AAAA if v6 else _T_A
    packet = _resolve(_fromdot(name), qtype)
    if packet is None:
        return []
    size = 16 if v6 else 4
    return [data for data, _ in _answers(packet, qtype) if len(data) == size]
