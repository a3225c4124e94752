"""Tests of the test doubles in tests/fakes/: fake-qmail-smtpd and its queue programs.

The expected replies are written out here from netqmail 1.06 / notqmail
qmail-smtpd.c and qmail.c, independently of the tables inside the fakes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

FAKES = Path(__file__).resolve().parents[1] / "fakes"
SMTPD = str(FAKES / "fake-qmail-smtpd")
QUEUE = str(FAKES / "fake-qmail-queue")
SCANNER = str(FAKES / "fake-qmail-scanner")

SMTPLF_NETQMAIL = b"451 See http://pobox.com/~djb/docs/smtplf.html.\r\n"
SMTPLF_NOTQMAIL = b"451 See https://cr.yp.to/docs/smtplf.html.\r\n"
OK_QP = re.compile(rb"250 ok (\d+) qp (\d+)\r\n")
RECEIVED = re.compile(
    rb"^Received: from client\.example \(HELO helo\.example\) \(192\.0\.2\.1\)\n"
    rb"  by mx\.example with SMTP; \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000\n"
)
TRANSPORTS = ("pipes", "socketpair")

# qmail.c qmail_close() as smtp_data() prints it ("D" -> 554, "Z" -> 451).
QQ_REPLIES = {
    11: b"554 envelope address too long for qq (#5.1.3)",
    115: b"554 envelope address too long for qq (#5.1.3)",
    31: b"554 mail server permanently rejected message (#5.3.0)",
    51: b"451 qq out of memory (#4.3.0)",
    52: b"451 qq timeout (#4.3.0)",
    53: b"451 qq write error or disk full (#4.3.0)",
    54: b"451 qq read error (#4.3.0)",
    55: b"451 qq unable to read configuration (#4.3.0)",
    56: b"451 qq trouble making network connection (#4.3.0)",
    61: b"451 qq trouble in home directory (#4.3.0)",
    62: b"451 qq trouble creating files in queue (#4.3.0)",
    63: b"451 qq trouble creating files in queue (#4.3.0)",
    64: b"451 qq trouble creating files in queue (#4.3.0)",
    65: b"451 qq trouble creating files in queue (#4.3.0)",
    66: b"451 qq trouble creating files in queue (#4.3.0)",
    71: b"451 mail server temporarily rejected message (#4.3.0)",
    72: b"451 connection to mail server timed out (#4.4.1)",
    73: b"451 connection to mail server rejected (#4.4.1)",
    74: b"451 communication with mail server failed (#4.4.2)",
    81: b"451 qq internal bug (#4.3.0)",
    91: b"451 qq internal bug (#4.3.0)",
    120: b"451 unable to exec qq (#4.3.0)",
    12: b"554 qq permanent problem (#5.3.0)",
    40: b"554 qq permanent problem (#5.3.0)",
    1: b"451 qq temporary problem (#4.3.0)",
    41: b"451 qq temporary problem (#4.3.0)",
    100: b"451 qq temporary problem (#4.3.0)",
    111: b"451 qq temporary problem (#4.3.0)",
}

HELO_TO_DATA = (
    b"HELO helo.example\r\nMAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n"
)
BODY = b"Subject: t\r\nX: \xff\x00y\r\n\r\n..dot\r\n.x\r\nlone\rcr\r\n\r\nend\r\n.\r\n"
BODY_STORED = b"Subject: t\nX: \xff\x00y\n\n.dot\nx\nlone\rcr\n\nend\n"


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for the double: tcpserver-like variables, a queue dir."""
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TCPREMOTEIP": "192.0.2.1",
        "TCPREMOTEHOST": "client.example",
        "TCPLOCALHOST": "mx.example",
        "QMAILQUEUE": QUEUE,
        "FAKE_QUEUE_DIR": str(queue_dir),
    }
    env.update(extra)
    return env


def control(tmp_path: Path, **files: str) -> str:
    """Write control files into a fresh directory and return its path."""
    d = tmp_path / "control"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return str(d)


def session(transport: str, script: bytes, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run the double on ``script`` (then EOF); return exit code, output, stderr."""
    if transport == "pipes":
        p = subprocess.run([SMTPD], input=script, capture_output=True, env=env, timeout=15)
        return p.returncode, p.stdout, p.stderr
    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen(
            [SMTPD], stdin=theirs, stdout=theirs, stderr=subprocess.PIPE, env=env
        )
        theirs.close()
        ours.sendall(script)
        ours.shutdown(socket.SHUT_WR)
        chunks = []
        ours.settimeout(15)
        while chunk := ours.recv(65536):
            chunks.append(chunk)
        _, err = proc.communicate(timeout=15)
    return proc.returncode, b"".join(chunks), err


def replies(output: bytes) -> list[bytes]:
    """The reply lines, each with its CRLF."""
    return output.splitlines(keepends=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fakes_normal_session_queues_message(tmp_path: Path, transport: str) -> None:
    """A session gets qmail-smtpd's replies, 250 ok qp <pid>, exit 0, a byte-exact queue file."""
    env = base_env(tmp_path)
    script = b"EHLO helo.example\r\n" + HELO_TO_DATA[len(b"HELO helo.example\r\n") :] + BODY
    rc, out, err = session(transport, script + b"QUIT\r\n", env)
    lines = replies(out)
    assert lines[:7] == [
        b"220 fake.example ESMTP\r\n",
        b"250-fake.example\r\n",
        b"250-PIPELINING\r\n",
        b"250 8BITMIME\r\n",
        b"250 ok\r\n",
        b"250 ok\r\n",
        b"354 go ahead\r\n",
    ]
    m = OK_QP.fullmatch(lines[7])
    assert m, lines[7]
    assert abs(int(m.group(1)) - time.time()) < 60
    assert lines[8:] == [b"221 fake.example\r\n"]
    assert (rc, err) == (0, b"")
    qp = m.group(2).decode()
    stored = (tmp_path / "queue" / qp).read_bytes()
    header = RECEIVED.match(stored)
    assert header, stored[:200]
    assert stored[header.end() :] == BODY_STORED
    assert (tmp_path / "queue" / (qp + ".env")).read_bytes() == (
        b"Fsender@example.org\0Trcpt@example.net\0\0"
    )
    assert os.stat(tmp_path / "queue" / qp).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("flavour", "line"), [(None, SMTPLF_NETQMAIL), ("notqmail", SMTPLF_NOTQMAIL)]
)
def test_fakes_bare_lf_is_smtplf_then_exit_1(
    tmp_path: Path, transport: str, flavour: str | None, line: bytes
) -> None:
    """A bare LF in DATA gives straynewline()'s 451 line, then exit 1 with nothing more."""
    env = base_env(tmp_path)
    if flavour:
        env["FAKE_QMAIL_SMTPLF"] = flavour
    script = HELO_TO_DATA + b"Subject: t\r\n\r\nline one\nline two\r\n.\r\nQUIT\r\n"
    rc, out, err = session(transport, script, env)
    assert replies(out)[-2:] == [b"354 go ahead\r\n", line]
    assert (rc, err) == (1, b"")


@pytest.mark.parametrize("code", sorted(QQ_REPLIES))
def test_fakes_qq_exit_code_maps_to_reply(tmp_path: Path, code: int) -> None:
    """Each queue exit code gets qmail_close()'s text with smtp_data()'s 451/554 prefix."""
    env = base_env(tmp_path, FAKE_QUEUE_EXIT=str(code))
    rc, out, _ = session("pipes", HELO_TO_DATA + BODY + b"QUIT\r\n", env)
    assert replies(out)[-2:] == [QQ_REPLIES[code] + b"\r\n", b"221 fake.example\r\n"]
    assert rc == 0


@pytest.mark.parametrize("sig", ["KILL", "TERM"])
def test_fakes_qq_killed_by_signal_is_crashed(tmp_path: Path, sig: str) -> None:
    """A queue program killed by a signal gives 451 qq crashed."""
    env = base_env(tmp_path, FAKE_QUEUE_SIGNAL=sig)
    rc, out, _ = session("pipes", HELO_TO_DATA + BODY + b"QUIT\r\n", env)
    assert replies(out)[-2] == b"451 qq crashed (#4.3.0)\r\n"
    assert rc == 0


def test_fakes_qq_exit_0_queues(tmp_path: Path) -> None:
    """Queue exit 0 gives 250 ok <time> qp <pid of the queue program>."""
    env = base_env(tmp_path, FAKE_QUEUE_EXIT="0")
    _, out, _ = session("pipes", HELO_TO_DATA + BODY + b"QUIT\r\n", env)
    m = OK_QP.fullmatch(replies(out)[-2])
    assert m
    assert (tmp_path / "queue" / m.group(2).decode()).exists()


def test_fakes_unexecutable_queue_is_unable_to_exec(tmp_path: Path) -> None:
    """An unexecutable $QMAILQUEUE still gets 354, then 451 unable to exec qq (child _exit(120))."""
    env = base_env(tmp_path, QMAILQUEUE=str(tmp_path / "missing"))
    _, out, _ = session("pipes", HELO_TO_DATA + BODY + b"QUIT\r\n", env)
    assert replies(out)[-3:] == [
        b"354 go ahead\r\n",
        b"451 unable to exec qq (#4.3.0)\r\n",
        b"221 fake.example\r\n",
    ]


def test_fakes_qmail_open_failure_is_qqt_failure(tmp_path: Path) -> None:
    """A failed qmail_open() answers DATA with 451 qqt failure and no 354."""
    env = base_env(tmp_path, FAKE_QMAIL_QQT_FAIL="1")
    _, out, _ = session("pipes", HELO_TO_DATA + b"QUIT\r\n", env)
    assert replies(out)[-2:] == [b"451 qqt failure (#4.3.0)\r\n", b"221 fake.example\r\n"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fakes_timeout_is_451_then_exit_1(tmp_path: Path, transport: str) -> None:
    """No input for control/timeoutsmtpd seconds gives 451 timeout (#4.4.2) and exit 1."""
    env = base_env(tmp_path, FAKE_QMAIL_CONTROL=control(tmp_path, timeoutsmtpd="1\n"))
    start = time.monotonic()
    if transport == "socketpair":
        ours, theirs = socket.socketpair()
        with ours:
            proc = subprocess.Popen([SMTPD], stdin=theirs, stdout=theirs, env=env)
            theirs.close()
            with ours.makefile("rb") as reader:
                out = reader.read()  # the client stays silent and never closes
            rc = proc.wait(timeout=10)
    else:
        proc = subprocess.Popen([SMTPD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        out = proc.stdout.read()
        rc = proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()
    assert 0.9 < time.monotonic() - start < 5
    assert out == b"220 fake.example ESMTP\r\n451 timeout (#4.4.2)\r\n"
    assert rc == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "script",
    [b"", b"HELO x\r\n", b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhalf a body\r\n"],
    ids=["connect", "helo", "data_body"],
)
def test_fakes_client_eof_is_silent_exit_1(tmp_path: Path, transport: str, script: bytes) -> None:
    """Client EOF anywhere is die_read(): no reply of its own and exit 1."""
    rc, out, err = session(transport, script, base_env(tmp_path))
    expected = {
        b"": [b"220 fake.example ESMTP\r\n"],
        b"HELO x\r\n": [b"220 fake.example ESMTP\r\n", b"250 fake.example\r\n"],
    }.get(script)
    if expected is not None:
        assert replies(out) == expected
    else:
        assert replies(out)[-1] == b"354 go ahead\r\n"
    assert (rc, err) == (1, b"")


def test_fakes_rcpthosts_rejects_and_relayclient_allows(tmp_path: Path) -> None:
    """Recipients outside control/rcpthosts get err_nogateway() unless RELAYCLIENT is set."""
    ctl = control(tmp_path, rcpthosts="example.net\n.sub.example.com\n# comment\n")
    script = (
        b"HELO x\r\nMAIL FROM:<a@b>\r\n"
        b"RCPT TO:<u@EXAMPLE.net>\r\n"
        b"RCPT TO:<u@a.sub.example.com>\r\n"
        b"RCPT TO:<u@sub.example.com>\r\n"
        b"RCPT TO:<u@elsewhere.org>\r\n"
        b"RCPT TO:<postmaster>\r\n"
        b"QUIT\r\n"
    )
    nogateway = b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"
    _, out, _ = session("pipes", script, base_env(tmp_path, FAKE_QMAIL_CONTROL=ctl))
    assert replies(out)[3:8] == [b"250 ok\r\n", b"250 ok\r\n", nogateway, nogateway, b"250 ok\r\n"]
    env = base_env(tmp_path, FAKE_QMAIL_CONTROL=ctl, RELAYCLIENT="")
    _, out, _ = session("pipes", script, env)
    assert replies(out)[3:8] == [b"250 ok\r\n"] * 5


def test_fakes_badmailfrom_rejects_at_rcpt(tmp_path: Path) -> None:
    """A badmailfrom sender gets 250 at MAIL and err_bmf() at every RCPT."""
    ctl = control(tmp_path, badmailfrom="spam@example.org\n@bad.example\n")
    bmf = b"553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)\r\n"
    for sender in (b"Spam@Example.org", b"x@bad.example"):
        script = b"MAIL FROM:<" + sender + b">\r\nRCPT TO:<c@d>\r\nDATA\r\nQUIT\r\n"
        _, out, _ = session("pipes", script, base_env(tmp_path, FAKE_QMAIL_CONTROL=ctl))
        assert replies(out)[1:] == [
            b"250 ok\r\n",
            bmf,
            b"503 RCPT first (#5.5.1)\r\n",
            b"221 fake.example\r\n",
        ]


def test_fakes_other_verbs_answer_like_qmail_smtpd(tmp_path: Path) -> None:
    """Sequence errors, RSET, NOOP, VRFY, HELP, unknown verbs and QUIT give qmail-smtpd's texts."""
    ctl = control(tmp_path, me="me.example\n", smtpgreeting="greet.example hello\n")
    script = (
        b"RCPT TO:<c@d>\r\nDATA\r\nmail from:<a@b>\r\nDATA\r\nRSET\r\nNOOP\r\n"
        b"VRFY x\r\nHELP\r\nETRN\r\n\r\nquit\r\n"
    )
    _, out, _ = session("pipes", script, base_env(tmp_path, FAKE_QMAIL_CONTROL=ctl))
    assert replies(out) == [
        b"220 greet.example hello ESMTP\r\n",
        b"503 MAIL first (#5.5.1)\r\n",
        b"503 MAIL first (#5.5.1)\r\n",
        b"250 ok\r\n",
        b"503 RCPT first (#5.5.1)\r\n",
        b"250 flushed\r\n",
        b"250 ok\r\n",
        b"252 send some mail, i'll try my best\r\n",
        b"214 netqmail home page: http://qmail.org/netqmail\r\n",
        b"502 unimplemented (#5.5.1)\r\n",
        b"502 unimplemented (#5.5.1)\r\n",
        b"221 greet.example hello\r\n",
    ]


def test_fakes_databytes_exceeded_is_552(tmp_path: Path) -> None:
    """A body over DATABYTES is read to its end and answered 552 (#5.3.4)."""
    env = base_env(tmp_path, DATABYTES="10")
    _, out, _ = session("pipes", HELO_TO_DATA + BODY + b"QUIT\r\n", env)
    assert replies(out)[-2] == (
        b"552 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n"
    )
    env = base_env(tmp_path, FAKE_QMAIL_CONTROL=control(tmp_path, databytes="100000\n"))
    _, out, _ = session("pipes", HELO_TO_DATA + BODY + b"QUIT\r\n", env)
    assert OK_QP.fullmatch(replies(out)[-2])


def test_fakes_too_many_hops_is_554(tmp_path: Path) -> None:
    """100 Received/Delivered-To header lines give 554 too many hops (#5.4.6)."""
    hops = b"Received: x\r\n" * 50 + b"Delivered-To: y\r\n" * 50
    _, out, _ = session(
        "pipes", HELO_TO_DATA + hops + b"\r\nb\r\n.\r\nQUIT\r\n", base_env(tmp_path)
    )
    assert replies(out)[-2] == b"554 too many hops, this message is looping (#5.4.6)\r\n"
    hops = b"Received: x\r\n" * 99 + b"\r\n" + b"Received: in the body\r\n" * 5
    _, out, _ = session("pipes", HELO_TO_DATA + hops + b".\r\nQUIT\r\n", base_env(tmp_path))
    assert OK_QP.fullmatch(replies(out)[-2])


def test_fakes_pipelined_mail_transactions(tmp_path: Path) -> None:
    """Two messages sent in one write both get queued with their own qp."""
    script = HELO_TO_DATA + BODY + b"MAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\nb\r\n.\r\nQUIT\r\n"
    rc, out, _ = session("socketpair", script, base_env(tmp_path))
    qps = OK_QP.findall(out)
    assert len(qps) == 2 and qps[0][1] != qps[1][1]
    env = (tmp_path / "queue" / (qps[1][1].decode() + ".env")).read_bytes()
    assert env == b"F\0Tx@y\0\0"
    assert rc == 0


@pytest.mark.parametrize(
    ("envelope", "code"),
    [
        (b"Fa\0Tb\0\0", 0),
        (b"F\0\0", 0),
        (b"Xa\0Tb\0\0", 91),
        (b"Fa\0Xb\0\0", 91),
        (b"Fa\0Tb\0", 54),
        (b"", 54),
        (b"F" + b"a" * 1003 + b"\0\0", 11),
    ],
)
def test_fakes_queue_checks_envelope_like_qmail_queue(
    tmp_path: Path, envelope: bytes, code: int
) -> None:
    """fake-qmail-queue reads fd 0 then fd 1 and exits with qmail-queue's envelope codes."""
    mr, mw = os.pipe()
    er, ew = os.pipe()
    env = base_env(tmp_path)
    proc = subprocess.Popen([QUEUE], stdin=mr, stdout=er, env=env)
    os.close(mr)
    os.close(er)
    os.write(mw, b"message\n")
    os.close(mw)
    os.write(ew, envelope)
    os.close(ew)
    assert proc.wait(timeout=10) == code
    stored = sorted(p.name for p in (tmp_path / "queue").iterdir())
    assert stored == ([str(proc.pid), f"{proc.pid}.env"] if code == 0 else [])


SCANNER_LINE = re.compile(
    rb"^X-Qmail-Scanner-1\.25st: Process (\d+) closed, parent process died\n$"
)


def test_fakes_scanner_reports_parent_died_after_bare_lf(tmp_path: Path) -> None:
    """Orphaned by the double's bare-LF exit, the scanner writes its parent-died line to stderr."""
    env = base_env(tmp_path, QMAILQUEUE=SCANNER, FAKE_SCANNER_GRACE="10")
    script = HELO_TO_DATA + b"Subject: t\nbody\r\n.\r\n"
    start = time.monotonic()
    proc = subprocess.run([SMTPD], input=script, capture_output=True, env=env, timeout=15)
    assert proc.returncode == 1
    assert proc.stdout.endswith(b"354 go ahead\r\n" + SMTPLF_NETQMAIL)
    m = SCANNER_LINE.match(proc.stderr)
    assert m, proc.stderr
    assert time.monotonic() - start < 5  # seen by polling, well before the grace period ends
    assert list((tmp_path / "queue").iterdir()) == []


# Runs in a child interpreter that is a child subreaper, so that the orphaned
# scanner is reparented to it and its exit status can be collected.
_SUBREAPER = r"""
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    print(json.dumps({"skip": os.strerror(ctypes.get_errno())}))
    sys.exit(0)
p = subprocess.run([sys.argv[1]], input=sys.stdin.buffer.read(), capture_output=True)
pid, wstat = os.wait()
print(json.dumps({"rc": p.returncode, "stdout": p.stdout.decode("latin-1"),
                  "stderr": p.stderr.decode("latin-1"), "orphan": pid,
                  "orphan_exit": os.waitstatus_to_exitcode(wstat)}))
"""


@pytest.mark.parametrize("check", ["changed", "init"])
def test_fakes_scanner_exit_111_under_subreaper(tmp_path: Path, check: str) -> None:
    """Under a subreaper the scanner exits 111 after its line; checking getppid()==1 misses it."""
    env = base_env(
        tmp_path, QMAILQUEUE=SCANNER, FAKE_SCANNER_PPID_CHECK=check, FAKE_SCANNER_GRACE="0.3"
    )
    script = HELO_TO_DATA + b"Subject: t\nbody\r\n.\r\n"
    proc = subprocess.run(
        [sys.executable, "-c", _SUBREAPER, SMTPD],
        input=script,
        capture_output=True,
        env=env,
        timeout=15,
    )
    result = json.loads(proc.stdout)
    if "skip" in result:
        pytest.skip("PR_SET_CHILD_SUBREAPER unavailable: " + result["skip"])
    assert result["rc"] == 1
    assert result["stdout"].encode("latin-1").endswith(SMTPLF_NETQMAIL)
    stderr = result["stderr"].encode("latin-1")
    if check == "changed":
        m = SCANNER_LINE.match(stderr)
        assert m, stderr
        assert int(m.group(1)) == result["orphan"]
        assert result["orphan_exit"] == 111
    else:
        assert stderr == b""
        assert result["orphan_exit"] == 54


def test_fakes_scanner_passes_message_to_queue(tmp_path: Path) -> None:
    """With its parent alive the scanner hands message and envelope to fake-qmail-queue, exit 0."""
    env = base_env(tmp_path, QMAILQUEUE=SCANNER)
    rc, out, err = session("pipes", HELO_TO_DATA + BODY + b"QUIT\r\n", env)
    assert OK_QP.fullmatch(replies(out)[-2])
    assert (rc, err) == (0, b"")
    files = sorted((tmp_path / "queue").iterdir())
    assert [p.suffix for p in files] == ["", ".env"]
    assert files[0].read_bytes().endswith(BODY_STORED)


# ------------------------------------------------ blast(): fast path vs. a literal port


def _load_smtpd() -> ModuleType:
    """Import the extension-less script as a module (its main() is not run)."""
    loader = SourceFileLoader("fake_qmail_smtpd", SMTPD)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class _Stray(Exception):
    pass


class _Eof(Exception):
    pass


def _reference_blast(data: bytes, bytestooverflow: int) -> tuple[str, bytes, int, int, bool]:
    """qmail-smtpd.c blast() and put(), one byte at a time, exactly as written in C."""
    out = bytearray()
    flagerr = False
    state, hops, flaginheader, pos = 1, 0, True, 0
    mx = my = mz = True

    def put(c: int) -> None:
        nonlocal bytestooverflow, flagerr
        if bytestooverflow:
            bytestooverflow -= 1
            if not bytestooverflow:
                flagerr = True
        if not flagerr:
            out.append(c)

    for i, ch in enumerate(data):
        if flaginheader:
            if pos < 9:
                if ch != b"delivered"[pos] and ch != b"DELIVERED"[pos]:
                    mz = False
                if mz and pos == 8:
                    hops += 1
                if pos < 8 and ch != b"received"[pos] and ch != b"RECEIVED"[pos]:
                    mx = False
                if mx and pos == 7:
                    hops += 1
                if pos < 2 and ch != b"\r\n"[pos]:
                    my = False
                if my and pos == 1:
                    flaginheader = False
                pos += 1
            if ch == 10:
                pos, mx, my, mz = 0, True, True, True
        if state == 0:
            if ch == 10:
                return "stray", bytes(out), hops, i, flagerr
            if ch == 13:
                state = 4
                continue
        elif state == 1:
            if ch == 10:
                return "stray", bytes(out), hops, i, flagerr
            if ch == 46:
                state = 2
                continue
            if ch == 13:
                state = 4
                continue
            state = 0
        elif state == 2:
            if ch == 10:
                return "stray", bytes(out), hops, i, flagerr
            if ch == 13:
                state = 3
                continue
            state = 0
        elif state == 3:
            if ch == 10:
                return "end", bytes(out), hops, i + 1, flagerr
            put(46)
            put(13)
            if ch == 13:
                state = 4
                continue
            state = 0
        else:
            if ch == 10:
                state = 1
            elif ch != 13:
                put(13)
                state = 0
        put(ch)
    return "eof", bytes(out), hops, len(data), flagerr


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.flagerr = False

    def put(self, s: bytes) -> None:
        if not self.flagerr:
            self.data += s

    def fail(self) -> None:
        self.flagerr = True


def test_fakes_blast_matches_literal_port() -> None:
    """The double's blast() (with its bulk fast path) equals a byte-by-byte port of the C code."""
    mod = _load_smtpd()

    def stray() -> None:
        raise _Stray

    mod.straynewline = stray

    def eof() -> None:
        raise _Eof

    mod._saferead = eof
    rng = random.Random(1200)
    alphabet = [b"a", b"xyz", b"\r", b"\n", b"\r\n", b".", b"\r\n.", b"R", b"Received:", b"D"]
    for n in range(800):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        body += rng.choice([b"\r\n.\r\n", b"\r\n.\r\nQUIT\r\n", b"\n", b""])
        overflow = rng.choice([0, 0, 1, 5, 20, 60])
        outcome, data, hops, consumed, flagerr = _reference_blast(body, overflow)
        sink = _Sink()
        mod._in, mod._in_pos = body, 0
        blast = mod.Blast(sink, overflow)
        try:
            got = ("end", blast.run())
        except _Stray:
            got = ("stray", hops)
        except _Eof:
            got = ("eof", hops)
        assert got == (outcome, hops), (n, body)
        assert bytes(sink.data) == data, (n, body)
        assert sink.flagerr == flagerr, (n, body)
        if outcome == "end":
            assert mod._in_pos == consumed, (n, body)


def test_fakes_command_parsing_like_commands_c(tmp_path: Path) -> None:
    """commands.c: a NUL ends the line's C string (DATA\\0x is DATA), the verb runs to the
    first space without case, a tab or CR stays part of the verb (502); BDAT is not in
    smtpcommands[] (502) and the bytes after it are read as commands, not a chunk."""
    script = (
        b"ehlo helo.example\r\n"
        b"BDAT 100000 LAST\r\nMAIL FROM:<sender@example.org>\r\n"
        b"RCPT TO:<rcpt@example.net>\r\n"
        b"DATA\t\r\nDATA\r\r\n\0DATA\r\n"
        b"DATA\0junk\r\nhi\r\n.\r\nQUIT \r\n"
    )
    _, out, _ = session("socketpair", script, base_env(tmp_path))
    got = replies(out)
    assert got[1:4] == [b"250-fake.example\r\n", b"250-PIPELINING\r\n", b"250 8BITMIME\r\n"]
    rest = got[4:]
    assert rest[:4] == [b"502 unimplemented (#5.5.1)\r\n", b"250 ok\r\n", b"250 ok\r\n",
                        b"502 unimplemented (#5.5.1)\r\n"]
    assert rest[4:7] == [b"502 unimplemented (#5.5.1)\r\n"] * 2 + [b"354 go ahead\r\n"]
    assert OK_QP.fullmatch(rest[7]) and rest[8].startswith(b"221 ")


def test_fakes_refused_data_reads_the_body_as_commands(tmp_path: Path) -> None:
    """503 to DATA before MAIL: qmail-smtpd reads the pipelined body line by line, one
    reply each (502 for text, 250 for a line that happens to be NOOP), nothing queued."""
    script = b"HELO h\r\nDATA\r\nSubject: x\r\n\r\nnoop\r\n.\r\nQUIT\r\n"
    env = base_env(tmp_path)
    _, out, _ = session("pipes", script, env)
    assert replies(out)[1:] == [
        b"250 fake.example\r\n", b"503 MAIL first (#5.5.1)\r\n",
        b"502 unimplemented (#5.5.1)\r\n", b"502 unimplemented (#5.5.1)\r\n",
        b"250 ok\r\n", b"502 unimplemented (#5.5.1)\r\n", b"221 fake.example\r\n"]
    assert not any((tmp_path / "queue").iterdir())


def test_fakes_tls_byte_first_is_just_an_unknown_command(tmp_path: Path) -> None:
    """qmail-smtpd has no TLS: a line starting 0x16 is answered 502 and the session goes on."""
    script = b"\x16\x03\x01junk\r\nHELO h\r\nQUIT\r\n"
    _, out, _ = session("pipes", script, base_env(tmp_path))
    assert replies(out)[1:] == [b"502 unimplemented (#5.5.1)\r\n", b"250 fake.example\r\n",
                                b"221 fake.example\r\n"]
