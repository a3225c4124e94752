"""The tcprules cdb lookup of ``supervise-smtp serve -x rules.cdb``, as ucspi-tcp 0.88's tcpserver.

A busy server switching from ``tcpserver -x tcp.cdb`` to serve keeps its rules
file and its ``tcprules`` habit, so a connection must get exactly the decision
and environment that tcpserver (and ``tcprulescheck``, its oracle) gives it.

What ``tcprules`` (0.88, Debian's ucspi-tcp) writes
    One record per rule; the key is the address text before the first ``:``
    (``1.2.3.1-5`` expands to five keys); the value is ``D\\0`` for deny, the
    empty string for allow, then ``+NAME=value\\0`` per ``,NAME="value"``
    instruction (any repeated character may quote).  There is no allow marker
    and no "unset" instruction: 0.88 can only set variables, so ``Rule.env``
    never holds ``None`` for a cdb that tcprules wrote.  The first rule of a
    duplicated address wins (cdb returns the first record of a key).

How tcpserver reads a value
    Entry by entry up to each NUL (bytes after the last NUL are no entry):
    ``D`` denies; ``+NAME=value`` sets NAME (split at the first ``=``); a
    ``+`` entry without ``=`` and any other entry are ignored.  A denied
    connection is dropped (tcpserver's child exits 100) with no environment;
    an allowed one gets the settings in order, after tcpserver's own TCP*
    variables (so a rule can override TCPLOCALHOST; a name set twice: the last
    wins).  A variable name may be empty (``,="x"``): tcpserver passes ``=x``
    to its child; it is returned as ``("", "x")`` and the caller decides.

Lookup order for IPv4 (and any address without ``:``), rules.c of 0.88;
the first key present wins, ``lookup`` returns None when none is:
    1. ``INFO@IP`` when TCPREMOTEINFO is known;
    2. ``INFO@=HOST`` when both are known;
    3. ``IP``;
    4. ``=HOST`` when TCPREMOTEHOST is known (``-h``);
    5. the prefixes of IP ending with ``.``, longest first (``1.2.3.``, ``1.2.``, ``1.``);
    6. ``=`` + each suffix of HOST starting with ``.``, longest first
       (``=.example.com``, ``=.com``), then ``=`` alone, when HOST is known;
    7. the empty key (the rule ``:allow``/``:deny``).
    "Known" means not None: an empty string counts, as in tcpserver.

IPv6 (an address with ``:``; Debian's tcpserver never sees one)
    ``::ffff:a.b.c.d`` (IPv4-mapped) is looked up as ``a.b.c.d`` with the
    IPv4 order, as the IPv6-patched tcpserver does.  Any other address, its
    scope (``%eth0``) dropped, is looked up in two spellings: X, the exploded
    upper-case form ``2001:0DB8:0000:0000:0000:0000:0000:0001`` that
    ucspi-tcp6's tcprules writes for any IPv6 rule address, and C, the
    compressed form ``2001:db8::1`` (RFC 5952, as serve puts it in
    TCPREMOTEIP; the key the IPv6-patched ucspi-tcp 0.88 uses).  The order:
    ``INFO@X``, ``INFO@C``, ``INFO@=HOST``, ``X``, ``C``, ``=HOST``, the
    prefixes of C ending with ``:`` longest first (``2001:db8::``,
    ``2001:db8:``, ``2001:``: the patched 0.88's prefix rules), then the
    host suffixes, ``=`` and the empty key as for IPv4.  Debian's tcprules
    cannot write a key with a ``:`` (the address ends at the first colon), so
    for such keys the cdb comes from ucspi-tcp6's or the patched tcprules, or
    from cdbmake.  Not looked up: ucspi-tcp6's CIDR keys (``^`` or ``_`` and
    an encoded bit string): no tcprules of 0.88 writes them, and for IPv4 the
    0.88 order above has no such step.

When the cdb cannot be read (``RulesError``)
    tcpserver drops the connection (its child exits 111, "unable to read"),
    except that a cdb that does not exist (ENOENT at open) is no error under
    ``-X``: the connection is then allowed with no rule.  The cdb is read as
    tcpserver's cdb library reads it (pure-cdb does the hashing and probing):
    a lookup fails with EPROTO exactly when one of its reads runs past the end
    of the file, so a truncated cdb fails for the same addresses as under
    tcpserver and answers the others the same.  Two differences, both still
    a drop: an empty file is EPROTO here where tcpserver reports EINVAL (left
    over from its failed munmap), and a directory is EISDIR where tcpserver
    crashes.  A corrupt hash table with no empty slot ends its probe after
    one round, as cdb does (pure-cdb alone would loop forever); offsets past
    4 GiB do not wrap around as in cdb's 32-bit arithmetic.

The cdb is opened afresh on every call, so a ``tcprules`` rebuild (an atomic
rename) takes effect with the next connection.  pure-cdb is imported inside
``lookup``: the per-connection wrapper never imports this module or it.
"""

from __future__ import annotations

import errno
import ipaddress
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

HEADER_BYTES = 2048     # cdb's table of 256 (position, slots) pairs
MATCH_CHUNK = 32        # cdb's match() compares a key this many bytes at a time
READS_PER_SLOT = 4      # pure-cdb reads a slot, then record header, key and data
UNREADABLE_TABLE = b"\xff" * 8   # a table whose first slot read runs past any file

Env = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """The rule tcpserver follows for a connection: its decision, variables, and key."""

    allow: bool
    env: Env          # (name, value) in cdb order; value None would unset (0.88 never does)
    key: str          # the key that matched, for logs ("" for the empty rule)


class RulesError(Exception):
    """The rules cdb could not be read: tcpserver drops the connection.

    ``errno`` is ENOENT only when the file does not exist at open, the one case
    ``-X`` turns into "allow with no rule"; every other errno is a drop.
    """

    def __init__(self, path: str, err: int) -> None:
        self.path = path
        self.errno = err
        self.strerror = os.strerror(err)
        super().__init__(f"unable to read {path}: {self.strerror}")


def lookup(path: str, ip: str, info: str | None = None,
           host: str | None = None) -> Rule | None:
    """The first rule of ``path`` for this connection, or None (tcpserver then allows).

    ``ip`` is TCPREMOTEIP, ``info`` TCPREMOTEINFO, ``host`` TCPREMOTEHOST (None
    when unknown); strings map to key bytes with ``os.fsencode``.  Raises
    RulesError when the cdb cannot be read, ValueError for an ``ip`` with ``:``
    that is not an IPv6 address.
    """
    keys = lookup_keys(ip, info, host)
    with _Cdb(path) as cdb:
        for key in keys:
            value = cdb.find(os.fsencode(key))
            if value is not None:
                return parse_value(key, value)
    return None


def lookup_keys(ip: str, info: str | None = None, host: str | None = None) -> Iterator[str]:
    """The keys tcpserver tries, in order (module docstring); generated lazily."""
    addresses, prefixes = _address_keys(ip)
    if info is not None:
        for address in addresses:
            yield f"{info}@{address}"
        if host is not None:
            yield f"{info}@={host}"
    yield from addresses
    if host is not None:
        yield "=" + host
    yield from prefixes
    if host is not None:
        yield from ("=" + host[i:] for i, ch in enumerate(host) if ch == ".")
        yield "="
    yield ""


def parse_value(key: str, value: bytes) -> Rule:
    """A cdb value read as tcpserver's found() reads it (module docstring)."""
    entries = value.split(b"\0")[:-1]   # what follows the last NUL is no entry
    if any(entry[:1] == b"D" for entry in entries):
        return Rule(False, (), key)
    settings = tuple(_setting(entry) for entry in entries
                     if entry[:1] == b"+" and b"=" in entry)
    return Rule(True, settings, key)


def _setting(entry: bytes) -> tuple[str, str | None]:
    """``+NAME=value`` as (NAME, value), split at the first ``=`` as tcpserver does."""
    name, _, value = entry[1:].partition(b"=")
    return os.fsdecode(name), os.fsdecode(value)


def _address_keys(ip: str) -> tuple[tuple[str, ...], Iterator[str]]:
    """The spellings of the address to look up, and its prefix keys (longest first)."""
    if ":" not in ip:
        return (ip,), _prefixes(ip, ".")
    address = ipaddress.IPv6Address(ip.partition("%")[0])
    if address.ipv4_mapped is not None:
        dotted = str(address.ipv4_mapped)
        return (dotted,), _prefixes(dotted, ".")
    compressed = address.compressed
    return (address.exploded.upper(), compressed), _prefixes(compressed, ":")


def _prefixes(ip: str, separator: str) -> Iterator[str]:
    """Prefixes of ``ip`` ending with ``separator``, longest first (the whole of ip too)."""
    return (ip[:end] for end in range(len(ip), 0, -1) if ip[end - 1] == separator)


class _Unreadable(Exception):
    """A read that cdb would have failed: the record runs past the end of the file."""


class _Exhausted(Exception):
    """Every slot of the key's table was probed once: cdb stops there, not found."""


class _Cut(bytes):
    """A record key or data that runs past the end of the file: the bytes that are there.

    pure-cdb reads every candidate's key and data; cdb reads a key only when
    its length matches, compares it 32 bytes at a time, and reads data only
    for the match.  A _Cut fails only where cdb would: compared as a key it
    answers False as long as cdb would have seen a difference first, and the
    caller refuses it as the data found.
    """

    wanted: int

    def __new__(cls, present: bytes, wanted: int) -> _Cut:
        cut = super().__new__(cls, present)
        cut.wanted = wanted
        return cut

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, bytes) or len(other) != self.wanted:
            return False
        for start in range(0, self.wanted, MATCH_CHUNK):
            chunk = other[start:start + MATCH_CHUNK]
            if start + len(chunk) > len(self):
                raise _Unreadable
            if bytes(self[start:start + len(chunk)]) != chunk:
                return False
        return True

    __hash__ = bytes.__hash__


class _Window:
    """The file as pure-cdb sees it, with cdb_read()'s rule: no read past the end.

    While pure-cdb reads the 256-pair table at open, a pair beyond the end
    becomes a table no lookup can read, so only the lookups that use it fail
    (as in cdb, which reads one pair per lookup).  Afterwards a read past the
    end gives a _Cut.  A per-key read budget stops a probe after one round of
    the table, where cdb stops.
    """

    def __init__(self, data: bytes | mmap.mmap, size: int) -> None:
        self._data = data
        self._size = size
        self._opening = True
        self._budget: int | None = None

    def __len__(self) -> int:
        # pure-cdb refuses a sequence shorter than the table outright; the
        # reads below decide instead, lookup by lookup, as cdb does.
        return max(self._size, HEADER_BYTES)

    def __getitem__(self, span: slice) -> bytes:
        self._spend()
        start, stop = span.start, span.stop
        if stop <= self._size:
            return self._data[start:stop]
        if self._opening:
            return UNREADABLE_TABLE
        return _Cut(self._data[start:stop], stop - start)

    def opened(self) -> None:
        """The table is read: from now on a read past the end is a _Cut."""
        self._opening = False

    def probe(self, slots: int) -> None:
        """Allow one round of a ``slots``-slot table for the next key."""
        self._budget = READS_PER_SLOT * slots

    def _spend(self) -> None:
        if self._budget is None:
            return
        if self._budget == 0:
            raise _Exhausted
        self._budget -= 1

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()


class _Cdb:
    """One open rules cdb: pure-cdb's Reader over a _Window, errors as RulesError."""

    def __init__(self, path: str) -> None:
        from cdblib import Reader  # only serve's workers need it

        self._path = path
        self._window = _Window(*_load(path))
        self._reader: Any = Reader(data=self._window)
        self._window.opened()

    def __enter__(self) -> _Cdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self._window.close()

    def find(self, key: bytes) -> bytes | None:
        """The first data of ``key``, None when absent; RulesError when cdb would fail."""
        _, hashed = self._reader.hash_key(key)
        self._window.probe(self._reader.index[hashed & 255][1])
        try:
            value = self._reader.get(key)
        except _Exhausted:
            return None
        except (struct.error, _Unreadable):
            raise RulesError(self._path, errno.EPROTO) from None
        if isinstance(value, _Cut):
            raise RulesError(self._path, errno.EPROTO)
        return value


def _load(path: str) -> tuple[bytes | mmap.mmap, int]:
    """The file mapped (read, when it cannot be mapped) and its size; RulesError on failure."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise RulesError(path, err.errno or errno.EIO) from None
    try:
        size = os.fstat(fd).st_size
        if size > 0:
            try:
                return mmap.mmap(fd, size, access=mmap.ACCESS_READ), size
            except (OSError, ValueError):
                pass  # not mappable (a directory, a device): read it, as cdb falls back to read()
        data = _read_all(fd)
        return data, len(data)
    except OSError as err:
        raise RulesError(path, err.errno or errno.EIO) from None
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    """Everything ``fd`` reads to its end."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
