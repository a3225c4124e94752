"""Properties of the observer: split-invariance, no exception, bounded buffers."""

from __future__ import annotations

from helpers import cut_at, feed, smtp_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervise_smtp.observer import Observer
from supervise_smtp.observer.replies import MAX_REPLY_LINES
from supervise_smtp.observer.state import PENDING_CAP, TEXT_CAP

BODY_PIECES = [b"text", b"\r\n", b"\n", b"\r", b".", b"..", b"\x00", b"\xe9", b"\r\n.\r\n",
               b"\n.\n", b"\r\n.\r", b"x" * 997, b" "]
SERVER_REPLIES = [b"250 ok\r\n", b"250-multi\r\n250 line\r\n", b"354 go\r\n", b"334 \r\n",
                  b"235 ok\r\n", b"451 See https://cr.yp.to/docs/smtplf.html.\r\n",
                  b"220 ready\r\n", b"221 bye\r\n", b"500 what\r\n", b"garbage\r\n",
                  b"503 MAIL first (#5.5.1)\r\n", b"\x16\x03\x03\x00\x01z"]
COMMANDS = [b"EHLO x\r\n", b"MAIL FROM:<a@b> SIZE=10\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n",
            b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n", b"QUIT\r\n", b"AUTH PLAIN AGFAAGI=\r\n",
            b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n", b"BDAT 4\r\nabcd", b"BDAT 3 LAST\r\nxyz",
            b"STARTTLS\r\n", b"\x16\x03\x01\x00\x01z", b"HELP\r\n",
            b"DATA\0x\r\n", b"DATA\r\n" + b"pipelined body line\r\n" * 20,
            b"GET / x\r\n" * 10]  # two in a row: not_smtp

steps_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("C"), st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=3)
                  .map(b"".join)),
        st.tuples(st.just("C"), st.lists(st.sampled_from(BODY_PIECES), max_size=12)
                  .map(b"".join).filter(bool)),
        st.tuples(st.just("S"), st.lists(st.sampled_from(SERVER_REPLIES), min_size=1,
                                          max_size=3).map(b"".join)),
    ),
    max_size=14,
)


def _session(steps):
    head = [("S", b"220 mx ESMTP\r\n"), ("C", b"EHLO c\r\n"),
            ("S", b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n")]
    return head + steps + [("C", b""), ("S", b"")]


def _run(steps, split):
    obs = Observer(max_line_bytes=256)
    events = feed(steps, obs, split=split)
    return events, repr(obs.state)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps_strategy, data=st.data())
def test_observer_split_anywhere_same_events(steps, data):
    """Any chunking of the same steps gives the same events and the same final state."""
    steps = _session(steps)
    ref = _run(steps, lambda d: [d])
    cuts = {}

    def split(chunk: bytes):
        if chunk not in cuts:
            cuts[chunk] = data.draw(st.lists(st.integers(1, max(1, len(chunk) - 1)),
                                             max_size=8))
        return cut_at(chunk, cuts[chunk])

    assert _run(steps, split) == ref
    assert _run(steps, lambda d: [d[i:i + 1] for i in range(len(d))] or [d]) == ref


# What may follow the 220 to STARTTLS in the server's stream: TLS records, or
# plaintext a broken (or hostile) server sends first.  Where the network cuts
# these is where split-dependence hides, so every example goes through there.
AFTER_STARTTLS = [b"250 ok\r\n", b"220 ready\r\n", b"\x16\x03\x03\x00\x01z",
                  b"\x15\x03\x03\x00\x02\x02\x28", b"\x17\x03\x03\x00\x02ab", b"junk",
                  b"\r\n"]


@settings(max_examples=150, deadline=None)
@given(before=st.lists(st.sampled_from([b"EHLO x\r\n", b"NOOP\r\n"]), max_size=2),
       server=st.lists(st.sampled_from(AFTER_STARTTLS), min_size=1, max_size=6).map(b"".join),
       client=st.lists(st.sampled_from(AFTER_STARTTLS), max_size=3).map(b"".join),
       cuts=st.lists(st.integers(1, 200), max_size=6))
def test_observer_split_after_starttls_same_events(before, server, client, cuts):
    """The bytes around a STARTTLS, cut anywhere, give the same events and state."""
    steps = [("S", b"220 mx\r\n"), ("C", b"EHLO c\r\n"),
             ("S", b"250-mx\r\n250 STARTTLS\r\n"),
             ("C", b"".join(before) + b"STARTTLS\r\n" + client),
             ("S", b"250 ok\r\n" * len(before) + b"220 go\r\n" + server),
             ("C", b""), ("S", b"")]
    ref = _run(steps, lambda d: [d])
    assert _run(steps, lambda d: cut_at(d, cuts)) == ref
    assert _run(steps, lambda d: [d[i:i + 1] for i in range(len(d))] or [d]) == ref


@settings(max_examples=200, deadline=None)
@given(body=st.lists(st.sampled_from(BODY_PIECES), max_size=40).map(b"".join),
       cuts=st.lists(st.integers(1, 50000), max_size=10))
def test_observer_body_split_anywhere_same_events(body, cuts):
    """A DATA body with any mix of anomalies gives the same events however it is cut."""
    steps = smtp_session(body)
    ref = _run(steps, lambda d: [d])
    assert _run(steps, lambda d: cut_at(d, [c % max(1, len(d)) for c in cuts])) == ref


LIMIT = 64


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("CS"), st.binary(min_size=1, max_size=300) | st.lists(
    st.sampled_from(COMMANDS + SERVER_REPLIES + BODY_PIECES), max_size=6).map(b"".join)),
    max_size=30))
def test_observer_fuzz_never_raises_and_stays_bounded(steps):
    """Arbitrary bytes from both sides never raise, and buffers never pass their caps."""
    obs = Observer(max_line_bytes=LIMIT)
    for side, chunk in steps + [("C", b""), ("S", b"")]:
        (obs.feed_client if side == "C" else obs.feed_server)(chunk)
        assert obs.buffered <= 3 * LIMIT + 16 + MAX_REPLY_LINES * TEXT_CAP
        assert obs.state.pending <= PENDING_CAP
        tls = obs._tls
        if tls is not None:
            assert tls.buffered_bytes <= tls.max_handshake_bytes + 16
        for value in obs.state.as_dict().values():
            assert not isinstance(value, int) or value <= 2**53
