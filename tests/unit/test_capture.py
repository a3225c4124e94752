"""Capture: redacted, escaped, bounded transcripts kept only for chosen verdicts."""

from __future__ import annotations

import base64
import errno
import os
import re
import ssl
import stat

import pytest

from supervise_smtp.observer import Observer
from supervise_smtp.observer.events import Command, Reply
from supervise_smtp.session import capture as capture_mod
from supervise_smtp.session.capture import SPILL_BYTES, Capture

PID = 4242
SECRET = b"s3cr3t-Pa55word!"
USER = b"alice@example.org"
PLAIN = base64.b64encode(b"\x00" + USER + b"\x00" + SECRET)
BODY_TEXT = b"TopSecretBodyText"
T0 = 1795604400.123456  # 2026-11-25T11:00:00.123456 UTC

SESSION = [
    ("S", b"220 mx.example ESMTP\r\n"),
    ("C", b"EHLO client\x01.example\r\n"),
    ("S", b"250-mx.example\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n"),
    ("C", b"AUTH PLAIN " + PLAIN + b"\r\n"),
    ("S", b"235 2.7.0 ok\r\n"),
    ("C", b"MAIL FROM:<a@example.org>\r\n"),
    ("S", b"250 ok\r\n"),
    ("C", b"RCPT TO:<b@example.org>\r\n"),
    ("S", b"250 ok\r\n"),
    ("C", b"DATA\r\n"),
    ("S", b"354 go\r\n"),
    ("C", b"Subject: hi\r\n\r\n" + BODY_TEXT + b"\nline two\r\n.\r\n"),
    ("S", b"250 queued\r\n"),
    ("C", b"QUIT\r\n"),
    ("S", b"221 bye\r\n"),
]


def clock():
    return T0


def play(cap: Capture, steps, obs: Observer | None = None) -> Observer:
    """Feed ``steps`` to an Observer and every event it returns to ``cap``."""
    obs = obs or Observer()
    for side, data in steps:
        if side == "C":
            for ev in obs.feed_client(data):
                cap.event("<", ev)
        else:
            for ev in obs.feed_server(data):
                cap.event(">", ev)
    return obs


def kept(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_capture_transcript_lines_are_recordio_with_timestamps(tmp_path):
    """A whole session gives timestamped `PID < text` / `PID > text` lines in order."""
    cap = Capture(str(tmp_path / "cap"), PID, "192.0.2.7", None, clock=clock)
    play(cap, SESSION)
    path = cap.finish("bare_lf")
    assert path is not None and cap.error is None
    lines = open(path, encoding="ascii").read().splitlines()
    stamp = "2026-11-25T11:00:00.123456"
    assert all(line.startswith(f"{stamp} {PID} ") for line in lines)
    texts = [line[len(stamp) + 1:] for line in lines]
    assert texts[:5] == [
        f"{PID} > 220 mx.example ESMTP",
        f"{PID} < EHLO client\\x01.example",
        f"{PID} > 250-mx.example",
        f"{PID} > 250-AUTH PLAIN LOGIN",
        f"{PID} > 250 PIPELINING",
    ]
    assert f"{PID} < AUTH PLAIN [auth redacted]" in texts
    assert f"{PID} > [auth redacted] mechanism=PLAIN result=ok user={USER.decode()} code=235" \
        in texts
    assert f"{PID} < MAIL FROM:<a@example.org>" in texts
    assert f"{PID} > 354 go" in texts
    body = [t for t in texts if "[body:" in t]
    assert len(body) == 1 and "bare_lf=1" in body[0] and "bare_lf_first_line=3" in body[0]
    assert texts[-1] == f"{PID} > 221 bye"


def test_capture_never_writes_secret_base64_or_body(tmp_path):
    """The AUTH secret, its base64 and the DATA body text never reach the file."""
    cap = Capture(str(tmp_path), PID, "192.0.2.7", None, clock=clock)
    play(cap, SESSION)
    data = open(cap.finish("ok") or "", "rb").read()
    for needle in (SECRET, PLAIN, BODY_TEXT, b"Subject: hi", b"line two"):
        assert needle not in data


def test_capture_escapes_control_bytes(tmp_path):
    """No control byte other than the line-ending LF ever appears in the file."""
    cap = Capture(str(tmp_path), PID, "192.0.2.7", None, clock=clock)
    cap.event("<", Command(verb="UNKNOWN", args=b"X\r\x1b[31m\x00\xff\\", pipelined=False))
    cap.event(">", Reply(code=500, text=b"bad\x07 line\nsecond\tline", lines=2,
                         command="UNKNOWN"))
    data = open(cap.finish("ok") or "", "rb").read()
    assert re.fullmatch(rb"[\x20-\x7e\n]*", data)
    text = data.decode()
    assert "< X\\r\\x1b[31m\\x00\\xff\\\\\n" in text
    assert "> 500-bad\\x07 line\n" in text and "> 500 second\\tline\n" in text


def test_capture_auth_login_challenges_and_answers_redacted(tmp_path):
    """AUTH LOGIN's 334 challenges are redacted and its answers never appear."""
    cap = Capture(str(tmp_path), PID, "192.0.2.7", None, clock=clock)
    steps = SESSION[:3] + [
        ("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
        ("C", base64.b64encode(USER) + b"\r\n"), ("S", b"334 UGFzc3dvcmQ6\r\n"),
        ("C", base64.b64encode(SECRET) + b"\r\n"), ("S", b"235 ok\r\n"),
    ]
    play(cap, steps)
    data = open(cap.finish("ok") or "", "rb").read()
    assert base64.b64encode(SECRET) not in data and SECRET not in data
    assert data.count(b"> 334 [auth redacted]\n") == 2


def test_capture_tls_summaries_only(tmp_path):
    """After STARTTLS only the ClientHello summary is written, never raw TLS bytes."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    cap = Capture(str(tmp_path), PID, "192.0.2.7", None, clock=clock)
    steps = SESSION[:3] + [("C", b"STARTTLS\r\n"), ("S", b"220 go ahead\r\n"), ("C", hello)]
    play(cap, steps)
    data = open(cap.finish("ok") or "", "rb").read()
    assert re.fullmatch(rb"[\x20-\x7e\n]*", data)
    assert b"< STARTTLS\n" in data
    line = [x for x in data.decode().splitlines() if "tls client_hello" in x]
    assert len(line) == 1 and "sni=mx.example" in line[0] and "versions=" in line[0]


def test_capture_kept_only_for_matching_verdict(tmp_path):
    """With a verdict set, the file is kept on a match and removed otherwise."""
    when = frozenset({"bare_lf", "server_crashed"})
    drop = Capture(str(tmp_path), PID, "192.0.2.7", when, clock=clock)
    play(drop, SESSION)
    assert drop.finish("ok") is None
    assert kept(tmp_path) == []
    keep = Capture(str(tmp_path), PID + 1, "192.0.2.7", when, clock=clock)
    play(keep, SESSION)
    path = keep.finish("bare_lf")
    assert path is not None and kept(tmp_path) == [os.path.basename(path)]


def test_capture_dropped_after_spill_leaves_no_temp_file(tmp_path):
    """A spilled transcript whose verdict does not match leaves no temporary file."""
    cap = Capture(str(tmp_path), PID, "192.0.2.7", frozenset({"bare_lf"}), clock=clock)
    for _ in range(2000):
        cap.event("<", Command(verb="NOOP", args=b"x" * 40))
    assert any(n.startswith(".tmp-") for n in kept(tmp_path))
    assert cap.finish("ok") is None
    assert kept(tmp_path) == []


def test_capture_name_format_and_modes(tmp_path):
    """The file is `<UTC stamp>-<remote>-<pid>.txt`, 0600, in a new 0700 directory."""
    directory = tmp_path / "new"
    cap = Capture(str(directory), PID, "2001:db8::1", None, clock=clock)
    play(cap, SESSION[:2])
    path = cap.finish("ok")
    assert path == str(directory / f"20261125T110000.123456-2001_db8__1-{PID}.txt")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert kept(directory) == [os.path.basename(path)]


def test_capture_names_sort_by_time(tmp_path):
    """Files of later connections sort after earlier ones."""
    paths = []
    for i, t in enumerate((T0, T0 + 0.5, T0 + 3600)):
        cap = Capture(str(tmp_path), 100 - i, "198.51.100.1", None, clock=lambda t=t: t)
        cap.event("<", Command(verb="QUIT"))
        paths.append(os.path.basename(cap.finish("ok") or ""))
    assert kept(tmp_path) == paths


def test_capture_spills_to_temp_file_above_64k(tmp_path):
    """Past 64 KiB the lines go to a 0600 `.tmp-` file, and all of them are kept."""
    cap = Capture(str(tmp_path), PID, "192.0.2.7", None, clock=clock)
    count = 0
    while not kept(tmp_path):
        cap.event("<", Command(verb="NOOP", args=b"%06d" % count))
        count += 1
    (tmp,) = kept(tmp_path)
    assert tmp.startswith(".tmp-")
    assert stat.S_IMODE(os.stat(tmp_path / tmp).st_mode) == 0o600
    assert os.path.getsize(tmp_path / tmp) > SPILL_BYTES
    cap.event("<", Command(verb="QUIT"))
    lines = open(cap.finish("ok") or "").read().splitlines()
    assert len(lines) == count + 1 and lines[-1].endswith("< QUIT")
    assert not any(n.startswith(".tmp-") for n in kept(tmp_path))


def test_capture_truncation_marker_at_max_bytes(tmp_path):
    """At max_bytes one `[truncated]` line is written and later events are dropped."""
    cap = Capture(str(tmp_path), PID, "192.0.2.7", None, max_bytes=1000, clock=clock)
    for i in range(100):
        cap.event("<", Command(verb="NOOP", args=b"%03d" % i))
    data = open(cap.finish("ok") or "").read()
    lines = data.splitlines()
    assert lines[-1].endswith(f"{PID} < [truncated]")
    assert data.count("[truncated]") == 1
    assert len(data.encode()) - len(lines[-1]) - 1 <= 1000


def test_capture_directory_under_a_file_sets_error(tmp_path):
    """A directory path under a regular file (ENOTDIR) sets `.error` and never raises."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    cap = Capture(str(blocker / "cap"), PID, "192.0.2.7", None, clock=clock)
    play(cap, SESSION)
    assert cap.finish("ok") is None
    assert cap.error is not None and f"errno={errno.ENOTDIR}" in cap.error
    cap.event("<", Command(verb="QUIT"))
    assert cap.finish("ok") is None


def test_capture_missing_parent_sets_error(tmp_path):
    """A capture directory whose parent is missing is not created: `.error` is set."""
    cap = Capture(str(tmp_path / "no" / "cap"), PID, "192.0.2.7", None, clock=clock)
    play(cap, SESSION[:2])
    assert cap.finish("ok") is None
    assert cap.error is not None and f"errno={errno.ENOENT}" in cap.error
    assert not (tmp_path / "no").exists()


def test_capture_enospc_turns_capture_off(tmp_path, monkeypatch):
    """ENOSPC while spilling turns capture off, removes the temp file and never raises."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(capture_mod.os, "write", full)
    cap = Capture(str(tmp_path), PID, "192.0.2.7", None, clock=clock)
    for _ in range(2000):
        cap.event("<", Command(verb="NOOP", args=b"x" * 40))
    assert cap.error is not None and f"errno={errno.ENOSPC}" in cap.error
    assert kept(tmp_path) == []
    cap.event("<", Command(verb="QUIT"))
    assert cap.finish("ok") is None
    assert kept(tmp_path) == []


def test_capture_rejects_unknown_body_mode(tmp_path):
    """An unknown `body` mode is a programming error reported at construction."""
    with pytest.raises(ValueError):
        Capture(str(tmp_path), PID, None, None, body="everything")
