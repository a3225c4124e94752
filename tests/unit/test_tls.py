"""Tests of the sans-IO TLS record observer against real OpenSSL handshakes.

The byte streams come from Python's ``ssl`` module talking to itself over
memory BIOs, so the parser is checked against what OpenSSL really sends, and
its findings against what OpenSSL itself reports.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervise_smtp.observer.commands import is_tls_record, opens_tls
from supervise_smtp.observer.tls import (
    MAX_HANDSHAKE_BYTES,
    MAX_RECORD_BYTES,
    NOT_TLS_PREVIEW_BYTES,
    TLSAlert,
    TLSClientHello,
    TLSClosed,
    TLSNotTLS,
    TLSServerHello,
    TLSStream,
)
from supervise_smtp.observer.tls_names import cipher_name

HOSTNAME = "mx.example.org"
CERT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "tls"
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3

Transcript = list[tuple[str, bytes]]


# -- fixtures and builders ---------------------------------------------------


@pytest.fixture(scope="module")
def cert() -> tuple[str, str]:
    """A self-signed certificate for HOSTNAME, valid 2000-2100: (cert path, key path).

    Committed rather than made per run: making one takes either the
    ``cryptography`` package or an ``openssl`` process, and unit tests spawn
    nothing.  Test-only: the key protects nothing.
    """
    return str(CERT_DIR / "cert.pem"), str(CERT_DIR / "key.pem")


def _server_context(cert, maximum=None, minimum=None, ciphers=None, curve=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    if maximum is not None:
        ctx.maximum_version = maximum
    if minimum is not None:
        ctx.minimum_version = minimum
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    return ctx


def _client_context(cert, trust=True, maximum=None, minimum=None, alpn=None, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust:
        ctx.load_verify_locations(cert[0])
    if maximum is not None:
        ctx.maximum_version = maximum
    if minimum is not None:
        ctx.minimum_version = minimum
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


class Session:
    """A client and a server SSLObject wired back to back, recording the wire."""

    def __init__(self, client_ctx, server_ctx, server_hostname=HOSTNAME):
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname=server_hostname)
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.transcript: Transcript = []
        self.errors: dict[str, ssl.SSLError] = {}

    def pump(self) -> bool:
        moved = False
        data = self.c_out.read()
        if data:
            self.transcript.append(("client", data))
            self.s_in.write(data)
            moved = True
        data = self.s_out.read()
        if data:
            self.transcript.append(("server", data))
            self.c_in.write(data)
            moved = True
        return moved

    def _step(self, side: str, action) -> None:
        if side in self.errors:
            return
        try:
            action()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError as err:
            self.errors[side] = err

    def handshake(self) -> Session:
        for _ in range(20):
            self._step("client", self.client.do_handshake)
            self._step("server", self.server.do_handshake)
            if not self.pump() and (self.errors or self._done()):
                break
        return self

    def _done(self) -> bool:
        try:
            return self.client.version() is not None and self.server.version() is not None
        except ValueError:
            return False

    def exchange(self, client_data: bytes, server_data: bytes) -> Session:
        self.client.write(client_data)
        self.pump()
        self._read_all(self.server)
        self.server.write(server_data)
        self.pump()
        self._read_all(self.client)
        self.pump()
        return self

    @staticmethod
    def _read_all(obj) -> None:
        while True:
            try:
                if not obj.read(65536):
                    return
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return

    def close(self) -> Session:
        self._step("client", self.client.unwrap)
        self.pump()
        self._step("server", self.server.unwrap)
        self.pump()
        return self


def _feed(transcript: Transcript, stream: TLSStream | None = None, eof=True) -> list:
    stream = stream if stream is not None else TLSStream()
    events: list = []
    for direction, data in transcript:
        feed = stream.feed_client if direction == "client" else stream.feed_server
        events += feed(data)
    if eof:
        events += stream.feed_client(b"") + stream.feed_server(b"")
    return events


def _of(events, cls):
    return [event for event in events if isinstance(event, cls)]


def _record(rtype: int, payload: bytes, version: int = 0x0303) -> bytes:
    return bytes([rtype]) + version.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload


def _handshake_message(mtype: int, body: bytes) -> bytes:
    return bytes([mtype]) + len(body).to_bytes(3, "big") + body


def _synthetic_client_hello(padding: int = 0) -> bytes:
    """A ClientHello body offering TLS 1.3/1.2 with SNI, ALPN and GREASE."""

    def ext(etype: int, data: bytes) -> bytes:
        return etype.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data

    name = HOSTNAME.encode()
    sni = (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name
    alpn_list = b"\x04smtp\x02h2"
    extensions = (
        ext(0, sni)
        + ext(16, len(alpn_list).to_bytes(2, "big") + alpn_list)
        + ext(43, b"\x06\x3a\x3a\x03\x04\x03\x03")
        + ext(21, bytes(padding))
    )
    return (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + b"\x00\x04\x13\x01\x13\x02"
        + b"\x01\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )


def _fragment(message: bytes, size: int = 16384) -> bytes:
    return b"".join(_record(22, message[i : i + size]) for i in range(0, len(message), size))


@pytest.fixture(scope="module")
def tls13(cert) -> Session:
    client = _client_context(cert, alpn=["smtp", "h2"])
    return (
        Session(client, _server_context(cert, maximum=TLS13))
        .handshake()
        .exchange(b"EHLO client\r\n", b"250 ok\r\n" * 5000)
        .close()
    )


@pytest.fixture(scope="module")
def tls12(cert) -> Session:
    client = _client_context(cert, alpn=["smtp"])
    return (
        Session(client, _server_context(cert, maximum=TLS12))
        .handshake()
        .exchange(b"EHLO client\r\n", b"250 ok\r\n" * 5000)
        .close()
    )


@pytest.fixture(scope="module")
def transcripts(tls12, tls13, cert) -> list[Transcript]:
    failed = Session(_client_context(cert, trust=False), _server_context(cert, maximum=TLS12))
    return [tls12.transcript, tls13.transcript, failed.handshake().transcript]


# -- hellos against what OpenSSL reports -------------------------------------


@pytest.mark.parametrize("maximum", [TLS12, TLS13])
def test_tls_server_hello_matches_openssl(cert, maximum):
    """The ServerHello version and cipher are the ones OpenSSL says it negotiated."""
    session = Session(_client_context(cert), _server_context(cert, maximum=maximum)).handshake()
    assert not session.errors
    (hello,) = _of(_feed(session.transcript), TLSServerHello)
    assert hello.version == session.client.version() == session.server.version()
    assert hello.cipher == session.client.cipher()[0]
    assert hello.hello_retry is False


@pytest.mark.parametrize(
    "ciphers",
    ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305", "AES256-SHA256", "AES128-SHA"],
)
def test_tls_tls12_cipher_names_match_openssl(cert, ciphers):
    """TLS 1.2 suites are named exactly as ``SSLObject.cipher()`` names them."""
    ciphers += ":@SECLEVEL=0"
    session = Session(
        _client_context(cert, ciphers=ciphers),
        _server_context(cert, maximum=TLS12, ciphers=ciphers),
    ).handshake()
    assert not session.errors
    stream = TLSStream()
    (hello,) = _of(_feed(session.transcript, stream), TLSServerHello)
    assert hello.cipher == session.client.cipher()[0] == stream.cipher
    assert hello.version == "TLSv1.2" == stream.version


def test_tls_cipher_names_agree_with_openssl():
    """Each suite the local OpenSSL knows is named as OpenSSL names it, or shown in hex."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    named = 0
    for cipher in ctx.get_ciphers():
        cid = cipher["id"] & 0xFFFF
        assert cipher_name(cid) in (cipher["name"], f"0x{cid:04X}")
        named += cipher_name(cid) == cipher["name"]
    assert named >= 25
    assert cipher_name(0xFAFA) == "0xFAFA"


def test_tls_client_hello_reports_sni_alpn_and_versions(tls13):
    """SNI comes from server_hostname, ALPN from set_alpn_protocols, versions from the offer."""
    (hello,) = _of(_feed(tls13.transcript), TLSClientHello)
    assert hello.sni == HOSTNAME.encode()
    assert hello.alpn == (b"smtp", b"h2")
    assert hello.versions == ("TLSv1.3", "TLSv1.2")
    assert hello.cipher_count > 0


def test_tls_client_hello_without_supported_versions_uses_legacy(cert):
    """A client capped at TLS 1.2 sends no supported_versions, so the legacy version is shown."""
    client = _client_context(cert, maximum=TLS12)
    session = Session(client, _server_context(cert)).handshake()
    (hello,) = _of(_feed(session.transcript), TLSClientHello)
    assert hello.versions == ("TLSv1.2",)


def test_tls_client_hello_without_server_hostname_has_no_sni(cert):
    """A client that names no server sends no SNI, reported as None."""
    client = _client_context(cert)
    client.check_hostname = False
    session = Session(client, _server_context(cert), server_hostname=None).handshake()
    assert not session.errors
    (hello,) = _of(_feed(session.transcript), TLSClientHello)
    assert hello.sni is None


def test_tls_hello_retry_request_is_flagged(cert):
    """A server refusing the client's key share answers with a HelloRetryRequest first."""
    session = Session(_client_context(cert), _server_context(cert, curve="secp384r1")).handshake()
    assert not session.errors
    events = _feed(session.transcript)
    retry, final = _of(events, TLSServerHello)
    assert (retry.hello_retry, final.hello_retry) == (True, False)
    assert final.version == session.client.version() == "TLSv1.3"
    assert final.cipher == session.client.cipher()[0]
    assert len(_of(events, TLSClientHello)) == 2


def test_tls_large_client_hello_is_reassembled_across_records():
    """A 20 KiB ClientHello (big post-quantum key shares) spans two records and still parses."""
    message = _handshake_message(1, _synthetic_client_hello(padding=20000))
    events = TLSStream().feed_client(_fragment(message))
    assert events == [
        TLSClientHello(
            sni=HOSTNAME.encode(),
            versions=("TLSv1.3", "TLSv1.2"),
            alpn=(b"smtp", b"h2"),
            cipher_count=2,
        )
    ]


def test_tls_oversized_handshake_is_skipped_without_buffering():
    """A hello over the reassembly cap yields nothing, holds no memory, and framing survives."""
    message = _handshake_message(1, bytes(MAX_HANDSHAKE_BYTES + 1))
    stream = TLSStream()
    events = []
    for i in range(0, len(message), 1000):
        events += stream.feed_client(_fragment(message[i : i + 1000]))
        assert stream.buffered_bytes <= 5
    assert events == []
    assert stream.feed_client(_record(21, b"\x02\x28")) == [
        TLSAlert(
            direction="client",
            level="fatal",
            description="handshake_failure",
            code=40,
            encrypted=False,
        )
    ]


# -- alerts ------------------------------------------------------------------


@pytest.mark.parametrize("maximum", [TLS12, TLS13])
def test_tls_untrusted_certificate_gives_unknown_ca_alert(cert, maximum):
    """A client that cannot verify the server's certificate sends a readable fatal unknown_ca."""
    client = _client_context(cert, trust=False)
    session = Session(client, _server_context(cert, maximum=maximum)).handshake()
    assert "client" in session.errors
    stream = TLSStream()
    alerts = _of(_feed(session.transcript, stream), TLSAlert)
    expected = TLSAlert(
        direction="client", level="fatal", description="unknown_ca", code=48, encrypted=False
    )
    assert alerts == [expected]
    assert stream.alert == expected


@pytest.mark.parametrize(
    ("client_kwargs", "server_kwargs"),
    [({"minimum": TLS13}, {"maximum": TLS12}), ({"maximum": TLS12}, {"minimum": TLS13})],
)
def test_tls_version_mismatch_gives_protocol_version_alert(cert, client_kwargs, server_kwargs):
    """With no common version the server refuses the ClientHello with protocol_version."""
    session = Session(
        _client_context(cert, **client_kwargs), _server_context(cert, **server_kwargs)
    ).handshake()
    assert session.errors
    events = _feed(session.transcript)
    assert _of(events, TLSServerHello) == []
    assert _of(events, TLSAlert) == [
        TLSAlert(
            direction="server",
            level="fatal",
            description="protocol_version",
            code=70,
            encrypted=False,
        )
    ]


def test_tls_tls12_close_notify_is_an_encrypted_alert(tls12):
    """After ChangeCipherSpec a TLS 1.2 alert is reported but not decoded."""
    alerts = _of(_feed(tls12.transcript), TLSAlert)
    encrypted = TLSAlert(
        direction="client", level=None, description=None, code=None, encrypted=True
    )
    assert alerts == [encrypted, TLSAlert(**{**encrypted.fields(), "direction": "server"})]


def test_tls_two_byte_alert_after_early_change_cipher_spec_is_decoded():
    """A TLS 1.3 client's decoy ChangeCipherSpec before any ServerHello does not hide its alert."""
    client_hello = _record(22, _handshake_message(1, _synthetic_client_hello()))
    stream = TLSStream()
    events = stream.feed_client(client_hello + _record(20, b"\x01") + _record(21, b"\x01\x00"))
    assert events[1:] == [
        TLSAlert(
            direction="client",
            level="warning",
            description="close_notify",
            code=0,
            encrypted=False,
        )
    ]


def test_tls_tls13_close_notify_stays_invisible(tls13):
    """TLS 1.3 hides alerts inside application_data records, so none is reported."""
    assert _of(_feed(tls13.transcript), TLSAlert) == []


# -- counters and framing ----------------------------------------------------


def _count_records(data: bytes) -> int:
    pos = count = 0
    while pos < len(data):
        pos += 5 + int.from_bytes(data[pos + 3 : pos + 5], "big")
        count += 1
    assert pos == len(data)
    return count


@pytest.mark.parametrize("name", ["tls12", "tls13"])
def test_tls_closed_counts_records_and_bytes(request, name):
    """At EOF each direction reports exactly the records and bytes that crossed it."""
    transcript = request.getfixturevalue(name).transcript
    stream = TLSStream()
    closed = _of(_feed(transcript, stream), TLSClosed)
    for event in closed:
        wire = b"".join(data for direction, data in transcript if direction == event.direction)
        assert event.bytes == len(wire)
        assert event.records == _count_records(wire)
        assert event.mid_record is False
    assert [event.direction for event in closed] == ["client", "server"]
    assert stream.client_bytes + stream.server_bytes == sum(len(d) for _, d in transcript)
    assert stream.client_records == closed[0].records
    assert stream.server_records == closed[1].records


def test_tls_attributes_keep_the_last_state(tls13):
    """The summary can read version, cipher and SNI without keeping the events."""
    stream = TLSStream()
    _feed(tls13.transcript, stream)
    assert stream.version == tls13.client.version()
    assert stream.cipher == tls13.client.cipher()[0]
    assert stream.sni == HOSTNAME.encode()
    assert stream.alert is None


def test_tls_application_data_is_never_buffered():
    """Payloads are skipped by count: only a partial 5-byte header is ever held."""
    stream = TLSStream()
    record = _record(23, bytes(16384 + 256))
    for start in range(0, len(record) * 3, 4097):
        chunk = (record * 3)[start : start + 4097]
        assert stream.feed_server(chunk) == []
        assert stream.buffered_bytes < 5
    assert stream.server_records == 3


def test_tls_eof_inside_a_record_is_flagged():
    """A connection cut mid-record (a handshake cut short) says so at EOF."""
    stream = TLSStream()
    stream.feed_server(_record(23, bytes(100))[:50])
    assert stream.feed_server(b"") == [
        TLSClosed(direction="server", records=1, bytes=50, mid_record=True)
    ]
    stream.feed_client(b"\x16\x03")
    assert stream.feed_client(b"") == [
        TLSClosed(direction="client", records=0, bytes=2, mid_record=True)
    ]


def test_tls_feed_after_eof_is_ignored():
    """Bytes after EOF are a caller bug we tolerate: no events, no second TLSClosed."""
    stream = TLSStream()
    assert len(stream.feed_client(b"")) == 1
    assert stream.feed_client(b"\x16\x03\x01\x00\x00") == []
    assert stream.feed_client(b"") == []


# -- not TLS -----------------------------------------------------------------


def test_tls_plain_smtp_is_not_tls():
    """A client that talks SMTP after STARTTLS is named, with the bytes it sent."""
    stream = TLSStream()
    events = stream.feed_client(b"EHLO client.example\r\n")
    assert events == [TLSNotTLS(direction="client", first_bytes=b"EHLO client.exam", offset=0)]
    assert stream.feed_client(b"\x16\x03\x01\x00\x00") == []
    assert stream.feed_client(b"") == [
        TLSClosed(direction="client", records=0, bytes=26, mid_record=False)
    ]


def test_tls_short_non_tls_is_reported_at_eof():
    """A few non-TLS bytes then EOF still produce TLSNotTLS before TLSClosed."""
    stream = TLSStream()
    assert stream.feed_server(b"421 ") == []
    assert stream.feed_server(b"") == [
        TLSNotTLS(direction="server", first_bytes=b"421 ", offset=0),
        TLSClosed(direction="server", records=0, bytes=4, mid_record=False),
    ]


@pytest.mark.parametrize(
    "header",
    [b"\x19\x03\x03\x00\x10", b"\x16\x02\x00\x00\x10", b"\x17\x03\x03\xff\xff"],
    ids=["record-type", "major-version", "record-length"],
)
def test_tls_framing_lost_mid_stream_is_not_tls(header):
    """Garbage after valid records is reported at its offset and parsing stops."""
    first = _record(23, bytes(30))
    data = first + header + bytes(NOT_TLS_PREVIEW_BYTES)
    stream = TLSStream()
    events = stream.feed_server(data)
    assert events == [
        TLSNotTLS(
            direction="server",
            first_bytes=(header + bytes(NOT_TLS_PREVIEW_BYTES))[:NOT_TLS_PREVIEW_BYTES],
            offset=len(first),
        )
    ]
    assert stream.server_records == 1
    assert int.from_bytes(b"\xff\xff", "big") > MAX_RECORD_BYTES


def test_tls_sniff_tells_tls_from_smtp(tls12, tls13):
    """OpenSSL's first bytes each way open TLS for the observer's sniff; SMTP lines do not."""
    for session in (tls12, tls13):
        sides = {}
        for direction, data in session.transcript:
            sides.setdefault(direction, data)
        assert opens_tls(sides["client"]) and is_tls_record(sides["client"])
        assert is_tls_record(sides["server"])
    for smtp in (b"EHLO x\r\n", b"220 mx ESMTP\r\n", b"", b"\x18\x03\x03"):
        assert not opens_tls(smtp) and not is_tls_record(smtp)


# -- properties --------------------------------------------------------------


def _split_feed(transcript: Transcript, cuts_per_segment: list[list[int]]) -> list:
    stream = TLSStream()
    events: list = []
    for (direction, data), cuts in zip(transcript, cuts_per_segment, strict=True):
        feed = stream.feed_client if direction == "client" else stream.feed_server
        bounds = sorted({0, len(data), *cuts})
        for start, end in zip(bounds, bounds[1:], strict=False):
            events += feed(data[start:end])
    return events + stream.feed_client(b"") + stream.feed_server(b"")


def test_tls_byte_by_byte_gives_the_same_events(transcripts):
    """Feeding one byte at a time changes nothing."""
    for transcript in transcripts:
        whole = _feed(transcript)
        cuts = [list(range(len(data))) for _, data in transcript]
        assert _split_feed(transcript, cuts) == whole


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tls_random_splits_give_the_same_events(transcripts, data):
    """Splitting the wire at any points gives the same events in the same order."""
    transcript = data.draw(st.sampled_from(transcripts))
    cuts = [data.draw(st.lists(st.integers(0, len(chunk)), max_size=12)) for _, chunk in transcript]
    assert _split_feed(transcript, cuts) == _feed(transcript)


def _bound() -> int:
    return 2 * (MAX_HANDSHAKE_BYTES + NOT_TLS_PREVIEW_BYTES + 16)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=20))
def test_tls_random_bytes_never_raise(chunks):
    """Arbitrary bytes in either direction never raise and keep buffers bounded."""
    stream = TLSStream()
    for from_client, chunk in chunks:
        (stream.feed_client if from_client else stream.feed_server)(chunk)
        assert stream.buffered_bytes <= _bound()
    stream.feed_client(b"")
    stream.feed_server(b"")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tls_mutated_handshakes_never_raise(transcripts, data):
    """Real handshakes with bytes overwritten exercise the hello parsers on bad input."""
    transcript = data.draw(st.sampled_from(transcripts))
    index = data.draw(st.integers(0, min(3, len(transcript) - 1)))
    direction, chunk = transcript[index]
    mutated = bytearray(chunk)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, min(len(mutated) - 1, 600)))
        mutated[position] = data.draw(st.integers(0, 255))
    length = data.draw(st.integers(0, len(mutated)))
    stream = TLSStream()
    events = _feed([*transcript[:index], (direction, bytes(mutated[:length]))], stream)
    assert stream.buffered_bytes <= _bound()
    assert isinstance(events[-1], TLSClosed)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=400),
    mtype=st.sampled_from([1, 2]),
    split=st.integers(0, 500),
)
def test_tls_random_hello_bodies_never_raise(body, mtype, split):
    """A well-framed hello with an arbitrary body is parsed or ignored, never fatal."""
    data = _record(22, _handshake_message(mtype, body))
    stream = TLSStream()
    feed = stream.feed_client if mtype == 1 else stream.feed_server
    events = [event for chunk in (data[:split], data[split:]) if chunk for event in feed(chunk)]
    assert all(isinstance(event, (TLSClientHello, TLSServerHello)) for event in events)
