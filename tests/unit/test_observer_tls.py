"""STARTTLS and SMTPS: after the switch, bytes go to the TLS parser, never to SMTP."""

from __future__ import annotations

from helpers import bytewise, feed, names

from supervise_smtp.observer import Observer
from supervise_smtp.observer.events import Event, PipeliningViolation, StartTLS, StartTLSInjection

HELLO = b"\x16\x03\x01\x00\x05hello"  # a record header and a few payload bytes
HEAD = [
    ("S", b"220 mx ESMTP\r\n"),
    ("C", b"EHLO c\r\n"),
    ("S", b"250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n"),
]


class Marker(Event):
    """What the stand-in TLS parser returns for each chunk it is fed."""

    __slots__ = ("direction", "length")
    NAME = "marker"


class FakeTLS:
    """Stand-in for supervise_smtp.observer.tls.TLSStream: records and echoes lengths."""

    def __init__(self) -> None:
        self.client = bytearray()
        self.server = bytearray()

    def feed_client(self, data: bytes) -> list[Event]:
        self.client += data
        return [Marker(direction="client", length=len(data))] if data else []

    def feed_server(self, data: bytes) -> list[Event]:
        self.server += data
        return [Marker(direction="server", length=len(data))] if data else []


def observer() -> tuple[Observer, list[FakeTLS]]:
    made: list[FakeTLS] = []

    def factory() -> FakeTLS:
        made.append(FakeTLS())
        return made[-1]

    return Observer(tls_factory=factory), made


def smtp_events(events):
    return [e for e in events if not isinstance(e, Marker)]


def test_tls_starttls_hands_both_directions_to_tls():
    """After the 220 to STARTTLS, every byte goes to the TLS parser and no SMTP event follows."""
    obs, made = observer()
    events = feed([*HEAD, ("C", b"STARTTLS\r\n"), ("S", b"220 2.0.0 go ahead\r\n"),
                   ("C", HELLO + b"EHLO inside\r\n"), ("S", b"\x16\x03\x03\x00\x02hi250 x\r\n"),
                   ("C", b""), ("S", b"")], obs)
    assert obs.stage == "tls" and obs.state.tls_active and not obs.state.tls_implicit
    assert bytes(made[0].client) == HELLO + b"EHLO inside\r\n"
    assert bytes(made[0].server) == b"\x16\x03\x03\x00\x02hi250 x\r\n"
    tail = names(smtp_events(events))[-4:]
    assert tail == ["Reply", "StartTLS", "PeerClosed", "PeerClosed"]
    assert [e.stage for e in events if type(e).__name__ == "PeerClosed"] == ["tls", "tls"]


def test_tls_server_bytes_after_220_in_same_chunk():
    """Server bytes after the 220 line in the same read are TLS already."""
    obs, made = observer()
    feed([*HEAD, ("C", b"STARTTLS\r\n"), ("S", b"220 go\r\n\x16\x03\x03")], obs)
    assert bytes(made[0].server) == b"\x16\x03\x03"


def test_tls_starttls_injection_flagged():
    """Plaintext pipelined behind STARTTLS before its 220 is a StartTLSInjection."""
    obs, made = observer()
    events = feed([*HEAD, ("C", b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x>\r\n"),
                   ("S", b"220 go ahead\r\n")], obs)
    assert [v.kind for v in events if isinstance(v, PipeliningViolation)] == ["after_starttls"]
    assert [e for e in events if isinstance(e, StartTLSInjection)] == [
        StartTLSInjection(length=len(b"RSET\r\nMAIL FROM:<evil@x>\r\n"))]
    assert made[0].client == b"" and obs.state.starttls_injection == 26


def test_tls_eager_client_hello_is_tls_not_injection():
    """A ClientHello sent before the 220 goes to the TLS parser, not flagged as injection."""
    obs, made = observer()
    events = feed([*HEAD, ("C", b"STARTTLS\r\n" + HELLO), ("S", b"220 go ahead\r\n")], obs)
    assert not [e for e in events if isinstance(e, StartTLSInjection)]
    assert bytes(made[0].client) == HELLO


def test_tls_refused_starttls_keeps_smtp():
    """A 454 to STARTTLS keeps parsing SMTP; held bytes are commands."""
    obs, made = observer()
    events = feed([*HEAD, ("C", b"STARTTLS\r\nQUIT\r\n"), ("S", b"454 TLS not available\r\n"),
                   ("S", b"221 bye\r\n")], obs)
    assert not made and not obs.state.tls_active
    assert [e.verb for e in events if type(e).__name__ == "Command"][-1] == "QUIT"
    assert obs.state.quit_answered


def test_tls_implicit_smtps_detected_from_first_byte():
    """A first client byte 0x16 before any server byte switches to TLS (SMTPS)."""
    obs, made = observer()
    events = feed([("C", HELLO), ("S", b"\x16\x03\x03\x00\x01x")], obs)
    assert smtp_events(events) == [StartTLS(implicit=True)]
    assert obs.stage == "tls" and obs.state.tls_implicit
    assert bytes(made[0].client) == HELLO and bytes(made[0].server) == b"\x16\x03\x03\x00\x01x"


def test_tls_split_does_not_change_events_or_bytes():
    """Byte-by-byte feeding hands the TLS parser the same bytes and SMTP the same events."""
    steps = [*HEAD, ("C", b"STARTTLS\r\n"), ("S", b"220 go\r\n\x16\x03"),
             ("C", HELLO * 3), ("S", b"\x03\x00\x01z")]
    obs1, made1 = observer()
    obs2, made2 = observer()
    ev1 = smtp_events(feed(steps, obs1))
    ev2 = smtp_events(feed(steps, obs2, split=bytewise))
    assert ev1 == ev2
    assert (made1[0].client, made1[0].server) == (made2[0].client, made2[0].server)


def test_tls_default_parser_is_the_observer_tls_stream():
    """Without a factory, the real TLSStream is loaded lazily and parses the records."""
    obs = Observer()
    events = feed([("C", HELLO), ("S", b"\x15\x03\x03\x00\x02\x02\x28"), ("C", b""),
                   ("S", b"")], obs)
    assert type(obs._tls).__module__ == "supervise_smtp.observer.tls"
    assert names(events)[0] == "StartTLS"
