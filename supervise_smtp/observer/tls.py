"""Sans-IO observer of a TLS stream: record framing, hellos and plaintext alerts.

After STARTTLS (or from the first byte on SMTPS) the relayed bytes are TLS.
We cannot and must not decrypt them, but the record layer still tells the
postmaster a lot: what the client offered (SNI, versions, ALPN), what the
server chose (version, cipher), which alert ended a failed handshake, and how
many records and bytes went each way.

Only the 5-byte record headers are read on the hot path: payloads are skipped
by arithmetic, never copied, so a 100 MB transfer costs a few thousand loop
iterations.  Plaintext handshake records are reassembled only for ClientHello
and ServerHello, and only up to ``max_handshake_bytes``; every other handshake
message is skipped by count.  Alerts are decoded only while they are readable:
in TLS 1.2 a direction encrypts everything after its ChangeCipherSpec, whereas
in TLS 1.3 every encrypted record wears the outer type application_data, so a
record of type alert is always plaintext there.

Like the SMTP observer this module does no I/O, keeps no clock and never
raises on peer input: splitting the same bytes anywhere gives the same events.
"""

from __future__ import annotations

from .commands import TLS_ALERT, TLS_CHANGE_CIPHER_SPEC, TLS_HANDSHAKE
from .events import Event
from .tls_names import alert_name, cipher_name, level_name, version_name

__all__ = [
    "MAX_HANDSHAKE_BYTES",
    "MAX_RECORD_BYTES",
    "NOT_TLS_PREVIEW_BYTES",
    "TLSAlert",
    "TLSClientHello",
    "TLSClosed",
    "TLSNotTLS",
    "TLSServerHello",
    "TLSStream",
]

# RFC 5246 6.2.3: a TLSCiphertext fragment is at most 2^14 + 2048 bytes.  A
# longer length means we lost the framing (or never had it).
MAX_RECORD_BYTES = 16384 + 2048
# A ClientHello with post-quantum key shares is ~2 KiB today and stays far
# below this; anything longer is skipped rather than buffered.
MAX_HANDSHAKE_BYTES = 65536
# How much of a non-TLS stream we quote, so the log shows "EHLO ..." or
# "GET / HTTP" rather than just a byte count.
NOT_TLS_PREVIEW_BYTES = 16

_CLIENT_HELLO = 1
_SERVER_HELLO = 2
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_TLS13 = 0x0304
# ALPN lists are client text: keep the log line bounded.
_MAX_ALPN = 16
# RFC 8446 4.1.3: a HelloRetryRequest is a ServerHello with this random.
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

# Payload handling of the record being skipped.
_SKIP = 0
_TO_HANDSHAKE = 1
_TO_ALERT = 2

class TLSClientHello(Event):
    """What the client offered: the server's answer is judged against it."""

    __slots__ = ("sni", "versions", "alpn", "cipher_count")
    NAME = "tls_client_hello"
    sni: bytes | None
    versions: tuple[str, ...]
    alpn: tuple[bytes, ...]
    cipher_count: int


class TLSServerHello(Event):
    """What the server chose; ``hello_retry`` marks a HelloRetryRequest."""

    __slots__ = ("version", "cipher", "cipher_id", "hello_retry")
    NAME = "tls_server_hello"
    version: str
    cipher: str
    cipher_id: int
    hello_retry: bool


class TLSAlert(Event):
    """An alert record; when ``encrypted`` only its existence is known."""

    __slots__ = ("direction", "level", "description", "code", "encrypted")
    NAME = "tls_alert"
    direction: str
    level: str | None
    description: str | None
    code: int | None
    encrypted: bool


class TLSNotTLS(Event):
    """The stream stopped being TLS at ``offset``; that direction is no longer parsed."""

    __slots__ = ("direction", "first_bytes", "offset")
    NAME = "tls_not_tls"
    direction: str
    first_bytes: bytes
    offset: int


class TLSClosed(Event):
    """End of one direction; ``mid_record`` means it was cut inside a record."""

    __slots__ = ("direction", "records", "bytes", "mid_record")
    NAME = "tls_closed"
    direction: str
    records: int
    bytes: int
    mid_record: bool


class _Direction:
    """Framing state of one direction; the two directions share only the version."""

    __slots__ = (
        "name",
        "header",
        "left",
        "mode",
        "records",
        "bytes",
        "ccs",
        "dead",
        "closed",
        "preview",
        "preview_offset",
        "alert_buf",
        "hs_header",
        "hs_body",
        "hs_len",
        "hs_skip",
        "hello_type",
    )

    def __init__(self, name: str, hello_type: int) -> None:
        self.name = name
        self.header = bytearray()  # partial record header, < 5 bytes
        self.left = 0  # payload bytes of the current record still to come
        self.mode = _SKIP
        self.records = 0
        self.bytes = 0
        self.ccs = False
        self.dead = False
        self.closed = False
        self.preview: bytearray | None = None
        self.preview_offset = 0
        self.alert_buf = bytearray()
        self.hs_header = bytearray()  # partial handshake header, < 4 bytes
        self.hs_body: bytearray | None = None
        self.hs_len = 0
        self.hs_skip = 0
        self.hello_type = hello_type

    def buffered(self) -> int:
        body = self.hs_body
        preview = self.preview
        return (
            len(self.header)
            + len(self.alert_buf)
            + len(self.hs_header)
            + (len(body) if body is not None else 0)
            + (len(preview) if preview is not None else 0)
        )


class TLSStream:
    """Both directions of one TLS connection, fed as the relay sees them.

    ``feed_client`` / ``feed_server`` take the bytes just relayed and return
    the events they complete; ``b""`` is EOF for that direction.  The last
    known state is also kept as attributes for the summary line.
    """

    def __init__(
        self,
        max_record_bytes: int = MAX_RECORD_BYTES,
        max_handshake_bytes: int = MAX_HANDSHAKE_BYTES,
    ) -> None:
        self.max_record_bytes = max_record_bytes
        self.max_handshake_bytes = max_handshake_bytes
        self._client = _Direction("client", _CLIENT_HELLO)
        self._server = _Direction("server", _SERVER_HELLO)
        self._tls13 = False
        self.version: str | None = None
        self.cipher: str | None = None
        self.sni: bytes | None = None
        self.alert: TLSAlert | None = None

    @property
    def client_records(self) -> int:
        return self._client.records

    @property
    def server_records(self) -> int:
        return self._server.records

    @property
    def client_bytes(self) -> int:
        return self._client.bytes

    @property
    def server_bytes(self) -> int:
        return self._server.bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes held across feeds: lets tests and callers check the caps hold."""
        return self._client.buffered() + self._server.buffered()

    def feed_client(self, data: bytes) -> list[Event]:
        return self._feed(self._client, data)

    def feed_server(self, data: bytes) -> list[Event]:
        return self._feed(self._server, data)

    # -- record layer ------------------------------------------------------

    def _feed(self, d: _Direction, data: bytes) -> list[Event]:
        out: list[Event] = []
        if d.closed:
            return out
        if not data:
            d.closed = True
            self._eof(d, out)
            return out
        size = len(data)
        start = d.bytes
        d.bytes = start + size
        if d.dead:
            return out
        if d.preview is not None:
            self._collect_preview(d, data, out)
            return out
        pos = 0
        while pos < size:
            left = d.left
            if left:
                end = pos + left
                if end > size:
                    end = size
                if d.mode:
                    self._payload(d, data[pos:end], out)
                d.left = left - (end - pos)
                pos = end
                continue
            header = d.header
            if header or size - pos < 5:
                take = min(5 - len(header), size - pos)
                header += data[pos : pos + take]
                pos += take
                if len(header) < 5:
                    break
                hdr = bytes(header)
                header.clear()
            else:
                hdr = bytes(data[pos : pos + 5])
                pos += 5
            rtype = hdr[0]
            length = hdr[3] << 8 | hdr[4]
            if not 20 <= rtype <= 24 or hdr[1] != 3 or length > self.max_record_bytes:
                d.preview = bytearray(hdr)
                d.preview_offset = start + pos - 5
                self._collect_preview(d, data[pos : pos + NOT_TLS_PREVIEW_BYTES], out)
                return out
            d.records += 1
            d.left = length
            d.mode = self._start_record(d, rtype, length, out)
        return out

    def _plaintext(self, d: _Direction) -> bool:
        # TLS 1.3 encrypted records always carry outer type 23, and its
        # ChangeCipherSpec is a middlebox decoy: types 21/22 stay readable.
        return self._tls13 or not d.ccs

    def _start_record(self, d: _Direction, rtype: int, length: int, out: list[Event]) -> int:
        if rtype == TLS_HANDSHAKE:
            return _TO_HANDSHAKE if self._plaintext(d) else _SKIP
        if rtype == TLS_ALERT:
            # Two bytes cannot be ciphertext (every cipher adds a MAC or tag):
            # this catches a TLS 1.3 client that sent its decoy ChangeCipherSpec
            # before we saw the ServerHello.
            if length == 2 or self._plaintext(d):
                d.alert_buf.clear()
                return _TO_ALERT
            self._emit_alert(d, None, None, None, True, out)
            return _SKIP
        if rtype == TLS_CHANGE_CIPHER_SPEC:
            d.ccs = True
        return _SKIP

    def _payload(self, d: _Direction, chunk: bytes, out: list[Event]) -> None:
        if d.mode == _TO_HANDSHAKE:
            self._handshake(d, chunk, out)
            return
        buf = d.alert_buf
        buf += chunk[: 2 - len(buf)]
        if len(buf) == 2:
            # One alert per record: TLS 1.3 forbids more, and a peer must not
            # turn an 18 KiB record into thousands of log lines.
            d.mode = _SKIP
            level, code = buf[0], buf[1]
            buf.clear()
            self._emit_alert(d, level_name(level), alert_name(code), code, False, out)

    def _emit_alert(
        self,
        d: _Direction,
        level: str | None,
        description: str | None,
        code: int | None,
        encrypted: bool,
        out: list[Event],
    ) -> None:
        alert = TLSAlert(
            direction=d.name, level=level, description=description, code=code, encrypted=encrypted
        )
        self.alert = alert
        out.append(alert)

    def _collect_preview(self, d: _Direction, chunk: bytes, out: list[Event]) -> None:
        preview = d.preview
        assert preview is not None
        preview += chunk[: NOT_TLS_PREVIEW_BYTES - len(preview)]
        if len(preview) >= NOT_TLS_PREVIEW_BYTES:
            self._not_tls(d, out)

    def _not_tls(self, d: _Direction, out: list[Event]) -> None:
        preview = d.preview
        assert preview is not None
        out.append(TLSNotTLS(direction=d.name, first_bytes=bytes(preview), offset=d.preview_offset))
        d.preview = None
        d.dead = True
        d.header.clear()
        d.alert_buf.clear()
        d.hs_header.clear()
        d.hs_body = None

    def _eof(self, d: _Direction, out: list[Event]) -> None:
        header = d.header
        if d.preview is None and header and not d.dead:
            if not 20 <= header[0] <= 24 or (len(header) > 1 and header[1] != 3):
                d.preview = bytearray(header)
                d.preview_offset = d.bytes - len(header)
        if d.preview is not None:
            self._not_tls(d, out)
        mid_record = not d.dead and bool(header or d.left)
        out.append(
            TLSClosed(direction=d.name, records=d.records, bytes=d.bytes, mid_record=mid_record)
        )

    # -- handshake layer ---------------------------------------------------

    def _handshake(self, d: _Direction, chunk: bytes, out: list[Event]) -> None:
        """Reassemble the hello of this direction; skip every other message by count."""
        pos = 0
        size = len(chunk)
        while pos < size:
            if d.hs_skip:
                take = min(d.hs_skip, size - pos)
                d.hs_skip -= take
                pos += take
                continue
            body = d.hs_body
            if body is None:
                header = d.hs_header
                take = min(4 - len(header), size - pos)
                header += chunk[pos : pos + take]
                pos += take
                if len(header) < 4:
                    return
                mtype = header[0]
                mlen = header[1] << 16 | header[2] << 8 | header[3]
                header.clear()
                if mtype != d.hello_type or mlen > self.max_handshake_bytes:
                    d.hs_skip = mlen
                    continue
                body = d.hs_body = bytearray()
                d.hs_len = mlen
            else:
                take = min(d.hs_len - len(body), size - pos)
                body += chunk[pos : pos + take]
                pos += take
            if len(body) == d.hs_len:
                d.hs_body = None
                self._hello(d, bytes(body), out)

    def _hello(self, d: _Direction, body: bytes, out: list[Event]) -> None:
        if d.hello_type == _CLIENT_HELLO:
            hello = _client_hello(body)
            self.sni = hello.sni
            out.append(hello)
            return
        server = _server_hello(body)
        if server is None:
            return
        server_hello, selected = server
        self._tls13 = selected == _TLS13
        self.version = server_hello.version
        self.cipher = server_hello.cipher
        out.append(server_hello)


# -- hello parsing (malformed input stops parsing, never raises out) --------


def _vector(buf: bytes, pos: int, width: int) -> tuple[int, int]:
    """Bounds of the length-prefixed vector at ``pos``; ValueError if it overruns."""
    end = pos + width
    if end > len(buf):
        raise ValueError("truncated length")
    stop = end + int.from_bytes(buf[pos:end], "big")
    if stop > len(buf):
        raise ValueError("truncated vector")
    return end, stop


def _extensions(buf: bytes, pos: int) -> dict[int, bytes]:
    """First occurrence of each extension; duplicates are a peer bug we ignore."""
    found: dict[int, bytes] = {}
    if pos >= len(buf):
        return found
    pos, stop = _vector(buf, pos, 2)
    while pos < stop:
        if pos + 2 > stop:
            raise ValueError("truncated extension")
        etype = buf[pos] << 8 | buf[pos + 1]
        start, pos = _vector(buf, pos + 2, 2)
        if pos > stop:
            raise ValueError("extension overruns list")
        found.setdefault(etype, buf[start:pos])
    return found


def _grease(version: int) -> bool:
    # RFC 8701 values (0x0A0A, 0x1A1A, ...) are noise meant to keep peers honest.
    return version & 0x0F0F == 0x0A0A and version >> 8 == version & 0xFF


def _client_hello(body: bytes) -> TLSClientHello:
    legacy: int | None = None
    cipher_count = 0
    versions: tuple[str, ...] = ()
    sni: bytes | None = None
    alpn: list[bytes] = []
    try:
        if len(body) < 34:
            raise ValueError("short ClientHello")
        legacy = body[0] << 8 | body[1]
        _, pos = _vector(body, 34, 1)  # legacy_session_id
        start, pos = _vector(body, pos, 2)
        cipher_count = (pos - start) // 2
        _, pos = _vector(body, pos, 1)  # legacy_compression_methods
        extensions = _extensions(body, pos)
        ext = extensions.get(_EXT_SUPPORTED_VERSIONS)
        if ext is not None:
            start, stop = _vector(ext, 0, 1)
            versions = tuple(
                version_name(v)
                for v in (ext[i] << 8 | ext[i + 1] for i in range(start, stop - 1, 2))
                if not _grease(v)
            )
        ext = extensions.get(_EXT_SERVER_NAME)
        if ext is not None:
            pos, stop = _vector(ext, 0, 2)
            while pos < stop:
                name_type = ext[pos]
                start, pos = _vector(ext, pos + 1, 2)
                if name_type == 0:
                    sni = ext[start:pos]
                    break
        ext = extensions.get(_EXT_ALPN)
        if ext is not None:
            pos, stop = _vector(ext, 0, 2)
            while pos < stop and len(alpn) < _MAX_ALPN:
                start, pos = _vector(ext, pos, 1)
                alpn.append(ext[start:pos])
    except (ValueError, IndexError):
        pass
    if not versions and legacy is not None:
        versions = (version_name(legacy),)
    return TLSClientHello(sni=sni, versions=versions, alpn=tuple(alpn), cipher_count=cipher_count)


def _server_hello(body: bytes) -> tuple[TLSServerHello, int] | None:
    """The event and the selected wire version, or None when no cipher is readable."""
    try:
        if len(body) < 34:
            return None
        selected = body[0] << 8 | body[1]
        _, pos = _vector(body, 34, 1)  # legacy_session_id_echo
        if pos + 3 > len(body):
            return None
        cipher_id = body[pos] << 8 | body[pos + 1]
    except ValueError:
        return None
    try:
        ext = _extensions(body, pos + 3).get(_EXT_SUPPORTED_VERSIONS)
        if ext is not None and len(ext) >= 2:
            selected = ext[0] << 8 | ext[1]
    except ValueError:
        pass
    hello = TLSServerHello(
        version=version_name(selected),
        cipher=cipher_name(cipher_id),
        cipher_id=cipher_id,
        hello_retry=body[2:34] == _HRR_RANDOM,
    )
    return hello, selected
