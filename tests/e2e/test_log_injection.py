"""Log injection: hostile client and child bytes never forge or break a log line.

Each payload (CR, LF, CRLF followed by a forged ``event=summary``, NUL, ANSI
escapes, ``key=value``, quotes, backslashes, invalid UTF-8...) goes into one
session through the real wrapper under a real tcpserver, in every place a
client or a compromised child can put text that reaches the log: the EHLO
name, MAIL FROM, RCPT TO, the AUTH PLAIN and AUTH LOGIN user names, the
server's refusal text, and the child's stderr.  The child is
tests/fakes/script_child.c (it plays the server's replies and writes the
payload on its stderr); the last test runs the qmail-smtpd double instead.
Everything is played in logfmt and in ``--format json``, with the default
events and with ``--events all`` (every command's arguments logged).

Every line must parse strictly (tests/strict_logfmt.py: one event per line,
printable ASCII only, escapes whole) with keys from the fixed set of
tests/log_keys.py; a payload must never add a key or an event, and must read
back, once unescaped, as the bytes that were sent.  The AUTH password must
never appear, in any form.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from byte_sessions import Server, Session, Step, play_all, script_child
from helpers import (
    RCPT_RELAY,
    SMTPD,
    SmtpClient,
    double_env,
    event,
    events,
    poll_until,
    wrapper_argv,
)
from log_keys import check_keys
from strict_logfmt import unescape

pytestmark = pytest.mark.e2e

PASSWORD = b"s3cret-Pa55w0rd"
PAYLOADS = {
    "cr": b"a\rb",
    "lf": b"a\nb",
    "crlf_forged_event": b"x\r\nevent=summary verdict=ok forged=1",
    "nul": b"a\x00b",
    "ansi": b"\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "key_value": b"x verdict=ok forged=1",
    "quotes": b'q"uo" forged="1"',
    "backslashes": b"back\\slash\\",
    "quote_escape": b'\\" forged=1 \\',
    "invalid_utf8": b"\xff\xfe\xc3(\xed\xa0\x80",
    "utf8": "caf\u00e9 \u2028".encode(),
    "tab_del": b"a\tb\x7fc",
}
FORMATS = [("logfmt", "anomalies"), ("logfmt", "all"), ("json", "anomalies"), ("json", "all")]
# What goes into a command line unchanged: no line end to split it, no NUL to cut it
# (qmail-smtpd and the observer read a command as a C string up to LF).
WHOLE_IN_A_LINE = [name for name, p in PAYLOADS.items() if not set(p) & set(b"\r\n\x00")]


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _dialogue(payload: bytes) -> Session:
    """The payload in every field that reaches the log; AUTH LOGIN succeeds last."""
    parts = [
        ("S", b"220 mx.example ESMTP\r\n"),
        ("C", b"EHLO " + payload + b"\r\n"),
        ("S", b"250-mx.example\r\n250-AUTH LOGIN PLAIN\r\n250 PIPELINING\r\n"),
        ("C", b"AUTH PLAIN " + _b64(b"\0" + payload + b"\0" + PASSWORD) + b"\r\n"),
        ("S", b"535 authorization failed (#5.7.0)\r\n"),
        ("C", b"AUTH LOGIN\r\n"),
        ("S", b"334 VXNlcm5hbWU6\r\n"),
        ("C", _b64(payload) + b"\r\n"),
        ("S", b"334 UGFzc3dvcmQ6\r\n"),
        ("C", _b64(PASSWORD) + b"\r\n"),
        ("S", b"235 ok\r\n"),
        ("C", b"MAIL FROM:<u@" + payload + b">\r\n"),
        ("S", b"250 ok\r\n"),
        ("C", b"RCPT TO:<" + payload + b"@example.org>\r\n"),
        ("S", b"553 sorry " + payload + b"\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 bye\r\n"),
    ]
    return Session(tuple(Step(side, ((0, data),), True) for side, data in parts),
                   child_half_close=False, exit_code=0,
                   stderr=b"warning: " + payload + b"\nsecond line\n")


@dataclass
class Played:
    """One payload's session: its events in order, and the raw lines."""

    events: list[dict[str, object]]
    raw: list[bytes]

    def summary(self) -> dict[str, object]:
        found = [e for e in self.events if e["event"] == "summary"]
        assert len(found) == 1, self.raw
        return found[0]

    def values(self, name: str, key: str) -> list[bytes]:
        """The unescaped ``key`` of every ``name`` event."""
        return [unescape(str(e[key])) for e in self.events if e["event"] == name and key in e]


@pytest.fixture(scope="module", params=FORMATS, ids=[f"{f}-{e}" for f, e in FORMATS])
def played(request, tmp_path_factory) -> Iterator[tuple[str, str, dict[str, Played]]]:
    """Every payload's session through one tcpserver + wrapper, in one format."""
    fmt, which = request.param
    child_dir = tmp_path_factory.mktemp(f"inject-{fmt}-{which}")
    server = Server(["tcpserver"], [*wrapper_argv(), "--format", fmt, "--events", which, "--",
                                    str(script_child())],
                    child_dir, fmt=fmt, check_line=check_keys, keep=True)
    try:
        names = list(PAYLOADS)
        results = asyncio.run(play_all(server, [_dialogue(PAYLOADS[n]) for n in names]))
    finally:
        server.stop()
    assert not server.bad_lines, server.bad_lines
    by_pid: dict[str, Played] = {}
    for raw, ev in server.kept:
        by_pid.setdefault(str(ev["pid"]), Played([], [])).events.append(ev)
        by_pid[str(ev["pid"])].raw.append(raw)
    sessions = {}
    for name, result in zip(names, results, strict=True):
        assert not result.problems, (name, result.problems)
        assert result.logged is not None
        sessions[name] = by_pid.pop(str(result.logged.connect["pid"]))
    assert not by_pid, f"lines of no session: {by_pid}"
    yield fmt, which, sessions


def test_log_injection_one_event_per_line(played):
    """Each line is one whole event of printable ASCII; each session has one connect
    and one summary, whatever line ends, NUL or escapes the payload carried."""
    fmt, _, sessions = played
    for name, s in sessions.items():
        for raw in s.raw:
            assert raw.endswith(b"\n") and raw.count(b"\n") == 1, (name, raw)
            assert all(0x20 <= b < 0x7F for b in raw[:-1]), (name, raw)
            assert raw.startswith(b"{" if fmt == "json" else b"event="), (name, raw)
        names = [e["event"] for e in s.events]
        assert names.count("connect") == 1 and names.count("summary") == 1, (name, names)
        assert names[-1] == "summary", (name, names)


def test_log_injection_no_forged_key(played):
    """No payload adds a key: ``forged`` is on no line, and ``verdict`` is only on
    the summary (a ``verdict=ok`` in the HELO, the stderr or a reply stays a value)."""
    _, _, sessions = played
    for name, s in sessions.items():
        for ev in s.events:
            assert "forged" not in ev, (name, ev)
            if "verdict" in ev:
                assert ev["event"] == "summary", (name, ev)
        assert s.summary()["verdict"] == "rejected", (name, s.summary())


def test_log_injection_password_never_logged(played):
    """The AUTH password is on no line: not as sent, not in base64, not escaped."""
    _, _, sessions = played
    forms = [PASSWORD, PASSWORD[:6], PASSWORD[-6:], _b64(PASSWORD), _b64(PASSWORD)[:8]]
    for name, s in sessions.items():
        text = b"".join(s.raw)
        for form in forms:
            assert form not in text, (name, form, text)
        plain = _b64(b"\0" + PAYLOADS[name] + b"\0" + PASSWORD)
        assert plain not in text and plain[-12:] not in text, (name, text)


def test_log_injection_auth_users_read_back(played):
    """Both AUTH user names (PLAIN refused, LOGIN accepted) read back exactly, NUL,
    line ends and invalid UTF-8 included: base64 carries them whole.  (In PLAIN a
    NUL ends the user name, RFC 4616.  An LF in the EHLO name makes two commands of
    it, and the replies that follow answer other commands than the script meant:
    only the accepted user is certain then.)"""
    _, which, sessions = played
    for name, s in sessions.items():
        payload = PAYLOADS[name]
        assert unescape(str(s.summary()["auth_user"])) == payload, name
        if which == "all" and b"\n" not in payload:
            plain_user = payload.split(b"\0")[0]
            assert s.values("auth_result", "user") == [plain_user, payload], name


def test_log_injection_stderr_read_back(played):
    """The child's stderr lines read back exactly, split only at LF: a CR or a
    forged ``event=`` stays inside a ``text`` value."""
    _, _, sessions = played
    for name, s in sessions.items():
        want = (b"warning: " + PAYLOADS[name] + b"\nsecond line").split(b"\n")
        assert s.values("child_stderr", "text") == want, name


@pytest.mark.parametrize("name", WHOLE_IN_A_LINE)
def test_log_injection_command_fields_read_back(played, name):
    """The EHLO name and the sender's domain on the summary, the refused recipient
    on the reject line, and the refusal in the reason read back exactly."""
    _, which, sessions = played
    s, payload = sessions[name], PAYLOADS[name]
    summary = s.summary()
    assert unescape(str(summary["helo_name"])) == payload
    assert unescape(str(summary["mail_from_domain"])) == payload
    assert unescape(str(summary["reason"])) == b"session ended after refusal: 553 sorry " + payload
    rejects = [e for e in s.events if e["event"] == "reject" and e["command"] == "RCPT"]
    assert [unescape(str(e["arg"])) for e in rejects] == [payload + b"@example.org"]
    assert [unescape(str(e["text"])) for e in rejects] == [b"sorry " + payload]
    if which == "all":
        assert s.values("command", "args")[0] == payload  # EHLO


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_log_injection_qmail_smtpd_double(tcpserver, tmp_path, fmt):
    """In front of the qmail-smtpd double, every payload in HELO, MAIL FROM and RCPT
    TO (a relay refused with 553) leaves whole, strictly parsed lines."""
    server = tcpserver([*wrapper_argv(), "--format", fmt, "--events", "all", "--", SMTPD],
                       env=double_env(tmp_path))
    for payload in PAYLOADS.values():
        client = SmtpClient(server)
        assert client.reply()[0] == 220
        for line in (b"HELO " + payload, b"MAIL FROM:<" + payload + b"@example.com>",
                     b"RCPT TO:<" + payload + RCPT_RELAY.encode() + b">", b"QUIT"):
            client.sock.sendall(line + b"\r\n")
            # qmail-smtpd ends a command at LF: a payload with one makes two commands
            replies = [client.reply() for _ in range(line.count(b"\n") + 1)]
        assert replies[-1][0] == 221
        client.hang_up()
    server.end_statuses(len(PAYLOADS))
    log = server.log()
    parsed = events(log)  # strict: logfmt or JSON, keys from log_keys.py
    lines = [line for line in log.splitlines() if not line.startswith("tcpserver: ")]
    assert len(parsed) == len(lines)
    assert [e["event"] for e in parsed].count("summary") == len(PAYLOADS)
    for ev in parsed:
        assert "forged" not in ev and ("verdict" not in ev or ev["event"] == "summary"), ev


@pytest.mark.parametrize("pipelined", [False, True], ids=["lockstep", "pipelined"])
def test_log_injection_auth_refused_credentials_not_logged(tcpserver, tmp_path, pipelined):
    """qmail-smtpd without an AUTH patch answers AUTH and each credential line 502: the
    base64 user, password and PLAIN blob reach no log line, transcript or alert."""
    cap, dump = tmp_path / "cap", tmp_path / "alert.env"
    cap.mkdir(mode=0o700)
    alert = tmp_path / "alert.sh"
    alert.write_text(f"#!/bin/sh\nenv > {dump}.tmp && mv {dump}.tmp {dump}\n")
    alert.chmod(0o755)
    server = tcpserver([*wrapper_argv(), "--capture", str(cap), "--capture-when", "always",
                        "--alert-exec", str(alert), "--alert-on", "rejected", "--", SMTPD],
                       env=double_env(tmp_path))
    secrets = [_b64(b"alice@example.org"), _b64(PASSWORD),
               _b64(b"\0alice@example.org\0" + PASSWORD)]
    lines = [b"AUTH LOGIN", secrets[0], secrets[1], b"AUTH PLAIN", secrets[2]]
    client = SmtpClient(server)
    assert client.reply()[0] == 220
    client.cmd(b"EHLO client.test", 250)
    if pipelined:
        client.sock.sendall(b"".join(line + b"\r\n" for line in lines))
        assert [client.reply()[0] for _ in lines] == [502] * len(lines)
    else:
        for line in lines:
            client.cmd(line, 502)
    client.cmd(b"QUIT", 221)
    client.hang_up()
    server.end_statuses(1)
    summary = event(server.log(), "summary")
    assert summary["verdict"] == "rejected", summary
    rejects = [e for e in events(server.log()) if e["event"] == "reject"]
    assert len(rejects) == len(lines) and {e.get("command") for e in rejects} == {
        "AUTH", "UNKNOWN"}, rejects
    dumped = poll_until("the alert's environment", lambda: dump.exists() and dump.read_bytes())
    transcripts = b"".join(p.read_bytes() for p in cap.iterdir())
    if not pipelined:  # pipelined, the exchange took them: no command lines at all
        assert transcripts.count(b"bytes not shown") == 3, transcripts
    for secret in secrets:
        for place in (server.log().encode(), transcripts, dumped):
            assert secret not in place
