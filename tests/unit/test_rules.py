"""rules: what no tcprulescheck can check (tests/e2e/test_rules_tcprulescheck.py has
the oracle): the IPv6 keys we define, values tcprules never writes, and the errors
of files that cannot be read.  cdbs here are written with pure-cdb's Writer.
"""

from __future__ import annotations

import errno
import os

import pytest
from cdblib import Writer
from cdblib.djb_hash import djb_hash
from hypothesis import given
from hypothesis import strategies as st

from supervise_smtp.serve.rules import Rule, RulesError, lookup, lookup_keys, parse_value

V6 = "2001:db8::1"
V6_EXPLODED = "2001:0DB8:0000:0000:0000:0000:0000:0001"


def write_cdb(path, records):
    """A cdb holding ``records`` ((key, value) str/bytes pairs), in that order."""
    with open(path, "wb") as f, Writer(f) as writer:
        for key, value in records:
            writer.put(os.fsencode(key), value)
    return str(path)


def test_ipv6_keys_both_spellings_then_colon_prefixes():
    """IPv6: ucspi-tcp6's exploded key, the compressed one, then prefixes ending in ':'."""
    assert list(lookup_keys(V6, "joe", "h.example.com")) == [
        f"joe@{V6_EXPLODED}", f"joe@{V6}", "joe@=h.example.com",
        V6_EXPLODED, V6, "=h.example.com",
        "2001:db8::", "2001:db8:", "2001:",
        "=.example.com", "=.com", "=", ""]


def test_ipv6_any_spelling_and_scope_give_the_same_keys():
    """The address is normalised: upper case, leading zeros, a scope id change nothing."""
    expected = list(lookup_keys("fe80::a:1"))
    assert list(lookup_keys("FE80:0:0:0:0:0:000A:0001%eth0")) == expected
    assert expected[:2] == ["FE80:0000:0000:0000:0000:0000:000A:0001", "fe80::a:1"]


def test_ipv4_mapped_is_looked_up_as_ipv4():
    """::ffff:a.b.c.d has exactly the keys of a.b.c.d."""
    assert list(lookup_keys("::ffff:10.1.2.3", "i", "h")) == list(lookup_keys("10.1.2.3", "i", "h"))


def test_ipv6_unspecified_address_keys():
    """``::`` (serve's wildcard) still ends with the empty key."""
    assert list(lookup_keys("::")) == ["0000:0000:0000:0000:0000:0000:0000:0000", "::",
                                       "::", ":", ""]


def test_not_an_address_with_colon_is_value_error():
    """A TCPREMOTEIP with ':' that is no IPv6 address is the caller's bug."""
    with pytest.raises(ValueError):
        list(lookup_keys("1:2:3"))


def test_ipv6_lookup_finds_exploded_compressed_and_prefix_keys(tmp_path):
    """The three IPv6 spellings a cdb can hold are found, in the documented order."""
    path = write_cdb(tmp_path / "v6.cdb", [
        (V6_EXPLODED, b"+FORM=exploded\0"), (V6, b"+FORM=compressed\0"),
        ("2001:db8:", b"D\0"), ("", b"+DEFAULT=1\0")])
    assert lookup(path, V6) == Rule(True, (("FORM", "exploded"),), V6_EXPLODED)
    assert lookup(path, "2001:db8::2") == Rule(False, (), "2001:db8:")
    assert lookup(path, "2001:db9::1") == Rule(True, (("DEFAULT", "1"),), "")
    only_compressed = write_cdb(tmp_path / "c.cdb", [(V6, b"+FORM=compressed\0")])
    assert lookup(only_compressed, "2001:0db8::0001").env == (("FORM", "compressed"),)


@pytest.mark.parametrize(("value", "rule"), [
    (b"", Rule(True, (), "k")),
    (b"+A=1\0+B=\0+A=2\0", Rule(True, (("A", "1"), ("B", ""), ("A", "2")), "k")),
    (b"D\0+X=1\0", Rule(False, (), "k")),
    (b"+X=1\0D\0", Rule(False, (), "k")),
    (b"+NOEQUALS\0+Y=a=b\0", Rule(True, (("Y", "a=b"),), "k")),
    (b"+Z=unterminated", Rule(True, (), "k")),
    (b"D", Rule(True, (), "k")),
    (b"\0X\0-A\0+=v\0", Rule(True, (("", "v"),), "k")),
], ids=["empty", "several", "deny-first", "deny-later", "no-equals", "no-nul", "d-no-nul",
        "others"])
def test_values_read_as_tcpserver_found_reads_them(value, rule):
    """Entries end at NUL; D denies; +NAME=value sets; anything else is ignored."""
    assert parse_value("k", value) == rule


@given(st.lists(st.tuples(st.binary(max_size=6).filter(lambda b: b"=" not in b and b"\0" not in b),
                          st.binary(max_size=8).filter(lambda b: b"\0" not in b)), max_size=5))
def test_settings_round_trip_through_fsencode(settings):
    """Names and values of any bytes come back as str that os.fsencode turns back into them."""
    value = b"".join(b"+" + name + b"=" + val + b"\0" for name, val in settings)
    rule = parse_value("k", value)
    assert rule.allow
    assert [(os.fsencode(n), os.fsencode(v)) for n, v in rule.env] == settings


def test_rule_has_slots():
    """Rule is small and immutable: serve keeps one per connection."""
    rule = Rule(True, (("A", "1"),), "")
    assert not hasattr(rule, "__dict__")
    with pytest.raises(AttributeError):
        rule.allow = False  # type: ignore[misc]


def test_missing_cdb_is_enoent(tmp_path):
    """ENOENT: the one error -X turns into "allow with no rule"."""
    with pytest.raises(RulesError) as caught:
        lookup(str(tmp_path / "absent.cdb"), "1.2.3.4")
    assert caught.value.errno == errno.ENOENT
    assert str(caught.value) == f"unable to read {tmp_path / 'absent.cdb'}: {os.strerror(2)}"


def test_directory_is_eisdir(tmp_path):
    """A directory cannot be mapped nor read (tcpserver crashes on it): a drop."""
    with pytest.raises(RulesError) as caught:
        lookup(str(tmp_path), "1.2.3.4")
    assert caught.value.errno == errno.EISDIR


@pytest.mark.parametrize("size", [0, 7])
def test_file_shorter_than_one_table_pair_is_eproto(tmp_path, size):
    """Empty, or not even the first (position, slots) pair: every lookup fails."""
    path = tmp_path / "short.cdb"
    path.write_bytes(b"\0" * size)
    with pytest.raises(RulesError) as caught:
        lookup(str(path), "1.2.3.4", "joe", "h.example.com")
    assert caught.value.errno == errno.EPROTO


def test_table_cut_fails_only_the_keys_that_need_the_missing_pair(tmp_path):
    """Cut inside the last pair: as cdb reads one pair per key, only a lookup that
    reaches a key of table 255 fails; the others see empty tables."""
    path = tmp_path / "cut.cdb"
    path.write_bytes(b"\0" * 2047)
    last_table = [ip for ip in (f"10.0.{i}.{j}" for i in range(20) for j in range(20))
                  if djb_hash(ip.encode()) & 255 == 255]
    assert lookup(str(path), "10.0.0.0") is None  # 10.0.0.0, 10.0.0., 10.0., 10., ""
    assert all(djb_hash(key.encode()) & 255 != 255 for key in lookup_keys("10.0.0.0"))
    with pytest.raises(RulesError) as caught:
        lookup(str(path), last_table[0])
    assert caught.value.errno == errno.EPROTO


def test_no_matching_key_is_none(tmp_path):
    """No rule for the address and no empty rule: None (tcpserver allows, env unchanged)."""
    path = write_cdb(tmp_path / "r.cdb", [("1.2.3.4", b"D\0")])
    assert lookup(path, "1.2.3.5", "joe", "h") is None
