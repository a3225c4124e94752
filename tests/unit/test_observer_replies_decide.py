"""The server's reply decides what the client's bytes were.

Each transcript here is what the real qmail-smtpd (and tests/fakes/
fake-qmail-smtpd, checked in test_fakes.py) answers to a client shaping its
bytes to fool the observer.  The observer must count what qmail-smtpd counts
and never call a message queued unless the reply to its end accepted it.
"""

from __future__ import annotations

import pytest
from helpers import bytewise, cut_at, feed, smtp_session

from supervise_smtp.observer import Observer
from supervise_smtp.observer.events import (
    Command,
    DataEnd,
    DataStart,
    EarlyTalker,
    Reject,
    Reply,
    StartTLS,
)
from supervise_smtp.observer.protocol import MAX_REJECT_EVENTS

BANNER = ("S", b"220 mx ESMTP\r\n")
EHLO = [("C", b"EHLO c\r\n"), ("S", b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n")]
ENVELOPE = [("C", b"MAIL FROM:<a@example.com>\r\n"), ("S", b"250 ok\r\n"),
            ("C", b"RCPT TO:<b@example.org>\r\n"), ("S", b"250 ok\r\n")]
MESSAGE = [("C", b"DATA\r\n"), ("S", b"354 go ahead\r\n"),
           ("C", b"Subject: x\r\n\r\nhello\r\n.\r\n"), ("S", b"250 ok 1732537200 qp 42\r\n")]
QUIT = [("C", b"QUIT\r\n"), ("S", b"221 mx\r\n"), ("C", b""), ("S", b"")]
UNIMPL = b"502 unimplemented (#5.5.1)\r\n"


def of(events, cls):
    return [e for e in events if type(e) is cls]


def run(steps, split=None):
    obs = Observer()
    events = feed(steps, obs, split=split) if split else feed(steps, obs)
    return obs, events


@pytest.mark.parametrize("line", [b"DATA\0", b"DATA\0junk", b"data", b"DaTa   ",
                                  b"DATA\0 \t x"])
def test_command_line_cut_at_nul_like_qmail(line):
    """commands.c reads a C string: `DATA\\0...` is DATA, and the message is queued."""
    obs, events = run([BANNER, *EHLO, *ENVELOPE, ("C", line + b"\r\n"), *MESSAGE[1:], *QUIT])
    assert [c.verb for c in of(events, Command)][-2:] == ["DATA", "QUIT"]
    assert obs.state.messages == 1 and obs.state.messages_queued == 1
    assert obs.state.accepted["DATA_END"] == 1


@pytest.mark.parametrize("line", [b"DATA\t", b"DATA\r", b"XDATA", b"\0DATA"])
def test_not_data_when_qmail_does_not_read_data(line):
    """A tab or CR after the verb, or a NUL before it: qmail-smtpd answers 502."""
    obs, events = run([BANNER, *EHLO, *ENVELOPE, ("C", line + b"\r\n"), ("S", UNIMPL), *QUIT])
    assert of(events, Command)[-2].verb == "UNKNOWN"
    assert obs.state.messages == 0


@pytest.mark.parametrize("last", [b"", b" LAST"])
def test_bdat_without_chunking_is_a_refused_command(last):
    """qmail-smtpd offers no CHUNKING and answers BDAT with 502: the bytes after it are
    commands, so the message that follows is seen, and no BDAT message ever was."""
    chunk = b"MAIL FROM:<x@y>\r\n"  # looks like chunk bytes to a naive observer
    obs, events = run([BANNER, *EHLO, ("C", b"BDAT 100000" + last + b"\r\n" + chunk),
                       ("S", UNIMPL + b"250 ok\r\n"), *ENVELOPE, *MESSAGE, *QUIT])
    st = obs.state
    assert [e.method for e in of(events, DataStart)] == ["data"]
    assert st.messages == 1 and st.messages_queued == 1
    assert [c.verb for c in of(events, Command)][:3] == ["EHLO", "BDAT", "MAIL"]
    assert not obs.awaiting_data_reply and "BDAT_LAST" not in st.rejected
    assert st.rejected == {"BDAT": 1}


def test_bdat_with_chunking_frames_the_chunk_and_awaits_its_reply():
    """With CHUNKING offered, BDAT LAST's reply is due only once the chunk is read."""
    obs = Observer()
    feed([BANNER, ("C", b"EHLO c\r\n"), ("S", b"250-mx\r\n250 CHUNKING\r\n"), *ENVELOPE], obs)
    obs.feed_client(b"BDAT 10 LAST\r\n12345")
    assert not obs.awaiting_data_reply
    obs.feed_client(b"67890")
    assert obs.awaiting_data_reply
    obs.feed_server(b"250 ok queued\r\n")
    assert not obs.awaiting_data_reply and obs.state.messages_queued == 1


def test_bdat_last_out_of_sequence_is_not_a_queue_reply():
    """503 to BDAT LAST (no MAIL): a sequence error, not a message refused by a queue."""
    obs, events = run([BANNER, ("C", b"EHLO c\r\n"), ("S", b"250-mx\r\n250 CHUNKING\r\n"),
                       ("C", b"BDAT 3 LAST\r\nabc"), ("S", b"503 5.5.1 MAIL first\r\n"),
                       *QUIT])
    assert [r.command for r in of(events, Reply)][1:] == ["BDAT", "QUIT"]
    assert obs.state.end_reply_offset is None


def test_first_byte_0x16_then_plain_smtp_is_not_tls():
    """A 0x16 before the banner is SMTPS only if the server answers in TLS: qmail-smtpd
    sends its banner, answers the line 502, and the session goes on in the clear."""
    obs, events = run([("C", b"\x16junk\r\n"), BANNER, ("S", UNIMPL), *EHLO, *ENVELOPE,
                       *MESSAGE, *QUIT])
    st = obs.state
    assert not of(events, StartTLS) and of(events, EarlyTalker)
    assert not st.tls_active and st.early_talker
    assert st.messages_queued == 1 and st.quit_answered
    assert [c.verb for c in of(events, Command)][0] == "UNKNOWN"


def test_first_byte_0x16_answered_in_tls_is_smtps():
    """The server's first byte a TLS record: SMTPS, the held hello goes to the TLS parser."""
    obs, events = run([("C", b"\x16\x03\x01\x00\x05hello"), ("S", b"\x16\x03\x03\x00\x01x")])
    assert of(events, StartTLS) == [StartTLS(implicit=True)]
    assert obs.state.tls_active and obs.state.tls_implicit


def test_first_byte_0x16_server_closes_silently():
    """A TLS hello the server closed on without a byte: not TLS, but noted."""
    obs, events = run([("C", b"\x16\x03\x01\x00\x05hello"), ("S", b""), ("C", b"")])
    assert not of(events, StartTLS) and not obs.state.tls_active
    assert obs.state.tls_unanswered


def test_starttls_is_tls_only_once_the_server_speaks_it():
    """220 to STARTTLS and a hello, but no TLS byte from the server: tls is not active."""
    caps = ("S", b"250-mx\r\n250 STARTTLS\r\n")
    obs, _ = run([BANNER, ("C", b"EHLO c\r\n"), caps, ("C", b"STARTTLS\r\n"),
                  ("S", b"220 go ahead\r\n"), ("C", b"\x16\x03\x01\x00\x00")])
    assert obs.stage == "tls" and not obs.state.tls_active
    obs.feed_server(b"\x16\x03\x03\x00\x00")
    assert obs.state.tls_active


def test_starttls_plain_line_then_tls_record_same_however_cut():
    """After the 220 to STARTTLS a plaintext line, then a TLS record: not TLS, in one
    chunk or split between the two (the first byte after the 220 decides, not a chunk's)."""
    head = [BANNER, ("C", b"EHLO x\r\n"), ("C", b"EHLO x\r\n"), ("C", b"STARTTLS\r\n"),
            ("S", b"250 ok\r\n"), ("S", b"250 ok\r\n")]
    tail = b"220 ready\r\n250 ok\r\n" + b"\x16\x03\x03\x00\x01z"
    whole, _ = run([*head, ("S", tail)])
    split, _ = run([*head, ("S", tail[:19]), ("S", tail[19:])])
    assert not whole.state.tls_active and not split.state.tls_active
    assert repr(whole.state) == repr(split.state)


def _refused_data_pipelined(lines: int):
    body = b"".join(b"line %d of a body nobody asked for\r\n" % i for i in range(lines))
    return [BANNER, *EHLO, ("C", b"DATA\r\n" + body + b".\r\nQUIT\r\n"),
            ("S", b"503 MAIL first (#5.5.1)\r\n" + UNIMPL * (lines + 1) + b"221 mx\r\n"),
            ("C", b""), ("S", b"")], body


@pytest.mark.parametrize("lines", [3, 3000])  # within the hold bound, and far past it
def test_refused_data_with_pipelined_body_is_commands(lines):
    """DATA refused (503), the body pipelined anyway: qmail reads each line as a command
    and answers 502; nothing is queued, and replies stay matched (QUIT answered)."""
    steps, body = _refused_data_pipelined(lines)
    assert lines < 10 or len(body) > 65536
    for split in (None, bytewise if lines < 10 else lambda d: cut_at(d, range(1, len(d), 777))):
        obs, events = run(steps, split)
        st = obs.state
        assert not of(events, DataStart) and st.messages == 0 and st.messages_queued == 0
        assert st.rejected["DATA"] == 1 and st.quit_answered
        assert st.last_reply_command == "QUIT" and not obs.waiting


def _pipelined_body(size: int, tail: bytes):
    body = b"".join(b"line %06d\r\n" % i for i in range(size // 13 + 1))
    return body, [BANNER, *EHLO, *ENVELOPE, ("C", b"DATA\r\n" + body + b".\r\n" + tail)]


@pytest.mark.parametrize("size", [1000, 200_000])
@pytest.mark.parametrize("tail", [b"", b"QUIT\r\n", b"RSET\r\nQU"])
def test_body_sent_before_its_354_is_exact_once_confirmed(size, tail):
    """A body streamed before the 354 (past the hold bound too) gives the same message
    as one sent after it; commands after its end still match their replies."""
    body, steps = _pipelined_body(size, tail)
    obs, events = run(steps + [("S", b"354 go ahead\r\n250 ok 1 qp 9\r\n")])
    ref, ref_events = run([BANNER, *EHLO, *ENVELOPE, ("C", b"DATA\r\n"), ("S", b"354 go\r\n"),
                           ("C", body + b".\r\n"), ("S", b"250 ok 1 qp 9\r\n")])
    assert of(events, DataEnd) == of(ref_events, DataEnd)
    assert obs.state.messages_queued == 1
    assert obs.state.end_reply_offset is not None
    if tail == b"QUIT\r\n":
        obs.feed_server(b"221 mx\r\n")
        assert obs.state.last_reply_command in ("QUIT", "UNSEEN") and not obs.waiting
    if tail.endswith(b"QU"):
        obs.feed_client(b"IT\r\n")
        obs.feed_server(b"250 flushed\r\n221 mx\r\n")
        assert not obs.waiting


def test_reject_events_name_the_command_and_address():
    """A 553 to RCPT is logged with the recipient; the accepted one only counted."""
    obs, events = run([BANNER, *EHLO, ("C", b"MAIL FROM:<a@example.com>\r\n"),
                       ("S", b"250 ok\r\n"), ("C", b"RCPT TO:<x@elsewhere.example>\r\n"),
                       ("S", b"553 sorry, that domain isn't in my list of allowed rcpthosts "
                             b"(#5.7.1)\r\n"),
                       ("C", b"RCPT TO:<b@example.org>\r\n"), ("S", b"250 ok\r\n"), *QUIT])
    assert of(events, Reject) == [Reject(
        code=553, enhanced=None,
        text=b"sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
        command="RCPT", arg=b"x@elsewhere.example", in_stage="rcpt", truncated=False)]
    assert obs.state.rejects == 1 and obs.state.rejects_unlogged == 0


def test_reject_never_carries_an_auth_secret():
    """AUTH PLAIN with its initial response refused: the mechanism only."""
    secret = b"AGFsaWNlAHMzY3JldA=="
    obs, events = run([BANNER, *EHLO, ("C", b"AUTH PLAIN " + secret + b"\r\n"),
                       ("S", b"535 5.7.8 authentication failed\r\n")])
    (reject,) = of(events, Reject)
    assert (reject.command, reject.arg, reject.enhanced) == ("AUTH", b"PLAIN", "5.7.8")
    assert secret not in repr(events).encode()


def test_reject_dictionary_attack_is_bounded():
    """1,000 refused RCPTs: the first few logged, all counted."""
    rcpts = b"".join(b"RCPT TO:<u%d@example.org>\r\n" % i for i in range(1000))
    obs, events = run([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\n"), ("S", b"250 ok\r\n"),
                       ("C", rcpts), ("S", b"553 no (#5.7.1)\r\n" * 1000)])
    assert len(of(events, Reject)) == MAX_REJECT_EVENTS
    assert (obs.state.rejects, obs.state.rejects_unlogged) == (1000, 1000 - MAX_REJECT_EVENTS)


def test_reject_not_doubled_by_data_rejected():
    """qmail-smtpd's 451 smtplf in the middle of a body is data_rejected, not a reject."""
    obs, events = run([BANNER, *EHLO, *ENVELOPE, ("C", b"DATA\r\n"), ("S", b"354 go\r\n"),
                       ("C", b"a\nb\r\n"),
                       ("S", b"451 See http://pobox.com/~djb/docs/smtplf.html.\r\n")])
    assert not of(events, Reject) and obs.state.data_rejected is not None


def test_end_reply_offset_is_where_the_reply_ends_in_the_server_stream():
    """The offset just past the 250 to '.', for reply_delivered."""
    steps = smtp_session(b"x\r\n")
    obs = Observer()
    upto = 0
    for side, data in steps:
        if side == "S":
            obs.feed_server(data)
            upto += len(data)
            if data.startswith(b"250 ok 1234"):
                assert obs.state.end_reply_offset == upto
        else:
            obs.feed_client(data)


def test_second_hold_after_a_refused_data_leaves_no_stale_count():
    """DATA refused, more than the hold bound pipelined, a second DATA in what was kept
    and answered 354: the uncounted bytes are not reported again at the client's EOF."""
    filler = b"x" * 200 + b"\r\n"
    held = b"DATA\r\n" + filler * 400  # the second DATA and a body past the 64 KiB bound
    obs = Observer()
    feed([BANNER, *EHLO, *ENVELOPE, ("C", b"RSET\r\nDATA\r\n" + held),
          ("S", b"250 flushed\r\n503 MAIL first (#5.5.1)\r\n354 go\r\n")],
         obs)
    events = obs.feed_client(b"\r\n.\r\n") + obs.feed_server(b"250 ok 1 qp 2\r\n")
    events += obs.close_client()
    closed = [e for e in events if type(e).__name__ == "PeerClosed"]
    assert closed and closed[0].partial_bytes == 0
