"""rules.lookup against the real tcprulescheck, on cdbs written by the real tcprules.

tcprulescheck runs tcpserver's own rules code on TCPREMOTEIP, TCPREMOTEINFO and
TCPREMOTEHOST and prints what tcpserver would do; it is the oracle here: every
expected answer comes from it, none is typed into a test.  Its output:

    rule KEY:                         (or "default:" when no key matched)
    set environment variable NAME=VALUE   (one per setting, in order)
    allow connection | deny connection

and "tcprulescheck: fatal: unable to read CDB: ERROR" with exit 111 when the
cdb cannot be read.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import need
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervise_smtp.serve.rules import RulesError, lookup

pytestmark = pytest.mark.e2e

TIMEOUT_S = 10
SET = b"set environment variable "
# djb's error_str() texts for the errno values a rules cdb can fail with
DJB_ERRORS = {errno.ENOENT: "file does not exist", errno.EPROTO: "protocol error",
              errno.EACCES: "access denied"}

# Allow, deny, ranges, prefixes, =host, =.domain, =, info@ip, info@=host,
# settings (set, set to empty, several, odd quotes and characters), a
# duplicate address (the first wins) and the empty rule.
RULES = """\
# a comment
1.2.3.4:deny
1.2.3.5:allow
1.2.3.:allow,A="x",B="",C='q"z'
1.2.:allow,RELAYCLIENT=""
10.0.0.1-3:deny,NOT="seen"
10.:allow,TEN="1"
joe@1.2.3.4:allow,WHO="joe"
joe@=mail.example.com:allow,WHO="joe by name"
=mail.example.com:allow,H="1",RELAYCLIENT="@fix.me"
=.example.org:deny
=example.org:allow,APEX="1"
=:allow,NAMED="yes"
127.0.0.1:allow,RELAYCLIENT="",TCPLOCALHOST="movie.edu"
1.2.3.5:deny
:allow,DEFAULT="1",ODD=/a b, c=d:e "é"/
"""

IPS = ["1.2.3.4", "1.2.3.5", "1.2.3.9", "1.2.9.9", "1.9.9.9", "10.0.0.1", "10.0.0.3",
       "10.0.0.4", "10.1.2.3", "127.0.0.1", "9.9.9.9", "1.2.3.", "0.0.0.0"]
INFOS = [None, "joe", "bob", ""]
HOSTS = [None, "mail.example.com", "a.b.example.org", "example.org", ".example.org", "x", ""]


def compile_rules(text: str, directory: Path) -> Path:
    """The cdb that the real tcprules writes for ``text``."""
    cdb = directory / "rules.cdb"
    subprocess.run([need("tcprules"), str(cdb), str(directory / "rules.tmp")],
                   input=text.encode(), check=True, timeout=TIMEOUT_S)
    return cdb


def oracle(cdb: Path, ip: str, info: str | None, host: str | None) -> tuple:
    """What tcprulescheck says tcpserver does: ("error", text), ("default",) or a rule."""
    env = {"TCPREMOTEIP": ip}
    if info is not None:
        env["TCPREMOTEINFO"] = info
    if host is not None:
        env["TCPREMOTEHOST"] = host
    run = subprocess.run([need("tcprulescheck"), str(cdb)], env=env, capture_output=True,
                         timeout=TIMEOUT_S)
    if run.returncode == 111:
        prefix = f"tcprulescheck: fatal: unable to read {cdb}: ".encode()
        assert run.stderr.startswith(prefix), run.stderr
        return ("error", run.stderr[len(prefix):].decode().strip())
    assert run.returncode == 0, run
    return parse_tcprulescheck(run.stdout)


def parse_tcprulescheck(out: bytes) -> tuple:
    """tcprulescheck's report as ("default",) or ("rule", key, allow, settings)."""
    head, *body = out.rstrip(b"\n").split(b"\n")
    decision = body.pop()
    assert decision in (b"allow connection", b"deny connection"), out
    if head == b"default:":
        assert (body, decision) == ([], b"allow connection"), out
        return ("default",)
    assert head.startswith(b"rule ") and head.endswith(b":"), out
    assert all(line.startswith(SET) for line in body), out
    settings = tuple(tuple(os.fsdecode(part) for part in line[len(SET):].split(b"=", 1))
                     for line in body)
    return ("rule", os.fsdecode(head[5:-1]), decision == b"allow connection", settings)


def ours(cdb: Path, ip: str, info: str | None, host: str | None) -> tuple:
    """rules.lookup's answer in the oracle's shape (errors as djb's error text)."""
    try:
        rule = lookup(str(cdb), ip, info, host)
    except RulesError as err:
        return ("error", DJB_ERRORS.get(err.errno, err.strerror))
    if rule is None:
        return ("default",)
    return ("rule", rule.key, rule.allow, rule.env)


def test_rules_match_tcprulescheck_for_every_address(tmp_path):
    """Every address, with and without TCPREMOTEINFO and TCPREMOTEHOST, gets
    tcprulescheck's rule, decision and settings."""
    cdb = compile_rules(RULES, tmp_path)
    seen = set()
    for ip in IPS:
        for info in INFOS:
            for host in HOSTS:
                expected = oracle(cdb, ip, info, host)
                assert ours(cdb, ip, info, host) == expected, (ip, info, host)
                seen.add(expected[:2])
    keys = {key for kind, key in seen if kind == "rule"}
    assert len(keys) >= 14, keys  # the matrix reaches (almost) every rule


@pytest.mark.parametrize("last", ["", ":deny\n", "=:deny\n"], ids=["none", "deny", "named"])
def test_rules_without_a_default_rule_match_tcprulescheck(tmp_path, last):
    """With no empty rule (or a denying one), unmatched addresses fall through the same way."""
    cdb = compile_rules("1.2.:allow,X=\"1\"\n=.example.org:allow\n" + last, tmp_path)
    for ip in ["1.2.3.4", "9.9.9.9"]:
        for host in [None, "a.example.org", "example.com"]:
            assert ours(cdb, ip, "joe", host) == oracle(cdb, ip, "joe", host), (ip, host)


def test_missing_cdb_is_enoent_as_in_tcprulescheck(tmp_path):
    """A cdb that does not exist: tcprulescheck cannot read it, lookup raises ENOENT."""
    cdb = tmp_path / "absent.cdb"
    expected = oracle(cdb, "1.2.3.4", None, None)
    assert expected == ("error", DJB_ERRORS[errno.ENOENT])
    assert ours(cdb, "1.2.3.4", None, None) == expected


def test_rebuild_takes_effect_at_once(tmp_path):
    """lookup opens the cdb on every call: a tcprules rebuild answers the next one."""
    cdb = compile_rules("1.2.3.4:allow\n", tmp_path)
    assert ours(cdb, "1.2.3.4", None, None) == oracle(cdb, "1.2.3.4", None, None)
    compile_rules("1.2.3.4:deny\n", tmp_path)
    after = oracle(cdb, "1.2.3.4", None, None)
    assert after[2] is False
    assert ours(cdb, "1.2.3.4", None, None) == after


QUERIES = [(ip, info, host) for ip in ["1.2.3.4", "1.2.3.9", "10.0.0.2", "9.9.9.9"]
           for info in [None, "joe"] for host in [None, "mail.example.com", "a.example.org"]]


def test_truncated_cdb_fails_where_tcprulescheck_fails(tmp_path):
    """A cdb cut at any length: the same addresses fail (EPROTO, "protocol error")
    and the others get the same rule as under tcprulescheck."""
    whole = compile_rules(RULES, tmp_path).read_bytes()
    cut = tmp_path / "cut.cdb"
    lengths = sorted({0, 1, 8, 1000, 2040, 2047, 2048, 2049, len(whole) - 1,
                      *range(2048, len(whole), 37)})
    outcomes = set()
    for length in lengths:
        cut.write_bytes(whole[:length])
        for query in QUERIES:
            expected = oracle(cut, *query)
            got = ours(cut, *query)
            if length == 0:  # tcpserver reports EINVAL here (its failed munmap): still an error
                assert expected == ("error", "invalid argument")
                assert got == ("error", DJB_ERRORS[errno.EPROTO])
                continue
            assert got == expected, (length, query)
            outcomes.add(expected[0])
    assert outcomes == {"error", "rule", "default"} or outcomes == {"error", "rule"}


@st.composite
def rule_lines(draw) -> str:
    """One tcprules line: an address from a small universe, deny or allow, settings."""
    octet = st.sampled_from(["1", "2", "10"])
    host = st.sampled_from(["mail.example.com", "a.example.org", "example.org", "x"])
    ip = st.lists(octet, min_size=1, max_size=4).map(".".join)
    address = draw(st.one_of(
        ip, ip.map(lambda a: a + "." if a.count(".") < 3 else a),
        st.tuples(octet, octet, st.integers(0, 3), st.integers(0, 3)).map(
            lambda t: f"{t[0]}.{t[1]}.{min(t[2:])}-{max(t[2:])}"),
        host.map(lambda h: "=" + h), host.map(lambda h: "=" + h[h.find("."):]),
        st.just("="), st.just(""),
        st.tuples(st.sampled_from(["joe", "bob"]), ip).map("@".join),
        st.tuples(st.sampled_from(["joe", "bob"]), host).map(lambda t: f"{t[0]}@={t[1]}"),
    ))
    line = address + ":" + draw(st.sampled_from(["allow", "deny"]))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.from_regex(r"[A-Z_]{1,3}", fullmatch=True))
        quote = draw(st.sampled_from("\"'/|"))
        value = draw(st.text(st.characters(codec="utf-8", exclude_characters=quote + "\n\0\r",
                                           exclude_categories=("Cs",)), max_size=8))
        line += f",{name}={quote}{value}{quote}"
    return line + "\n"


QUERY = st.tuples(
    st.lists(st.sampled_from(["1", "2", "10", "3"]), min_size=4, max_size=4).map(".".join),
    st.sampled_from([None, "joe", "bob"]),
    st.sampled_from([None, "mail.example.com", "a.example.org", "example.org", "y"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(rule_lines(), max_size=12), queries=st.lists(QUERY, min_size=1, max_size=8))
def test_generated_rules_match_tcprulescheck(lines, queries):
    """Any rules file of the universe above answers every query as tcprulescheck does."""
    with tempfile.TemporaryDirectory() as directory:
        cdb = compile_rules("".join(lines), Path(directory))
        for query in queries:
            assert ours(cdb, *query) == oracle(cdb, *query), query


@settings(max_examples=80, deadline=None)
@given(lines=st.lists(rule_lines(), min_size=1, max_size=8), cut=st.floats(0.0, 1.0),
       query=QUERY)
def test_generated_truncations_match_tcprulescheck(lines, cut, query):
    """A generated cdb cut anywhere past its first byte fails or answers as tcprulescheck."""
    with tempfile.TemporaryDirectory() as directory:
        cdb = compile_rules("".join(lines), Path(directory))
        whole = cdb.read_bytes()
        cdb.write_bytes(whole[:max(1, int(cut * len(whole)))])
        assert ours(cdb, *query) == oracle(cdb, *query)


def assemble(records: Sequence[tuple[bytes, bytes]], lies: Sequence[tuple[bytes, bytes]] = (),
             full: bool = False) -> bytes:
    """A cdb laid out as cdb.txt allows but tcprules never writes: hash tables first.

    ``records`` are (key, data), written in that order after the tables; each of
    ``lies`` is a slot that carries the hash of a key but points at the record of
    another key, placed before that key's own slot.  ``full`` leaves no empty
    slot in any table.  With the records last, a cut can leave every slot
    readable and a record short.
    """
    from cdblib.djb_hash import djb_hash

    entries: list[list[tuple[int, bytes]]] = [[] for _ in range(256)]
    for hashed_key, target in [*lies, *((key, key) for key, _ in records)]:
        entries[djb_hash(hashed_key) & 255].append((djb_hash(hashed_key), target))
    slots = [len(table) * (1 if full else 2) for table in entries]
    table_pos, pos = [], 2048
    for count in slots:
        table_pos.append(pos)
        pos += 8 * count
    record_pos = {}
    for key, data in records:
        record_pos[key] = pos
        pos += 8 + len(key) + len(data)
    pairs = zip(table_pos, slots, strict=True)
    out = bytearray(b"".join(struct.pack("<LL", p, n) for p, n in pairs))
    for table, count in zip(entries, slots, strict=True):
        filled: list[tuple[int, int] | None] = [None] * count
        for hashed, target in table:
            where = (hashed >> 8) % count
            while filled[where] is not None:
                where = (where + 1) % count
            filled[where] = (hashed, record_pos[target])
        out += b"".join(struct.pack("<LL", *(slot or (0, 0))) for slot in filled)
    for key, data in records:
        out += struct.pack("<LL", len(key), len(data)) + key + data
    return bytes(out)


LONG = b"x" * 40
ODD_RECORDS = [
    (b"1.2.3.", b"+P=1\0"),
    (b"", b"+DEFAULT=1\0"),
    (b"y" * 40 + b"@1.2.3.4", b"+FAKE=first chunk differs\0"),
    (b"x" * 32 + b"z" * 8 + b"@1.2.3.4", b"+FAKE=second chunk differs\0"),
    (b"q" * 10, b"+FAKE=other length\0"),
    (LONG + b"@1.2.3.4", b"+WHO=x\0+LAST=1\0"),
]
ODD_LIES = [(LONG + b"@1.2.3.4", b"y" * 40 + b"@1.2.3.4"),
            (LONG + b"@1.2.3.4", b"x" * 32 + b"z" * 8 + b"@1.2.3.4"),
            (b"1.2.3.", b"q" * 10)]
ODD_QUERIES = [("1.2.3.4", LONG.decode(), None), ("1.2.3.4", None, None),
               ("1.2.3.9", LONG.decode(), None), ("9.9.9.9", None, "a.example.org")]


@pytest.mark.parametrize("last", range(len(ODD_RECORDS)))
def test_records_cut_short_fail_only_where_tcprulescheck_fails(tmp_path, last):
    """Slots readable, the last record cut anywhere: a key compared or data read past
    the end fails as under tcprulescheck; a record that cdb skips (other length, a
    differing first 32 bytes, data of a key not sought) does not.  Each record is
    the last one once."""
    records = ODD_RECORDS[last + 1:] + ODD_RECORDS[:last + 1]
    whole = assemble(records, ODD_LIES)
    cdb = tmp_path / "odd.cdb"
    key, data = records[-1]
    outcomes = []
    for length in range(len(whole) - len(key) - len(data) - 9, len(whole) + 1):
        cdb.write_bytes(whole[:length])
        for query in ODD_QUERIES:
            expected = oracle(cdb, *query)
            assert ours(cdb, *query) == expected, (length, query)
            outcomes.append(expected[0])
    assert "rule" in outcomes


def test_full_hash_table_ends_after_one_round_as_in_tcprulescheck(tmp_path):
    """A table with no empty slot and no match: cdb gives up after one round (pure-cdb
    alone would probe forever); lookup then goes on to the next key, as tcprulescheck."""
    records = [(b"1.2.3.4", b"D\0"), (b"", b"+DEFAULT=1\0")]
    lies = [(b"9.9.9.9", b"1.2.3.4")] * 3 + [(b"9.9.9.", b"1.2.3.4")] * 2
    cdb = tmp_path / "full.cdb"
    cdb.write_bytes(assemble(records, lies, full=True))
    def hung(signum, frame):
        raise TimeoutError("lookup still probing a full table")

    previous = signal.signal(signal.SIGALRM, hung)  # a regression would hang: fail instead
    signal.alarm(20)
    try:
        for query in [("9.9.9.9", None, None), ("1.2.3.4", None, None), ("9.9.9.1", "j", "x")]:
            assert ours(cdb, *query) == oracle(cdb, *query), query
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
