"""serve -x: the same decisions and variables as tcpserver -x, on one cdb made by tcprules.

tcpserver and serve listen side by side with the same options and the same
rules.cdb (written by the real ``tcprules``); clients connect from several
loopback addresses (127.0.0.1, 127.0.0.2, 127.0.1.1...: all of 127/8 is
local), and for each the program's environment, what the client receives and
the status each server logs (25600 for a denied connection, 28416 for a
dropped one) must be the same.  The rules cover an exact address, a deny,
prefixes, variables set (one overriding tcpserver's own TCPLOCALHOST) and the
empty rule; =host and info@ip rules use the fake resolver and identd of
test_serve.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import test_serve
from helpers import poll_until, recv_until_eof, wrapper_argv
from test_serve import DNS_IP, SHOW_ENV, Listener, script, wire

pytestmark = pytest.mark.e2e
pytest.importorskip("supervise_smtp.serve.rules")

# test_serve.py's fixtures, by name
both = test_serve.both
public_dir = test_serve.public_dir
fake_dns = test_serve.fake_dns
fake_identd = test_serve.fake_identd

RULES = """\
127.0.0.1:allow,WHO="exact"
127.0.0.2:deny
127.0.0.:allow,WHO="prefix3",RELAYCLIENT=""
127.0.:allow,WHO="prefix2",TCPLOCALHOST="overridden"
=named.example:allow,WHO="byname"
Ident-User@127.0.0.9:allow,WHO="ident"
:allow,WHO="empty rule"
"""
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.1.1", "127.1.1.1"]


def tcprules(directory: Path, text: str) -> str:
    """A cdb written by the real tcprules from ``text``."""
    cdb = directory / "rules.cdb"
    subprocess.run(["tcprules", str(cdb), str(directory / "rules.tmp")], input=text.encode(),
                   check=True, timeout=30)
    return str(cdb)


def talk_from(server: Listener, source: str) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=15,
                                  source_address=(source, 0)) as sock:
        sock.shutdown(socket.SHUT_WR)
        return recv_until_eof(sock)


def normal(text: bytes) -> list[bytes]:
    """The program's view without the ports (each server and client has its own)."""
    return [line for line in text.splitlines()
            if not line.startswith((b"TCPREMOTEPORT=", b"TCPLOCALPORT="))]


def compare(ts: Listener, sv: Listener, sources: list[str]) -> list[tuple[bytes, int]]:
    """Each source against both servers: same view and same status; [(view, status)]."""
    out = []
    for source in sources:
        before = ts.ends(), sv.ends()
        a, b = talk_from(ts, source), talk_from(sv, source)
        assert normal(a) == normal(b), source
        status = []
        for server, seen in zip((ts, sv), before, strict=True):
            ends = server.end_statuses(len(seen) + 1)
            [(_, new)] = ends[len(seen):]
            status.append(new)
        assert status[0] == status[1], (source, ts.log(), sv.log())
        out.append((b, status[1]))
    return out


@pytest.fixture
def rules_cdb(tmp_path: Path, need) -> str:
    need("tcprules")
    return tcprules(tmp_path, RULES)


def test_serve_rules_match_tcpserver(both, public_dir, rules_cdb):
    """Exact, deny, prefix and empty rules: same decision, variables and status as tcpserver."""
    prog = script(public_dir, "show-env", SHOW_ENV)
    ts, sv = both(["-v", "-HR", "-l", "0", "-x", rules_cdb], [prog])
    got = dict(zip(SOURCES, compare(ts, sv, SOURCES), strict=True))
    assert got["127.0.0.2"] == (b"", 100 << 8)  # denied: the worker exits 100
    assert b"WHO=exact" in got["127.0.0.1"][0]
    assert b"RELAYCLIENT=\n" in got["127.0.0.3"][0]
    assert b"TCPLOCALHOST=overridden" in got["127.0.1.1"][0]
    assert b"WHO=empty rule" in got["127.1.1.1"][0]
    assert "event=deny remote=127.0.0.2 " in sv.log()
    # one reused worker served every source, 127.0.0.3's RELAYCLIENT and all:
    # nothing of one connection's environment reached the next
    assert len({pid for pid, _ in sv.ends()}) == 1, sv.log()


def test_serve_rules_by_name_and_ident_match_tcpserver(both, public_dir, rules_cdb, fake_dns,
                                                      fake_identd):
    """=host rules (-h, the name from DNS) and info@ip rules (ident) as tcpserver reads them."""
    fake_dns[("5.0.0.127.in-addr.arpa", 12)] = [wire("Named.Example")]
    prog = script(public_dir, "show-env", SHOW_ENV)
    env = dict(os.environ, DNSCACHEIP=DNS_IP)
    ts, sv = both(["-v", "-r", "-t", "5", "-l", "0", "-x", rules_cdb], [prog], env=env)
    got = compare(ts, sv, ["127.0.0.5", "127.0.0.9"])
    assert b"WHO=byname" in got[0][0] and b"TCPREMOTEHOST=named.example" in got[0][0]
    assert b"WHO=ident" in got[1][0]


@pytest.mark.parametrize("allow_missing", [False, True], ids=["dropped", "X-allows"])
def test_serve_missing_rules_file_like_tcpserver(both, public_dir, tmp_path, allow_missing):
    """-x on a file that does not exist: dropped (111), or allowed with -X, as tcpserver does."""
    prog = script(public_dir, "hello", "echo hi\n")
    opts = ["-v", "-HR", "-l0", "-x", str(tmp_path / "missing.cdb")]
    ts, sv = both([*opts, "-X"] if allow_missing else opts, [prog])
    [(view, status)] = compare(ts, sv, ["127.0.0.1"])
    assert (view, status) == ((b"hi\n", 0) if allow_missing else (b"", 111 << 8))
    if not allow_missing:
        assert "event=drop remote=127.0.0.1 " in sv.log() and "where=rules" in sv.log()


def test_serve_rules_rebuilt_take_effect_at_once(both, public_dir, tmp_path, need):
    """tcprules rewrites the cdb while both run: the next connection follows the new rules."""
    need("tcprules")
    cdb = tcprules(tmp_path, ":allow\n")
    prog = script(public_dir, "hello", "echo hi\n")
    ts, sv = both(["-v", "-HR", "-l0", "-x", cdb], [prog])
    assert compare(ts, sv, ["127.0.0.1"]) == [(b"hi\n", 0)]
    tcprules(tmp_path, ":deny\n")
    assert compare(ts, sv, ["127.0.0.1"]) == [(b"", 100 << 8)]


def test_serve_alert_exec_gets_the_rules_variables_like_tcpserver(public_dir, tmp_path, need):
    """The alert program sees the connection's environment, the rule's variables with it,
    under serve as under tcpserver + wrapper: one environment per connection."""
    need("tcprules")
    cdb = tcprules(tmp_path, '127.0.0.3:allow,RELAYCLIENT="",X="y"\n:allow\n')
    dumps = {kind: public_dir / f"alert-{kind}.env" for kind in ("tcpserver", "serve")}
    alert = script(public_dir, "alert", 'env > "$DUMP.tmp" && mv "$DUMP.tmp" "$DUMP"\n')
    child = script(public_dir, "crash", "echo '220 hi'; exit 3\n")
    # the client closes at once: client_lost_after_banner or server_crashed
    opts = ["--alert-exec", alert, "--alert-on", "client_lost_after_*,server_crashed"]
    for kind, dump in dumps.items():
        env = dict(os.environ, DUMP=str(dump))
        tcp_opts = ["-v", "-HR", "-l", "0", "-x", cdb]
        if kind == "tcpserver":
            server = Listener(kind, tcp_opts, [*wrapper_argv(), *opts, "--", child], tmp_path,
                              env=env)
        else:  # serve takes the wrapper's options before host and port
            server = Listener(kind, [*tcp_opts, *opts], [child], tmp_path, env=env)
        try:
            assert talk_from(server, "127.0.0.3").startswith(b"220 hi")
            poll_until(f"{kind}'s alert", dump.exists)
        finally:
            server.stop()
        seen = dump.read_bytes().splitlines()
        assert b"RELAYCLIENT=" in seen and b"X=y" in seen, (kind, seen)
        assert b"TCPREMOTEIP=127.0.0.3" in seen, (kind, seen)  # this connection's own
        assert any(v.startswith(b"SUPERVISE_SMTP_VERDICT=") for v in seen), (kind, seen)
