"""The SMTP observer on hand-written transcripts: commands, replies, stages."""

from __future__ import annotations

import pytest
from helpers import bytewise, feed, names, smtp_session

from supervise_smtp.observer import Observer
from supervise_smtp.observer.events import (
    Banner,
    Capabilities,
    Command,
    DataEnd,
    DataRejected,
    DataStart,
    EarlyTalker,
    LineTooLong,
    MalformedReply,
    NotSmtp,
    PeerClosed,
    PipeliningViolation,
    Reply,
)
from supervise_smtp.observer.state import (
    ANY,
    BACK,
    PENDING_CAP,
    RESET,
    STAGES,
    TRANSITIONS,
    SessionState,
)

BANNER = ("S", b"220 mx.example.org ESMTP\r\n")
EHLO = [("C", b"EHLO c.example\r\n"), ("S", b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n")]
EHLO_NO_PIPELINING = [("C", b"EHLO c.example\r\n"), ("S", b"250-mx\r\n250 8BITMIME\r\n")]


def of(events, cls):
    return [e for e in events if type(e) is cls]


def test_observer_full_session_events_in_order():
    """A clean one-message session gives the expected event sequence and summary."""
    obs = Observer()
    events = feed(smtp_session(b"Subject: x\r\n\r\nhello\r\n"), obs)
    assert names(events) == [
        "Banner", "Command", "Reply", "Capabilities", "Command", "Reply", "Command", "Reply",
        "Command", "Reply", "DataStart", "DataEnd", "Reply", "Command", "Reply",
        "PeerClosed", "PeerClosed",
    ]
    st = obs.state
    assert st.quit_answered and st.messages == 1 and st.messages_queued == 1
    assert st.sent == {"EHLO": 1, "MAIL": 1, "RCPT": 1, "DATA": 1, "QUIT": 1}
    assert st.accepted["DATA_END"] == 1
    assert st.last_reply_code == 221 and st.stage == "quit"
    end = of(events, DataEnd)[0]
    assert (end.lines, end.wire_bytes, end.size, end.qmail_size) == (4, 26, 23, 19)


def test_observer_banner_multiline_and_enhanced_code():
    """A multiline banner is one Banner; an enhanced status code is parsed from replies."""
    events = feed([("S", b"220-mx.example.org\r\n220 ready\r\n"), ("C", b"MAIL FROM:<a@b>\r\n"),
                   ("S", b"530 5.7.0 Must issue a STARTTLS command first\r\n")])
    assert of(events, Banner) == [Banner(code=220, enhanced=None,
                                         text=b"mx.example.org\nready", truncated=False)]
    reply = of(events, Reply)[0]
    assert (reply.code, reply.enhanced, reply.command) == (530, "5.7.0", "MAIL")


def test_observer_ehlo_capabilities_parsed():
    """The EHLO reply's keywords become a Capabilities event and state flags."""
    obs = Observer()
    events = feed([BANNER, ("C", b"EHLO x\r\n"), ("S", b"250-mx greets x\r\n250-PIPELINING\r\n"
                   b"250-SIZE 10485760\r\n250-STARTTLS\r\n250-AUTH LOGIN PLAIN CRAM-MD5\r\n"
                   b"250-AUTH=LOGIN\r\n250-CHUNKING\r\n250 8BITMIME\r\n")], obs)
    caps = of(events, Capabilities)[0]
    assert caps == Capabilities(
        pipelining=True, size=10485760, starttls=True, auth=b"LOGIN PLAIN CRAM-MD5",
        chunking=True, eightbitmime=True, smtputf8=False,
        keywords=b"PIPELINING SIZE STARTTLS AUTH AUTH=LOGIN CHUNKING 8BITMIME", truncated=False)
    assert obs.state.pipelining and obs.state.starttls_offered and obs.state.size_limit == 10485760


@pytest.mark.parametrize(("line", "verb", "address", "params"), [
    (b"MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME", "MAIL", b"a@example.com",
     b"SIZE=1000 BODY=8BITMIME"),
    (b"mail from: <a@example.com>", "MAIL", b"a@example.com", None),
    (b"MAIL FROM:<>", "MAIL", b"", None),
    (b"RCPT TO:<postmaster>", "RCPT", b"postmaster", None),
    (b"RCPT TO:b@example.org NOTIFY=NEVER", "RCPT", b"b@example.org", b"NOTIFY=NEVER"),
    (b"RCPT <b@example.org>", "RCPT", None, None),
    (b"XYZZY plugh", "UNKNOWN", None, None),
    (b"\x16\x03\x01binary", "UNKNOWN", None, None),
    (b"noop", "NOOP", None, None),
], ids=["mail-params", "mail-lower-space", "null-sender", "rcpt-postmaster", "rcpt-no-brackets",
        "rcpt-malformed", "unknown", "binary", "noop-lower"])
def test_observer_command_parsed(line, verb, address, params):
    """Command lines give the verb, address and ESMTP parameters."""
    events = feed([BANNER, ("C", line + b"\r\n")])
    cmd = of(events, Command)[0]
    assert (cmd.verb, cmd.address, cmd.params) == (verb, address, params)
    if verb == "UNKNOWN":  # the first word only, never the rest of the line
        assert cmd.args == line.split(b" ")[0] and cmd.line_bytes is None


@pytest.mark.parametrize(("steps", "stage"), [
    ([], "connect"),
    ([BANNER], "banner"),
    ([BANNER, *EHLO], "ehlo"),
    ([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\n")], "mail"),
    ([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")], "rcpt"),
    ([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")], "data"),
    ([BANNER, *EHLO, ("C", b"DATA\r\n"), ("S", b"354 go\r\n"), ("C", b"x")], "data_body"),
    ([BANNER, *EHLO, ("C", b"DATA\r\n"), ("S", b"354 go\r\n"), ("C", b"x\r\n.\r\n")],
     "data_end"),
    ([BANNER, *EHLO, ("C", b"DATA\r\n"), ("S", b"354 go\r\n"), ("C", b"x\r\n.\r\n"),
      ("S", b"250 ok\r\n")], "data_end"),
    ([BANNER, ("C", b"EHLO c\r\n"), ("S", b"250-mx\r\n250 CHUNKING\r\n"),
      ("C", b"BDAT 3\r\nabc")], "bdat"),
    ([BANNER, *EHLO, ("C", b"STARTTLS\r\n")], "starttls"),
    ([BANNER, *EHLO, ("C", b"STARTTLS\r\n"), ("S", b"454 no TLS\r\n")], "ehlo"),
    ([BANNER, *EHLO, ("C", b"AUTH LOGIN\r\n")], "auth"),
    ([BANNER, *EHLO, ("C", b"AUTH LOGIN\r\n"), ("S", b"504 no\r\n")], "ehlo"),
    ([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\nRSET\r\n")], "ehlo"),
    ([BANNER, *EHLO, ("C", b"NOOP\r\nVRFY x\r\n")], "ehlo"),
    ([BANNER, *EHLO, ("C", b"QUIT\r\n")], "quit"),
    ([BANNER, ("C", b"MAIL FROM:<a@b>\r\nRSET\r\n")], "banner"),
    ([("C", b"RSET\r\n")], "connect"),
    ([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\n"), ("S", b"250 ok\r\n"),
      ("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"), ("C", b"dXNlcg==\r\n"),
      ("S", b"535 no\r\n")], "mail"),
    ([("C", b"\x16\x03\x01\x00\x01z"), ("S", b"\x16\x03\x03\x00\x01z")], "tls"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_observer_stage_follows_protocol(steps, stage):
    """The stage names the last protocol step the client reached."""
    obs = Observer(tls_factory=lambda: _FakeTLS())
    feed(steps, obs)
    assert obs.stage == stage
    assert stage in STAGES


def test_observer_pipelined_replies_matched_in_order():
    """With PIPELINING, replies are matched to the queued commands in FIFO order."""
    events = feed([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n"
                                        b"DATA\r\n"),
                   ("S", b"250 ok\r\n250 ok\r\n553 no\r\n354 go\r\n")])
    replies = [(r.code, r.command) for r in of(events, Reply)][1:]
    assert replies == [(250, "MAIL"), (250, "RCPT"), (553, "RCPT"), (354, "DATA")]
    assert not of(events, PipeliningViolation)
    assert [c.pipelined for c in of(events, Command)][1:] == [False, True, True, True]


@pytest.mark.parametrize(("steps", "kinds"), [
    ([BANNER, *EHLO_NO_PIPELINING, ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")],
     ["unadvertised"]),
    ([BANNER, ("C", b"EHLO x\r\nMAIL FROM:<a@b>\r\n")], ["unadvertised"]),
    ([BANNER, *EHLO, ("C", b"NOOP\r\nMAIL FROM:<a@b>\r\n")], ["after_noop"]),
    ([BANNER, *EHLO, ("C", b"DATA\r\nSubject: x\r\n")], ["after_data"]),
    ([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")], []),
], ids=["no-pipelining", "before-ehlo-reply", "after-noop", "after-data", "allowed"])
def test_observer_pipelining_violation_reported(steps, kinds):
    """Commands sent too early are PipeliningViolation events, never exceptions."""
    events = feed(steps)
    assert [v.kind for v in of(events, PipeliningViolation)] == kinds


def test_observer_bytes_after_data_become_body_on_354():
    """Body bytes sent behind DATA are held, then read as body once the 354 comes."""
    events = feed([BANNER, *EHLO, ("C", b"DATA\r\nhello\r\n.\r\n"), ("S", b"354 go\r\n"),
                   ("S", b"250 ok\r\n")])
    assert names(events)[-6:] == ["Command", "PipeliningViolation", "Reply", "DataStart",
                                  "DataEnd", "Reply"]
    end = of(events, DataEnd)[0]
    assert end.lines == 1 and end.wire_bytes == 10
    assert of(events, Reply)[-1].command == "DATA_END"


def test_observer_bytes_after_refused_data_are_commands():
    """Bytes held behind a refused DATA are parsed as commands, as the server reads them."""
    events = feed([BANNER, *EHLO, ("C", b"DATA\r\nQUIT\r\n"), ("S", b"503 MAIL first\r\n"),
                   ("S", b"221 bye\r\n")])
    assert [c.verb for c in of(events, Command)] == ["EHLO", "DATA", "QUIT"]
    assert of(events, Reply)[-1].command == "QUIT"
    assert not of(events, DataStart)


def test_observer_early_talker_flagged():
    """Client bytes before the banner give one EarlyTalker; the commands still count."""
    obs = Observer()
    events = feed([("C", b"EHLO x\r\n"), BANNER, ("S", b"250 mx\r\n")], obs)
    assert names(events)[:2] == ["EarlyTalker", "Command"]
    assert of(events, EarlyTalker) == [EarlyTalker()]
    assert of(events, Reply)[0].command == "EHLO" and obs.state.early_talker


def test_observer_qmail_bare_lf_reject_tied_to_line():
    """qmail-smtpd's mid-body 451 is a DataRejected with the first bare LF line and count."""
    body = b"".join(b"line %d\r\n" % i for i in range(1, 12)) + b"bare\nlf\nagain\nmore"
    obs = Observer()
    events = feed([BANNER, *EHLO, ("C", b"MAIL FROM:<a@b>\r\n"), ("S", b"250 ok\r\n"),
                   ("C", b"RCPT TO:<c@d>\r\n"), ("S", b"250 ok\r\n"), ("C", b"DATA\r\n"),
                   ("S", b"354 go ahead\r\n"), ("C", body),
                   ("S", b"451 See https://cr.yp.to/docs/smtplf.html.\r\n"), ("S", b""),
                   ("C", b"")], obs)
    rejected = of(events, DataRejected)[0]
    assert (rejected.code, rejected.in_stage) == (451, "data_body")
    assert (rejected.bare_lf_first_line, rejected.bare_lf_count) == (12, 3)
    assert rejected.text == b"See https://cr.yp.to/docs/smtplf.html."
    reply = of(events, Reply)[-1]
    assert (reply.command, reply.in_stage) == (None, "data_body")
    assert obs.state.data_rejected == rejected
    closed = of(events, PeerClosed)
    assert [(c.peer, c.stage) for c in closed] == [("server", "data_body"),
                                                    ("client", "data_body")]


def test_observer_bdat_chunks_counted():
    """BDAT chunks are framed by their size; BDAT LAST ends the message."""
    obs = Observer()
    events = feed([BANNER, ("C", b"EHLO x\r\n"),
                   ("S", b"250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n"),
                   ("C", b"BDAT 5\r\nab\ncdBDAT 3 LAST\r\nxyzQUIT\r\n"),
                   ("S", b"250 5 octets\r\n250 queued\r\n221 bye\r\n")], obs)
    assert names(of(events, DataStart)) == ["DataStart"]
    end = of(events, DataEnd)[0]
    assert (end.method, end.wire_bytes, end.chunks, end.bare_lf_count) == ("bdat", 8, 2, 1)
    assert [c.verb for c in of(events, Command)] == ["EHLO", "BDAT", "BDAT", "QUIT"]
    assert obs.state.messages_queued == 1 and obs.state.quit_answered


def test_observer_unsolicited_and_malformed_replies():
    """A reply with nothing pending is unsolicited; a non-reply line is MalformedReply."""
    obs = Observer()
    events = feed([BANNER, ("S", b"421 timeout\r\nHTTP/1.0 200 OK\r\n")], obs)
    assert of(events, Reply)[0].command is None
    assert of(events, MalformedReply) == [MalformedReply(text=b"HTTP/1.0 200 OK", truncated=False)]
    assert obs.state.unsolicited_replies == 1


def test_observer_line_too_long_cut_and_bounded():
    """A line past max_line_bytes gives LineTooLong once; the buffer never passes the cap."""
    obs = Observer(max_line_bytes=64)
    events = []
    events += obs.feed_server(b"220 mx\r\n")
    for _ in range(100):
        events += obs.feed_client(b"A" * 50)
        assert obs.buffered <= 64
    events += obs.feed_client(b"\r\nNOOP\r\n")
    assert names(events) == ["Banner", "LineTooLong", "Command", "PipeliningViolation",
                             "Command"]
    long_cmd = of(events, Command)[0]
    assert long_cmd.truncated and long_cmd.verb == "UNKNOWN"
    assert of(events, LineTooLong) == [LineTooLong(direction="client", limit=64)]


def test_observer_text_fields_bounded():
    """Client and server text in events is cut to 512 bytes with truncated=True."""
    events = feed([("S", b"220 " + b"x" * 2000 + b"\r\n"), ("C", b"VRFY " + b"y" * 2000 + b"\r\n")])
    assert len(of(events, Banner)[0].text) == 512 and of(events, Banner)[0].truncated
    cmd = of(events, Command)[0]
    assert len(cmd.args) == 512 and cmd.truncated


def test_observer_pending_fifo_bounded():
    """Past 1000 unanswered different commands whose replies matter, the rest is counted."""
    obs = Observer()
    feed([BANNER, *EHLO, ("C", b"".join(b"EHLO h%d\r\n" % n for n in range(1500)))], obs)
    assert obs.state.pending == PENDING_CAP and obs.state.pending_dropped == 500


def test_observer_pending_flood_stays_in_step():
    """1500 NOOPs and 1500 RCPTs pipelined before any reply, then DATA: bounded, and the
    354 and the end of data's 250 still meet DATA and the message (queued, not lost)."""
    obs = Observer()
    rcpts = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % n for n in range(1500))
    events = feed([BANNER, *EHLO, ("C", b"MAIL FROM:<a@example.com>\r\n" + b"NOOP\r\n" * 1500
                                    + rcpts + b"DATA\r\n")], obs)
    assert obs.state.pending <= PENDING_CAP and obs.state.pending_dropped == 0
    events += feed([("S", b"250 ok\r\n" * 3001 + b"354 go ahead\r\n"),
                    ("C", b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n"),
                    ("S", b"250 ok 1 qp 2\r\n221 bye\r\n")], obs)
    assert names(events).count("DataEnd") == 1
    assert [(r.command, r.code) for r in of(events, Reply)][-3:] == [
        ("DATA", 354), ("DATA_END", 250), ("QUIT", 221)]
    assert obs.state.messages_queued == 1 and obs.state.quit_answered
    assert obs.state.sent["NOOP"] == obs.state.accepted["NOOP"] == 1500


def test_observer_eof_reports_partial_line_length_only():
    """EOF with an unterminated line reports its length, never its content."""
    events = feed([BANNER, ("C", b"MAIL FROM:<secret"), ("C", b"")])
    assert of(events, PeerClosed) == [PeerClosed(peer="client", stage="banner", pending=0,
                                                 partial_bytes=17)]


def test_observer_bytewise_equals_whole_on_session():
    """Feeding a session byte by byte gives the same events as whole steps."""
    steps = smtp_session(b"a\r\n..b\r\nbare\nlf\r\n")
    assert feed(steps, split=bytewise) == feed(steps)


def test_observer_transition_table_names_only_stages():
    """TRANSITIONS moves from and to stages only (or ANY, BACK, RESET), each stage named once."""
    assert len(set(STAGES)) == len(STAGES)
    for (stage, event), target in TRANSITIONS.items():
        assert stage in STAGES or stage == ANY, stage
        assert target in STAGES or target in (BACK, RESET), target
        assert event not in STAGES, event  # verbs and EV_* steps, never a stage
    reached = set(TRANSITIONS.values()) - {BACK, RESET}
    assert reached | {"connect"} == set(STAGES)


def test_observer_stages_are_the_verdicts_stages():
    """diagnose names client_lost_after_<stage> after the observer's stages (all but quit)."""
    from supervise_smtp.session.diagnose import STAGES as VERDICT_STAGES
    from supervise_smtp.session.diagnose import VERDICTS

    assert VERDICT_STAGES == tuple(s for s in STAGES if s != "quit")
    assert [v for v in VERDICTS if v.startswith("client_lost_after_")] == [
        "client_lost_after_" + s for s in (
            "connect", "banner", "ehlo", "mail", "rcpt", "data", "data_body", "data_end",
            "bdat", "starttls", "tls", "auth")]


def test_observer_state_repr_has_every_field():
    """The state summary is a plain object whose repr lists its fields."""
    text = repr(SessionState())
    assert text.startswith("SessionState(stage='connect'")
    assert "quit_answered=False" in text


class _FakeTLS:
    """Stand-in TLS parser: records what it is fed."""

    def __init__(self) -> None:
        self.client: list[bytes] = []
        self.server: list[bytes] = []

    def feed_client(self, data: bytes) -> list:
        self.client.append(data)
        return []

    def feed_server(self, data: bytes) -> list:
        self.server.append(data)
        return []


# Log keys are an API: a rename must show up here first.
EVENT_KEYS = {
    "auth_result": "mechanism user user_truncated result code enhanced",
    "banner": "code enhanced text truncated",
    "bare_cr": "message line offset",
    "bare_lf": "message line offset",
    "capabilities": (
        "pipelining size starttls auth chunking eightbitmime smtputf8 "
        "keywords truncated"),
    "command": "verb args address params pipelined truncated line_bytes",
    "data_end": (
        "message method wire_bytes size qmail_size lines dot_stuffed "
        "bare_lf_count bare_lf_first_line bare_cr_count bare_cr_first_line "
        "nul_count nul_first_line long_line_count long_line_first_line "
        "eight_bit_count eight_bit_first_line smuggling_count chunks"),
    "data_rejected": (
        "code enhanced text truncated in_stage message body_bytes body_lines "
        "bare_lf_count bare_lf_first_line bare_cr_count nul_count"),
    "data_start": "message method",
    "early_talker": "",
    "not_smtp": "unknown_lines",
    "line_too_long": "direction limit",
    "long_line": "message line offset",
    "malformed_reply": "text truncated",
    "nul_byte": "message line offset",
    "peer_closed": "peer stage pending partial_bytes",
    "pipelining_violation": "kind verb pending",
    "reject": "code enhanced text command arg in_stage truncated",
    "reply": "code enhanced text lines command in_stage truncated",
    "smuggling": "message variant line offset",
    "starttls": "implicit",
    "starttls_injection": "length",
}


def test_observer_event_names_and_keys_snapshot():
    """Every observer event's name and keys match the released snapshot."""
    from supervise_smtp.observer import events

    got = {getattr(events, n).NAME: getattr(events, n).__slots__
           for n in events.__all__ if n != "Event"}
    assert got == {name: tuple(keys.split()) for name, keys in EVENT_KEYS.items()}


def test_observer_not_smtp_after_twenty_unknown_lines():
    """HTTP or garbage: one NotSmtp after 20 unknown lines; from there unknown lines and
    their replies make no events and take one pending entry, however many they are."""
    obs = Observer()
    obs.feed_server(b"220 mx ESMTP\r\n")
    junk = b"GET / HTTP/1.1\r\n" + b"X-Header: value\r\n" * 18
    events = obs.feed_client(junk)
    assert not of(events, NotSmtp) and len(of(events, Command)) == 19
    events = obs.feed_client(b"Accept: */*\r\n" + b"\n" * 5000)
    assert events == [NotSmtp(unknown_lines=20)]  # the 20th line; the rest is only counted
    assert obs.state.not_smtp and obs.state.sent == {"UNKNOWN": 5020}
    assert obs.state.pending == 20  # 19 answered one by one, then one run of 5001
    events = obs.feed_server(b"502 unimplemented (#5.5.1)\r\n" * 5020)
    assert len(of(events, Reply)) == 19 and not obs.waiting
    assert (obs.state.rejects, obs.state.rejects_unlogged) == (5020, 5010)
    assert obs.state.server_bytes == 14 + 28 * 5020
    assert names(obs.close_client() + obs.close_server()) == ["PeerClosed", "PeerClosed"]


def test_observer_not_smtp_never_hides_a_message_the_server_accepted():
    """20 junk lines (502 each), then a real session: the message is seen and queued."""
    obs = Observer()
    steps = [("S", b"220 mx ESMTP\r\n"), ("C", b"junk\r\n" * 20),
             ("S", b"502 unimplemented (#5.5.1)\r\n" * 20)]
    steps += smtp_session(b"Subject: x\r\n\r\nhi\r\n")[1:]
    events = feed(steps, obs)
    assert of(events, NotSmtp) == [NotSmtp(unknown_lines=20)]
    st = obs.state
    assert not st.not_smtp and st.messages == 1 and st.messages_queued == 1
    assert st.quit_answered and len(of(events, DataEnd)) == 1


def test_observer_not_smtp_needs_unknown_lines_in_a_row():
    """A known command resets the count: a clumsy but real client stays observed."""
    obs = Observer()
    obs.feed_server(b"220 mx ESMTP\r\n")
    for _ in range(5):
        events = obs.feed_client(b"XFOO\r\n" * 19 + b"NOOP\r\n")
        assert not of(events, NotSmtp)
    assert not obs.state.not_smtp and obs.state.sent == {"UNKNOWN": 95, "NOOP": 5}
