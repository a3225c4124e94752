"""--bare-lf fix: bare LF becomes CRLF inside DATA only; a bare newline never ends DATA."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervise_smtp.session.barelf import BareLFFixer

HEAD = [b"HELO a\r\n", b"MAIL FROM:<broken@example.org>\r\n", b"RCPT TO:<b@example.org>\r\n",
        b"DATA\r\n"]
REPLIES = b"250 a\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n"


def _session(body: bytes, pieces=None) -> tuple[bytes, BareLFFixer]:
    f = BareLFFixer()
    f.feed_server(b"220 mx ESMTP\r\n")
    out = b"".join(f.feed_client(c) for c in HEAD)
    f.feed_server(REPLIES)
    for piece in pieces(body) if pieces else [body]:
        out += f.feed_client(piece)
    return out, f


def _prefix() -> bytes:
    return b"".join(HEAD)


@pytest.mark.parametrize(
    ("body", "sent", "fixed", "first"),
    [
        (b"a\r\nb\r\n.\r\n", b"a\r\nb\r\n.\r\n", 0, None),
        (b"a\nb\r\n.\r\n", b"a\r\nb\r\n.\r\n", 1, 1),
        (b"a\r\nb\nc\n.\r\n", b"a\r\nb\r\nc\r\n..\r\n", 2, 2),  # \n.\r\n: not the end
        (b"x\r\n\n.\n", b"x\r\n\r\n..\r\n", 2, 2),  # \n.\n
        (b"x\r\n.\nQUIT\r\n", b"x\r\n..\r\nQUIT\r\n", 1, 2),  # \r\n.\n
        (b"bare\rcr\r\n.\r\n", b"bare\rcr\r\n.\r\n", 0, None),  # bare CR left alone
        (b"..stuffed\r\n.\r\n", b"..stuffed\r\n.\r\n", 0, None),
    ],
)
def test_barelf_rewrites_only_bare_lf(body, sent, fixed, first):
    """Each bare LF in the body gets its CR; a dot next to a bare LF is kept as text."""
    out, f = _session(body)
    assert out == _prefix() + sent
    assert (f.fixed, f.first_line) == (fixed, first)


def test_barelf_end_of_data_returns_to_commands():
    """After the client's \\r\\n.\\r\\n, a bare LF in a command is not touched."""
    out, f = _session(b"a\nb\r\n.\r\nNOOP\nQUIT\r\n")
    assert out == _prefix() + b"a\r\nb\r\n.\r\nNOOP\nQUIT\r\n"
    assert f.messages == [(b"<broken@example.org>", 1, 1, 0)]
    assert f.mode == "cmd"


def test_barelf_nothing_before_354_or_after_starttls():
    """Bytes before the 354 and everything after STARTTLS pass unchanged."""
    f = BareLFFixer()
    f.feed_server(b"220 mx\r\n")
    assert f.feed_client(b"EHLO a\nSTARTTLS\r\n") == b"EHLO a\nSTARTTLS\r\n"
    f.feed_server(b"250-mx\r\n250 STARTTLS\r\n220 go ahead\r\n")
    tls = b"\x16\x03\x01\x00\x05a\nb\nc"
    assert f.feed_client(tls) == tls
    g = BareLFFixer()
    g.feed_server(b"220 mx\r\n")
    assert g.feed_client(b"DATA\r\nearly\nbody\n") == b"DATA\r\nearly\nbody\n"
    g.feed_server(b"503 RCPT first (#5.5.1)\r\n")
    assert g.feed_client(b"x\ny\n") == b"x\ny\n"


def test_barelf_smtps_is_opaque():
    """TLS from the first byte (SMTPS) is never rewritten."""
    f = BareLFFixer()
    data = b"\x16\x03\x01\x02\x00\n\n.\n"
    assert f.feed_client(data) == data


def _chunked(cuts):
    def pieces(body: bytes) -> list[bytes]:
        points = sorted({c for c in cuts if 0 < c < len(body)})
        return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    return pieces


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x y"]),
                max_size=40),
       st.lists(st.integers(0, 200), max_size=8))
def test_barelf_any_chunking_same_bytes(parts, cuts):
    """However the client's writes are split, the same bytes reach qmail-smtpd."""
    body = b"".join(parts) + b"\r\n.\r\nQUIT\r\n"
    whole, f1 = _session(body)
    split, f2 = _session(body, _chunked(cuts))
    assert split + f2.flush() == whole + f1.flush()
    assert (f1.fixed, f1.dots) == (f2.fixed, f2.dots)


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x"]),
                max_size=40))
def test_barelf_no_bare_lf_reaches_qmail_and_one_end(parts):
    """In the rewritten body every LF has its CR, and the only end is the client's own."""
    body = b"".join(parts) + b"\r\n.\r\n"
    end = (b"\r\n" + body).find(b"\r\n.\r\n") + 3  # the client's own end of data
    out, f = _session(body[:end])
    sent = out[len(_prefix()):]
    assert b"\n" not in sent.replace(b"\r\n", b"")
    # qmail-smtpd's body ends at the first \r\n.\r\n it reads: exactly the client's
    wire = b"\r\n" + sent
    assert wire.find(b"\r\n.\r\n") == len(wire) - 5
    assert f.mode == "cmd"
    assert f.feed_client(body[end:]) == body[end:]  # what follows is commands, untouched


def _rewritten(body: bytes) -> tuple[bytes, int, int | None, int]:
    """What the fixer must send for ``body``, line by line from its rules (the reference).

    Lines end at LF.  The first ``.`` line with CRLF after a CRLF is the end
    of data; any other lone-dot line becomes ``..`` (text); every line goes
    on with CRLF.  Returns (bytes sent, bare LFs fixed, line of the first,
    lone dots kept).
    """
    out, fixed, first, dots, prev_crlf = b"", 0, None, 0, True
    *lines, rest = body.split(b"\n")
    for number, line in enumerate(lines, 1):
        crlf = line.endswith(b"\r")
        text = line[:-1] if crlf else line
        if text == b"." and crlf and prev_crlf:
            return out + b".\r\n" + b"\n".join(lines[number:] + [rest]), fixed, first, dots
        if text == b".":
            text, dots = b"..", dots + 1
        out += text + b"\r\n"
        if not crlf:
            fixed += 1
            first = first or number
        prev_crlf = crlf
    return out + rest, fixed, first, dots


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x y",
                                 b"line\r\n" * 5, b"\r\n.", b"\n.", b"\r\n.\r\n",
                                 b"clean line\r\n" * 40]), max_size=40),
       st.lists(st.integers(0, 2000), max_size=8))
def test_barelf_sends_what_the_rules_say(parts, cuts):
    """Clean chunks (passed on whole) or not, any chunking: the bytes and counts of the rules."""
    body = b"".join(parts) + b"\r\n.\r\nQUIT\r\n"
    out, f = _session(body, _chunked(cuts))
    sent, fixed, first, dots = _rewritten(body)
    assert out + f.flush() == _prefix() + sent
    assert (f.fixed, f.first_line, f.dots) == (fixed, first, dots)


def test_barelf_clean_chunks_pass_untouched_and_lines_counted():
    """A clean body in many chunks goes through as is; a later bare LF has its true line."""
    lines = b"".join(b"line %d\r\n" % i for i in range(1, 1001))
    body = lines + b"bare\nmore\r\n.\r\n"
    out, f = _session(body, lambda b: [b[i:i + 777] for i in range(0, len(b), 777)])
    assert out == _prefix() + lines + b"bare\r\nmore\r\n.\r\n"
    assert f.messages == [(b"<broken@example.org>", 1, 1001, 0)]


def test_barelf_not_smtp_stream_left_alone():
    """Twenty unknown commands in a row: not SMTP, not looked at again, even a later DATA."""
    f = BareLFFixer()
    f.feed_server(b"220 mx ESMTP\r\n")
    junk = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 19
    assert f.feed_client(junk) == junk and f.mode == "opaque"
    later = b"DATA\r\nbare\n.\r\n"
    f.feed_server(b"502 unimplemented\r\n" * 20 + b"354 go ahead\r\n")
    assert f.feed_client(later) == later and f.messages == []


def test_barelf_reads_smtp_as_the_observer_does():
    """Replies and commands are read with the observer's parsers: a malformed line
    answers nothing, a multiline reply counts once with its first code, one CR
    before LF is dropped (``DATA\\r\\r`` is no DATA, as in qmail-smtpd)."""
    f = BareLFFixer()
    f.feed_server(b"220 mx ESMTP\r\n")
    f.feed_client(b"EHLO a\r\nDATA\r\r\nDATA\r\n")
    f.feed_server(b"250-mx\r\n250 8BITMIME\r\ngarbage\r\n502 unimplemented\r\n")
    assert f.mode == "wait"
    f.feed_server(b"354 go ahead\r\n")
    assert f.feed_client(b"a\nb\r\n.\r\n") == b"a\r\nb\r\n.\r\n" and f.mode == "cmd"


def test_barelf_auth_lines_and_typos_keep_the_fix():
    """A few unknown lines (AUTH answers, a typo) between real commands change nothing."""
    f = BareLFFixer()
    f.feed_server(b"220 mx ESMTP\r\n")
    f.feed_client(b"EHLO a\r\n" + b"XTYPO\r\n" * 19 + b"AUTH LOGIN\r\n" + b"dXNlcg==\r\n" * 2)
    f.feed_server(b"250 a\r\n" + b"502 unimplemented\r\n" * 19
                  + b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n")
    for line in HEAD[1:]:
        f.feed_client(line)
    f.feed_server(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
    assert f.feed_client(b"a\nb\r\n.\r\n") == b"a\r\nb\r\n.\r\n"
    assert f.messages == [(b"<broken@example.org>", 1, 1, 0)]
