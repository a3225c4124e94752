"""The SMTP observer on real sessions: swaks against ``exim -bs`` and aiosmtpd.

``tcpserver ... supervise-smtp [--events all] -- CHILD`` with real clients
(swaks, Python's ssl) and real servers: exim's ``-bs`` and an aiosmtpd child
on fd 0/1 that offers STARTTLS, SMTPS and AUTH (PLAIN, LOGIN, CRAM-MD5).
What the wrapper logs is checked against what the client itself reports:
swaks' transcript (the lines it sent, the TLS version and cipher it
negotiated) and the message the child stored.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from helpers import child_argv, event, events

pytestmark = pytest.mark.e2e

USER = "alice"
PASSWORD = "S3cr3t-Pa55"
BODY_TOKEN = "body-token-7f3c9d"  # in every message body; must never reach the log

# Events that mean something went wrong; none may appear in a clean session.
ANOMALIES = frozenset({
    "bare_lf", "bare_cr", "nul_byte", "long_line", "smuggling", "data_rejected",
    "line_too_long", "pipelining_violation", "early_talker", "starttls_injection",
    "malformed_reply", "tls_alert", "tls_not_tls", "observer_error", "wrapper_error",
})

_TLS_STARTED = re.compile(r"^=== TLS started with cipher ([^:\s]+):([^:\s]+):(\d+)$", re.M)


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A fresh self-signed certificate and key for CN=localhost."""
    from conftest import need

    openssl = need("openssl")
    directory = tmp_path_factory.mktemp("tls")
    crt, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=30,
    )
    return crt, key


def _child_env(tmp_path: Path, cert: tuple[Path, Path], mode: str,
               auth: bool = False) -> tuple[dict[str, str], Path]:
    """Environment for aiosmtpd_tls_child.py and its (empty) spool directory."""
    spool = tmp_path / "spool"
    spool.mkdir()
    env = dict(os.environ, CHILD_SPOOL=str(spool), CHILD_TLS_CERT=str(cert[0]),
               CHILD_TLS_KEY=str(cert[1]), CHILD_TLS_MODE=mode)
    if auth:
        env.update(CHILD_AUTH_USER=USER, CHILD_AUTH_PASSWORD=PASSWORD)
    return env, spool


def _swaks(swaks: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """One swaks run against 127.0.0.1:port; its transcript is in ``stdout``."""
    return subprocess.run(
        [swaks, "--server", f"127.0.0.1:{port}", "--to", "root@localhost",
         "--from", "a@example.org", "--helo", "client.test", "--timeout", "20",
         "--header", "Subject: observer real",
         "--body", f"first line {BODY_TOKEN}\\n.a line swaks dot-stuffs\\nlast line",
         *args],
        capture_output=True, text=True, timeout=60,
    )


def _sent_body(transcript: str) -> list[str]:
    """The DATA lines swaks sent (dot-stuffed, as on the wire), without the final dot."""
    lines = transcript.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^<[-~]  354 ", line))
    body = []
    for line in lines[start + 1:]:
        m = re.match(r"^ [-~]> (.*)$", line)
        assert m, f"unexpected line inside DATA: {line!r}"
        if m[1] == ".":
            return body
        body.append(m[1])
    raise AssertionError(f"no end of DATA in {transcript!r}")


def _unstuffed(wire_lines: list[str]) -> bytes:
    """The message as the server stores it: dot-unstuffed lines, each ending in CRLF."""
    return b"".join((line[1:] if line.startswith(".") else line).encode() + b"\r\n"
                    for line in wire_lines)


def _session(log: str) -> list[dict[str, str]]:
    """The event lines of the one connection in ``log``."""
    evs = events(log)
    assert len({e["pid"] for e in evs}) == 1, log
    return evs


def _anomalies(evs: list[dict[str, str]]) -> list[dict[str, str]]:
    return [e for e in evs if e["event"] in ANOMALIES]


def _tls_started(transcript: str) -> tuple[str, str]:
    """(version, cipher) as swaks reports them after the handshake."""
    m = _TLS_STARTED.search(transcript)
    assert m, transcript
    return m[1], m[2]


def _exim_session(tcpserver, wrapper, need, *swaks_args: str,
                  opts: tuple[str, ...] = ()) -> tuple[str, str]:
    """One swaks delivery through the wrapper to ``exim -bs -odq``; (transcript, log).

    The queued message is removed again, whatever happens.
    """
    swaks, exim = need("swaks"), need("exim")
    server = tcpserver([*wrapper, "--events", "all", *opts, "--", exim, "-bs", "-odq"])
    run = _swaks(swaks, server.port, *swaks_args)
    queued = re.search(r"^<-  250 OK id=(\S+)", run.stdout, re.M)
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        assert queued, run.stdout
        assert list(server.end_statuses(1).values()) == [0]
        return run.stdout, server.log()
    finally:
        if queued:
            subprocess.run([exim, "-Mrm", queued[1]], capture_output=True, timeout=30)


def _commands_and_replies(evs: list[dict[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    commands = [e["verb"] for e in evs if e["event"] == "command"]
    replies = [(e.get("command", ""), e["code"]) for e in evs if e["event"] == "reply"]
    return commands, replies


def _check_data_end(evs: list[dict[str, str]], wire_lines: list[str]) -> None:
    """data_end counts exactly what swaks sent (``wire_lines``, dot-stuffed)."""
    data_end = [e for e in evs if e["event"] == "data_end"]
    assert len(data_end) == 1, evs
    end = data_end[0]
    message = _unstuffed(wire_lines)
    assert end["method"] == "data"
    assert int(end["size"]) == len(message)
    assert int(end["lines"]) == len(wire_lines)
    assert int(end["wire_bytes"]) == sum(len(line) + 2 for line in wire_lines) + 3  # + ".\r\n"
    assert int(end["qmail_size"]) == len(message) - len(wire_lines)
    assert int(end["dot_stuffed"]) == sum(line.startswith(".") for line in wire_lines) == 1
    for counter in ("bare_lf_count", "bare_cr_count", "nul_count", "long_line_count",
                    "eight_bit_count", "smuggling_count"):
        assert end[counter] == "0", end


def test_observer_real_exim_session_events(tcpserver, wrapper, need, tmp_path):
    """swaks to exim -bs: banner, capabilities, every command answered, exact data_end."""
    capture = tmp_path / "capture"
    transcript, log = _exim_session(tcpserver, wrapper, need,
                                    opts=("--capture", str(capture)))
    # the capture of the same session: commands and replies, the body as a summary only
    (kept,) = capture.iterdir()
    captured = kept.read_text()
    assert " < MAIL FROM:" in captured and " > 250 OK id=" in captured
    assert "[body: " in captured and BODY_TOKEN not in captured
    evs = _session(log)
    assert not _anomalies(evs), log
    assert BODY_TOKEN not in log

    banner = event(log, "banner")
    assert banner["code"] == "220"
    assert "ESMTP Exim" in banner["text"]

    caps = event(log, "capabilities")
    advertised = re.findall(r"^<-  250[- ](\S+)", transcript, re.M)[1:]  # after the greeting
    assert "PIPELINING" in advertised and "8BITMIME" in advertised, transcript
    assert caps["pipelining"] == "true"
    assert caps["eightbitmime"] == "true"
    size = re.search(r"^<-  250[- ]SIZE (\d+)$", transcript, re.M)
    assert size and caps["size"] == size[1]
    assert caps["chunking"] == ("true" if "CHUNKING" in advertised else "false")
    assert caps["starttls"] == ("true" if "STARTTLS" in advertised else "false")

    commands, replies = _commands_and_replies(evs)
    assert commands == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert replies == [("EHLO", "250"), ("MAIL", "250"), ("RCPT", "250"), ("DATA", "354"),
                       ("DATA_END", "250"), ("QUIT", "221")]
    assert all(e["pipelined"] == "false" for e in evs if e["event"] == "command")
    mail = next(e for e in evs if e["event"] == "command" and e["verb"] == "MAIL")
    rcpt = next(e for e in evs if e["event"] == "command" and e["verb"] == "RCPT")
    assert mail["address"] == "a@example.org"
    assert rcpt["address"] == "root@localhost"

    assert event(log, "data_start")["method"] == "data"
    _check_data_end(evs, _sent_body(transcript))
    names = [e["event"] for e in evs]
    assert names.index("data_start") < names.index("data_end")
    assert names.index("data_end") < next(
        i for i, e in enumerate(evs) if e["event"] == "reply" and e.get("command") == "DATA_END")


def test_observer_real_exim_pipelined_session(tcpserver, wrapper, need):
    """swaks --pipeline to exim: MAIL/RCPT/DATA in one group, marked pipelined, no violation."""
    transcript, log = _exim_session(tcpserver, wrapper, need, "--pipeline")
    # swaks really pipelined: the three commands went out before the first reply.
    assert re.search(r"^ -> MAIL FROM:<a@example.org>\n -> RCPT TO:<root@localhost>\n"
                     r" -> DATA\n<-  250 ", transcript, re.M), transcript
    evs = _session(log)
    assert not _anomalies(evs), log
    assert event(log, "capabilities")["pipelining"] == "true"
    pipelined = {e["verb"]: e["pipelined"] for e in evs if e["event"] == "command"}
    assert pipelined == {"EHLO": "false", "MAIL": "false", "RCPT": "true", "DATA": "true",
                         "QUIT": "false"}
    commands, replies = _commands_and_replies(evs)
    assert commands == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert replies == [("EHLO", "250"), ("MAIL", "250"), ("RCPT", "250"), ("DATA", "354"),
                       ("DATA_END", "250"), ("QUIT", "221")]
    _check_data_end(evs, _sent_body(transcript))


def _tls_session(tcpserver, wrapper, need, tmp_path, cert, mode: str, *swaks_args: str,
                 events_opt: tuple[str, ...] = ("--events", "all")) -> tuple[str, str, Path]:
    """swaks through the wrapper to the aiosmtpd TLS child; (transcript, log, spool)."""
    swaks = need("swaks")
    env, spool = _child_env(tmp_path, cert, mode)
    server = tcpserver([*wrapper, *events_opt, "--", *child_argv("aiosmtpd_tls_child.py")],
                       env=env)
    run = _swaks(swaks, server.port, *swaks_args)
    assert run.returncode == 0, run.stdout + run.stderr
    assert list(server.end_statuses(1).values()) == [0]
    return run.stdout, server.log(), spool


def _check_stored(transcript: str, spool: Path) -> None:
    """The child stored exactly the message swaks sent."""
    stored = sorted(spool.iterdir())
    assert [p.name for p in stored] == ["1.msg"]
    assert stored[0].read_bytes() == _unstuffed(_sent_body(transcript))


def _check_tls_events(evs: list[dict[str, str]], transcript: str, implicit: bool) -> None:
    """starttls, then ClientHello and ServerHello naming what swaks negotiated; no SMTP after."""
    names = [e["event"] for e in evs]
    assert names.count("starttls") == 1, names
    switch = names.index("starttls")
    assert evs[switch]["implicit"] == ("true" if implicit else "false")
    assert names.count("tls_client_hello") == 1 and names.count("tls_server_hello") == 1, names
    assert switch < names.index("tls_client_hello") < names.index("tls_server_hello")
    after = set(names[switch + 1:])
    assert not after & {"command", "reply", "banner", "capabilities", "data_start", "data_end",
                        "auth_result", "malformed_reply", "line_too_long"}, names
    version, cipher = _tls_started(transcript)
    hello = evs[names.index("tls_server_hello")]
    assert (hello["version"], hello["cipher"]) == (version, cipher)
    assert hello["hello_retry"] == "false"
    offered = evs[names.index("tls_client_hello")]["versions"].split(",")
    assert version in offered
    for e in evs:
        if e["event"] == "tls_closed":
            assert e["mid_record"] == "false", e


def test_observer_real_starttls_tls13(tcpserver, wrapper, need, tmp_path, cert):
    """swaks --tls: starttls, SNI, TLSv1.3 version and cipher as swaks reports, no SMTP after."""
    capture = tmp_path / "capture"
    transcript, log, spool = _tls_session(tcpserver, wrapper, need, tmp_path, cert, "starttls",
                                          "--tls", "--tls-sni", "mx.example.test",
                                          events_opt=("--events", "all", "--capture",
                                                      str(capture)))
    assert _tls_started(transcript)[0] == "TLSv1.3"
    # --capture: TLS as summaries only, no binary byte, no body; the mail went through exactly
    (kept,) = capture.iterdir()
    text = kept.read_bytes()
    assert all(b == 10 or 0x20 <= b < 0x7F for b in text), text
    assert b"[tls client_hello sni=mx.example.test" in text
    version, cipher = _tls_started(transcript)
    assert f"[tls server_hello version={version} cipher={cipher}".encode() in text
    assert b" < STARTTLS" in text and b" > 220 " in text
    assert BODY_TOKEN.encode() not in text
    _check_stored(transcript, spool)
    evs = _session(log)
    assert BODY_TOKEN not in log
    commands, replies = _commands_and_replies(evs)
    # The encrypted EHLO/MAIL/RCPT/DATA/QUIT must not show up as commands.
    assert commands == ["EHLO", "STARTTLS"]
    assert replies == [("EHLO", "250"), ("STARTTLS", "220")]
    assert event(log, "banner")["code"] == "220"
    assert event(log, "capabilities")["starttls"] == "true"
    _check_tls_events(evs, transcript, implicit=False)
    assert event(log, "tls_client_hello")["sni"] == "mx.example.test"
    assert not _anomalies(evs), log
    _check_stored(transcript, spool)


def test_observer_real_starttls_tls12(tcpserver, wrapper, need, tmp_path, cert):
    """swaks --tls-protocol tlsv1_2: the TLS 1.2 version and cipher swaks reports, no SNI."""
    transcript, log, spool = _tls_session(tcpserver, wrapper, need, tmp_path, cert, "starttls",
                                          "--tls", "--tls-protocol", "tlsv1_2")
    assert _tls_started(transcript)[0] == "TLSv1.2"
    evs = _session(log)
    commands, _ = _commands_and_replies(evs)
    assert commands == ["EHLO", "STARTTLS"]
    _check_tls_events(evs, transcript, implicit=False)
    assert event(log, "tls_client_hello")["versions"] == "TLSv1.2"
    assert "sni" not in event(log, "tls_client_hello")  # swaks sends none without --tls-sni
    # After ChangeCipherSpec a TLS 1.2 alert (the close_notify at the end) is
    # opaque: it may be reported, but never with a level or description.
    for e in evs:
        if e["event"] == "tls_alert":
            assert e["encrypted"] == "true" and "description" not in e, e
    assert not [e for e in _anomalies(evs) if e["event"] != "tls_alert"], log
    _check_stored(transcript, spool)


def test_observer_real_clean_tls12_session_quiet(tcpserver, wrapper, need, tmp_path, cert):
    """A clean TLS 1.2 STARTTLS session logs no anomaly line by default."""
    transcript, log, spool = _tls_session(tcpserver, wrapper, need, tmp_path, cert, "starttls",
                                          "--tls", "--tls-protocol", "tlsv1_2", events_opt=())
    assert _tls_started(transcript)[0] == "TLSv1.2"
    _check_stored(transcript, spool)
    assert not _anomalies(_session(log)), log
    summary = [e for e in _session(log) if e["event"] == "summary"]
    assert len(summary) == 1
    assert (summary[0]["verdict"], summary[0]["tls"], summary[0]["tls_version"],
            summary[0]["tls_cipher"]) == ("ok", "true", *_tls_started(transcript)[:2])


def test_observer_real_smtps_implicit_tls(tcpserver, wrapper, need, tmp_path, cert):
    """swaks --tls-on-connect: implicit TLS from the first byte, no banner event, real cipher."""
    transcript, log, spool = _tls_session(tcpserver, wrapper, need, tmp_path, cert, "smtps",
                                          "--tls-on-connect")
    evs = _session(log)
    observed = [e["event"] for e in evs if e["event"] not in ("connect", "child_stderr")]
    assert observed[0] == "starttls", observed  # nothing observed before TLS
    assert "banner" not in observed
    _check_tls_events(evs, transcript, implicit=True)
    assert not _anomalies(evs), log
    assert BODY_TOKEN not in log
    _check_stored(transcript, spool)


def _smtp_reply(reader) -> list[bytes]:
    lines = []
    while True:
        line = reader.readline()
        assert line, f"connection closed after {lines!r}"
        lines.append(line)
        if line[3:4] != b"-":
            return lines


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls12", "tls13"])
def test_observer_real_tls_handshake_failure_alert(tcpserver, wrapper, tmp_path, cert,
                                                   max_version):
    """A verifying client rejects the self-signed cert: fatal unknown_ca logged by default."""
    env, _ = _child_env(tmp_path, cert, "starttls")
    server = tcpserver([*wrapper, "--", *child_argv("aiosmtpd_tls_child.py")], env=env)
    ctx = ssl.create_default_context()  # verification on, system CAs only
    ctx.minimum_version = ctx.maximum_version = max_version
    with server.connect() as sock:
        reader = sock.makefile("rb")
        assert _smtp_reply(reader)[0].startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        assert b"STARTTLS\r\n" in [line[4:] for line in _smtp_reply(reader)]
        sock.sendall(b"STARTTLS\r\n")
        assert _smtp_reply(reader)[0].startswith(b"220 ")
        reader.close()
        with pytest.raises(ssl.SSLCertVerificationError) as failed:
            ctx.wrap_socket(sock, server_hostname="localhost")
    assert failed.value.verify_code == 18  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    server.end_statuses(1)
    log = server.log()
    alert = event(log, "tls_alert")
    assert alert["direction"] == "client"
    assert alert["level"] == "fatal"
    assert alert["description"] == "unknown_ca"
    assert alert["code"] == "48"
    assert alert["encrypted"] == "false"
    # Default --events anomalies: the clean parts of the session stay quiet.
    names = {e["event"] for e in events(log)}
    assert not names & {"banner", "command", "reply", "starttls", "tls_client_hello"}, log


def _auth_exchange(transcript: str) -> list[str]:
    """What swaks sent from its AUTH command to the server's final answer."""
    lines = transcript.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(" -> AUTH "))
    sent = []
    for line in lines[start:]:
        reply = re.match(r"^<(?:-|~|\*\*) +(\d{3}) ", line)
        if reply and reply[1] != "334":
            return sent
        m = re.match(r"^ -> (.*)$", line)
        if m:
            sent.append(m[1])
    raise AssertionError(f"AUTH not answered in {transcript!r}")


def _secrets(mechanism: str, password: str, sent: list[str]) -> list[str]:
    """Every form of the credential that must never reach the log."""
    b64 = base64.b64encode(password.encode()).decode()
    plain = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
    found = [password, b64, b64.rstrip("="), plain, plain.rstrip("=")]
    tokens = [sent[0].split()[2]] if len(sent[0].split()) > 2 else []  # initial response
    tokens += sent[1:]
    found += [t.rstrip("=") for t in tokens if t]
    if mechanism == "CRAM-MD5":
        digest = base64.b64decode(sent[-1]).decode().split()[1]
        found.append(digest)
    return found


@pytest.mark.parametrize("good", [True, False], ids=["ok", "failed"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_observer_real_auth_result_redacted(tcpserver, wrapper, need, tmp_path, cert,
                                            mechanism, good):
    """swaks --auth: auth_result names mechanism, user and result; no credential in any line."""
    swaks = need("swaks")
    env, spool = _child_env(tmp_path, cert, "none", auth=True)
    capture = tmp_path / "capture"
    server = tcpserver([*wrapper, "--events", "all", "--capture", str(capture), "--",
                        *child_argv("aiosmtpd_tls_child.py")], env=env)
    password = PASSWORD if good else PASSWORD + "-wrong"
    run = _swaks(swaks, server.port, "--auth", mechanism, "--auth-user", USER,
                 "--auth-password", password)
    assert list(server.end_statuses(1).values()) == [0]
    log = server.log()
    sent = _auth_exchange(run.stdout)
    assert sent[0].split()[:2] == ["AUTH", mechanism], run.stdout
    if good:
        assert run.returncode == 0, run.stdout + run.stderr
        _check_stored(run.stdout, spool)
    else:
        assert run.returncode != 0, run.stdout
        assert re.search(r"^<\*\* +535 ", run.stdout, re.M), run.stdout

    evs = _session(log)
    assert "AUTH" in event(log, "capabilities")["keywords"]
    result = event(log, "auth_result")
    assert result["mechanism"] == mechanism
    assert result["user"] == USER
    assert result["result"] == ("ok" if good else "failed")
    assert result["code"] == ("235" if good else "535")
    auth = [e for e in evs if e["event"] == "command" and e["verb"] == "AUTH"]
    assert [e["args"] for e in auth] == [mechanism]

    (kept,) = capture.iterdir()
    captured = kept.read_text()
    assert f"[auth redacted] mechanism={mechanism}" in captured
    for secret in _secrets(mechanism, password, sent):
        for line in log.splitlines() + captured.splitlines():
            assert secret not in line, f"{secret!r} leaked in {line!r}"
