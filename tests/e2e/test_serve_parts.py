"""serve's pure parts, each against the C code it follows (no process started here).

serve_opts against tcpserver.c's getopt loop and defaults, tcpdns against
djbdns's name and address handling (dns_domain_todot_cat, dns_ip4's
literal addresses, dns_rcip's $DNSCACHEIP, irrelevant()), tcpenv against
remoteinfo.c's reading of an ident answer.  The side-by-side tests in
test_serve.py check the same behaviour against the real tcpserver.
"""

from __future__ import annotations

import socket
import time

import pytest

from supervise_smtp.errors import UsageError
from supervise_smtp.serve import dns as tcpdns
from supervise_smtp.serve import tcpenv
from supervise_smtp.serve.config import parse_serve
from supervise_smtp.session.options import InfoRequested


def test_serve_opts_defaults_are_tcpservers():
    """No option: -Q -h -r -O -d, limit 40, backlog 20, ident timeout 26, no rules, no switch."""
    cfg = parse_serve(["0", "smtp", "qmail-smtpd"])
    assert (cfg.verbosity, cfg.remote_host, cfg.remote_info, cfg.paranoid) == (1, True, True, False)
    assert (cfg.kill_ip_options, cfg.nodelay, cfg.limit, cfg.backlog) == (True, False, 40, 20)
    assert (cfg.timeout_s, cfg.rules, cfg.uid, cfg.gid, cfg.banner) == (26, None, 0, 0, b"")
    assert (cfg.host, cfg.port, cfg.prog) == ("0", "smtp", ["qmail-smtpd"])


def test_serve_opts_bundled_and_attached_like_getopt():
    """-vRHl0 is four options, the last taking the rest of the word; -c40 and -c 40 alike."""
    cfg = parse_serve(["-vRHl0", "-c40", "-b", "7", "-xrules.cdb", "-X", "-Dop", "1.2.3.4", "25",
                       "prog", "-v"])
    assert (cfg.verbosity, cfg.remote_info, cfg.remote_host, cfg.local_name) == (2, False, False,
                                                                                 "0")
    assert (cfg.limit, cfg.backlog, cfg.rules, cfg.allow_no_rules) == (40, 7, "rules.cdb", True)
    assert (cfg.nodelay, cfg.kill_ip_options, cfg.paranoid) == (True, False, True)
    assert cfg.prog == ["prog", "-v"]  # options end at the host


def test_serve_opts_later_option_wins():
    """-v then -q, -h then -H: the last one counts, as tcpserver's switch."""
    cfg = parse_serve(["-v", "-q", "-h", "-H", "-P", "0", "25", "p"])
    assert (cfg.verbosity, cfg.remote_host, cfg.paranoid) == (0, False, False)


@pytest.mark.parametrize("args", [["--", "0", "25", "p"], ["0", "25", "--", "p"]])
def test_serve_opts_double_dash_before_host_or_prog(args):
    """``--`` ends tcpserver's options; one between port and prog is dropped."""
    cfg = parse_serve(args)
    assert (cfg.host, cfg.port, cfg.prog) == ("0", "25", ["p"])


def test_serve_opts_wrapper_options_parsed_once():
    """--long options are the wrapper's, typed by options.parse, among tcpserver's."""
    cfg = parse_serve(["-v", "--format", "json", "-R", "--capture=/tmp/c", "--capture-when",
                       "bare_lf", "--drain", "2.5", "0", "25", "prog"])
    opts = cfg.options
    assert (opts.format, opts.capture, opts.capture_when) == ("json", "/tmp/c",
                                                              frozenset({"bare_lf"}))
    assert (cfg.remote_info, cfg.drain_s, cfg.prog) == (False, 2.5, ["prog"])


def test_serve_opts_U_reads_uid_gid(monkeypatch):
    """-U: $UID and $GID; an unset one leaves the value as it was."""
    monkeypatch.setenv("UID", "71")
    monkeypatch.delenv("GID", raising=False)
    cfg = parse_serve(["-g", "80", "-U", "0", "25", "p"])
    assert (cfg.uid, cfg.gid) == (71, 80)


@pytest.mark.parametrize("args, message", [
    (["-c", "0"], "bad value for -c"), (["-c", "4x"], "bad value for -c"),
    (["-u", "qmaild"], "bad value for -u"), (["-t", ""], "bad value for -t"),
    (["-4"], "ucspi-tcp6"), (["-n", "cert"], "TLS"), (["-y"], "unknown option -y"),
    (["--drain", "-1"], "bad value for --drain"),
    (["--stderr", "loud"], "bad value for --stderr"),
])
def test_serve_opts_refused(args, message):
    with pytest.raises(UsageError, match=message):
        parse_serve([*args, "0", "25", "p"])


def test_serve_opts_value_missing_at_the_end():
    """-c as the last word: no value (a value in the next word is taken, host or not)."""
    with pytest.raises(UsageError, match="-c needs a value"):
        parse_serve(["-c"])
    with pytest.raises(UsageError, match="missing prog"):
        parse_serve(["-l", "0", "25", "p"])  # -l took "0": host 25, port p


def test_serve_opts_help_is_long_only():
    """--help asks for the help; -h is tcpserver's remote-host option."""
    with pytest.raises(InfoRequested):
        parse_serve(["--help"])
    assert parse_serve(["-h", "0", "25", "p"]).remote_host is True


def test_dns_todot_lowercases_and_escapes():
    """dns_domain_todot_cat: a-z0-9-_ kept (lowercased), anything else \\ooo; root is '.'."""
    assert tcpdns._todot([b"MX", b"Example", b"COM"]) == "mx.example.com"
    assert tcpdns._todot([b"a b", b"x.y"]) == "a\\040b.x\\056y"
    assert tcpdns._todot([]) == "."
    assert tcpdns._fromdot("a\\040b.x\\056y") == [b"a b", b"x.y"]


def test_dns_literal_addresses_are_not_asked():
    """dns_ip4: a name of digits and dots is the address(es) it spells."""
    assert tcpdns._literal4("1.2.3.4") == [b"\1\2\3\4"]
    assert tcpdns._literal4("[1.2.3.4]") == [b"\1\2\3\4"]
    assert tcpdns._literal4("mx1.example") is None


@pytest.mark.parametrize("value, servers", [
    ("10.0.0.1", ["10.0.0.1"]),
    ("10.0.0.1.10.0.0.2", ["10.0.0.1", "10.0.0.2"]),  # djbdns: dots between addresses
    ("10.0.0.1 10.0.0.2", ["10.0.0.1"]),  # anything else ends the list
])
def test_dns_servers_from_dnscacheip(monkeypatch, value, servers):
    monkeypatch.setenv("DNSCACHEIP", value)
    assert tcpdns.servers() == servers


def test_dns_reverse_names():
    assert tcpdns._reverse_name("192.0.2.7") == [b"7", b"2", b"0", b"192", b"in-addr", b"arpa"]
    v6 = tcpdns._reverse_name("2001:db8::1")
    assert v6[:2] == [b"1", b"0"] and v6[-2:] == [b"ip6", b"arpa"] and len(v6) == 34


def test_dns_answer_must_match_question():
    """irrelevant(): another id, name or type is not the answer (the wait goes on)."""
    query = b"\x12\x34\1\0\0\1\0\0\0\0\0\0" + tcpdns._wire([b"a", b"b"]) + b"\0\x0c\0\1"
    good = b"\x12\x34\x81\x80" + query[4:]
    assert not tcpdns._irrelevant(good, query)
    assert not tcpdns._irrelevant(good.replace(b"\1a\1b", b"\1A\1B"), query)  # case
    assert tcpdns._irrelevant(b"\x99" + good[1:], query)
    assert tcpdns._irrelevant(good[:-4] + b"\0\1\0\1", query)


@pytest.mark.parametrize("answer, info", [
    (b"6191 , 25 : USERID : UNIX : joe\r\n", "joe"),
    (b"6191,25:USERID:UNIX:j o\te\r\n", "joe"),  # blanks dropped everywhere
    (b"6191 , 25 : ERROR : NO-USER\r\n", ""),  # fewer than 3 colons: set, empty
    (b"6191 , 25 : USERID : UNIX : a:b\r\n", "a:b"),
    (b"6191 , 25 : USERID : UNIX : " + b"x" * 300 + b"\r\n", "x" * 257),
    (b"6191 , 25 : USERID : UNIX : joe", None),  # no LF before EOF: failed
])
def test_ident_answer_read_as_remoteinfo(answer, info):
    a, b = socket.socketpair()
    with a, b:
        b.sendall(answer)
        b.shutdown(socket.SHUT_WR)
        assert tcpenv._read_info(a, time.monotonic() + 5) == info


def test_peer_of_mapped_ipv4_is_plain_ipv4():
    """An IPv4 client of a :: socket is shown as IPv4, as ucspi-tcp6 does."""
    peer = tcpenv.peer_of(("::ffff:192.0.2.7", 25, 0, 0))
    assert (peer.ip, peer.port, peer.v6) == ("192.0.2.7", 25, False)
    peer = tcpenv.peer_of(("2001:db8:0:0:0:0:0:1", 25, 0, 0))
    assert (peer.ip, peer.v6) == ("2001:db8::1", True)
    assert tcpenv.peer_of(("::2", 1, 0, 0)).ip == "::2"  # never ::0.0.0.2
