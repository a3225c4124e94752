"""AUTH: mechanism, user and result are reported; no secret is ever kept."""

from __future__ import annotations

import base64

import pytest
from helpers import bytewise, feed

from supervise_smtp.observer import Observer
from supervise_smtp.observer.events import AuthResult, Command, Reject

SECRET = b"s3cr3t-Pa55word!"
USER = b"alice@example.org"
HEAD = [
    ("S", b"220 mx ESMTP\r\n"),
    ("C", b"EHLO c\r\n"),
    ("S", b"250-mx\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 PIPELINING\r\n"),
]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


PLAIN = b64(b"\x00" + USER + b"\x00" + SECRET)
CRAM = b64(USER + b" " + b"0123456789abcdef" + SECRET.hex().encode())

EXCHANGES = {
    "plain-initial": [("C", b"AUTH PLAIN " + PLAIN + b"\r\n"), ("S", b"235 2.7.0 ok\r\n")],
    "plain-after-334": [("C", b"AUTH PLAIN\r\n"), ("S", b"334 \r\n"), ("C", PLAIN + b"\r\n"),
                        ("S", b"235 2.7.0 ok\r\n")],
    "login": [("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
              ("C", b64(USER) + b"\r\n"), ("S", b"334 UGFzc3dvcmQ6\r\n"),
              ("C", b64(SECRET) + b"\r\n"), ("S", b"235 ok\r\n")],
    "login-initial": [("C", b"AUTH LOGIN " + b64(USER) + b"\r\n"), ("S", b"334 UGFzc3dvcmQ6\r\n"),
                      ("C", b64(SECRET) + b"\r\n"), ("S", b"235 ok\r\n")],
    "cram-md5": [("C", b"AUTH CRAM-MD5\r\n"), ("S", b"334 PDEyMzQ1QG14Pg==\r\n"),
                 ("C", CRAM + b"\r\n"), ("S", b"235 ok\r\n")],
    "plain-failed": [("C", b"AUTH PLAIN " + PLAIN + b"\r\n"),
                     ("S", b"535 5.7.8 authentication failed\r\n")],
}
RESULTS = {
    "plain-initial": ("PLAIN", "ok", 235),
    "plain-after-334": ("PLAIN", "ok", 235),
    "login": ("LOGIN", "ok", 235),
    "login-initial": ("LOGIN", "ok", 235),
    "cram-md5": ("CRAM-MD5", "ok", 235),
    "plain-failed": ("PLAIN", "failed", 535),
}


@pytest.mark.parametrize("name", EXCHANGES)
def test_auth_result_reports_mechanism_user_and_result(name):
    """AuthResult carries the mechanism, the user name and ok/failed."""
    obs = Observer()
    events = feed([*HEAD, *EXCHANGES[name], ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n")], obs)
    result = [e for e in events if isinstance(e, AuthResult)]
    mechanism, outcome, code = RESULTS[name]
    assert result == [AuthResult(mechanism=mechanism, user=USER, user_truncated=False,
                                 result=outcome, code=code, enhanced=result[0].enhanced)]
    assert (obs.state.auth_user, obs.state.auth_result) == (USER, outcome)
    assert [c.verb for c in events if isinstance(c, Command)] == ["EHLO", "AUTH", "QUIT"]
    assert obs.stage == "quit" and obs.state.quit_answered


@pytest.mark.parametrize("name", EXCHANGES)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_auth_secret_never_in_events_or_state(name, split):
    """Neither the password nor any base64 credential line appears in events or state."""
    obs = Observer()
    steps = [*HEAD, *EXCHANGES[name], ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"), ("C", b"")]
    events = feed(steps, obs, split=bytewise if split == "bytewise" else (lambda d: [d]))
    dump = repr(events) + repr(obs.state) + repr(vars(obs))
    for secret in (SECRET, b64(SECRET), PLAIN, CRAM, SECRET.hex().encode()):
        assert secret.decode() not in dump
        assert repr(secret)[2:-1] not in dump


def test_auth_cancelled_and_user_bounded():
    """A '*' answer is a cancelled exchange; a huge user name is cut to 256 bytes."""
    long_user = b"u" * 1000
    events = feed([*HEAD, ("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
                   ("C", b64(long_user) + b"\r\n"), ("S", b"334 UGFzc3dvcmQ6\r\n"),
                   ("C", b"*\r\n"), ("S", b"501 cancelled\r\n")])
    result = [e for e in events if isinstance(e, AuthResult)][0]
    assert (result.result, result.code, result.user_truncated) == ("cancelled", 501, True)
    assert result.user == b"u" * 256


def test_auth_unknown_mechanism_refused_then_commands_resume():
    """A refused AUTH ends the exchange; the next line is a command again."""
    obs = Observer()
    events = feed([*HEAD, ("C", b"AUTH GSSAPI\r\n"), ("S", b"504 unrecognized\r\n"),
                   ("C", b"MAIL FROM:<a@b>\r\n"), ("S", b"250 ok\r\n")], obs)
    result = [e for e in events if isinstance(e, AuthResult)][0]
    assert (result.mechanism, result.user, result.result) == ("GSSAPI", None, "failed")
    assert [c.verb for c in events if isinstance(c, Command)] == ["EHLO", "AUTH", "MAIL"]
    assert obs.stage == "mail"


# qmail-smtpd without an AUTH patch answers AUTH, and then each credential
# line, with its unknown-command reply (qmail-smtpd.c: err_unimpl).
UNIMPL = b"502 unimplemented (#5.5.1)\r\n"
REFUSED = {
    "login": [b"AUTH LOGIN", b64(USER), b64(SECRET)],
    "login-initial": [b"AUTH LOGIN " + b64(USER), b64(SECRET)],
    "plain": [b"AUTH PLAIN", PLAIN],
    "plain-two-lines": [b"AUTH PLAIN", PLAIN, PLAIN + b" x"],
}


def _refused(lines, pipelined):
    wire = [line + b"\r\n" for line in lines]
    if pipelined:
        return [("C", b"".join(wire)), ("S", UNIMPL * len(wire))]
    return [step for line in wire for step in (("C", line), ("S", UNIMPL))]


@pytest.mark.parametrize("name", REFUSED)
@pytest.mark.parametrize("pipelined", [False, True], ids=["lockstep", "pipelined"])
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_auth_refused_credentials_never_in_events(name, pipelined, split):
    """Credentials sent to a server that refused AUTH: each line shows only its length."""
    obs = Observer()
    steps = [*HEAD, *_refused(REFUSED[name], pipelined), ("C", b"MAIL FROM:<a@b>\r\n"),
             ("S", b"250 ok\r\n"), ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"), ("C", b"")]
    events = feed(steps, obs, split=bytewise if split == "bytewise" else (lambda d: [d]))
    dump = repr(events) + repr(obs.state) + repr(vars(obs))
    for secret in (b64(USER), b64(SECRET), PLAIN):
        assert secret.decode() not in dump
    commands = [c for c in events if isinstance(c, Command)]
    assert [c.verb for c in commands][-2:] == ["MAIL", "QUIT"]  # commands again after
    for unknown in (c for c in commands if c.verb == "UNKNOWN"):
        assert unknown.args is None and unknown.line_bytes > 0
    assert all(r.arg in (None, b"LOGIN", b"PLAIN") for r in events if isinstance(r, Reject))
