"""argv.py, the one getopt: option strings, value-taking letters, bundled words."""

from __future__ import annotations

import pytest

from supervise_smtp.argv import (
    CHPST_OPTSTRING,
    SOFTLIMIT_OPTSTRING,
    TCPSERVER_OPTSTRING,
    bundle,
    getopt,
    takes_value,
)


def test_argv_takes_value_reads_the_colons():
    """tcpserver(1): -x -t -u -g -l -b -B -c take a value; softlimit's all do; chpst's -/ too."""
    assert takes_value(TCPSERVER_OPTSTRING) == frozenset("xtuglbBc")
    assert takes_value(SOFTLIMIT_OPTSTRING) == frozenset("acdflmoprst")
    assert "/" in takes_value(CHPST_OPTSTRING) and "v" not in takes_value(CHPST_OPTSTRING)


@pytest.mark.parametrize(("word", "want"), [
    ("-vRl0", (["v", "R"], "l", "0")),
    ("-vRl", (["v", "R"], "l", None)),
    ("-vR", (["v", "R"], None, None)),
    ("-c40", ([], "c", "40")),
    ("-x", ([], "x", None)),
    ("-zv", (["z", "v"], None, None)),  # unknown letters are the caller's to refuse
])
def test_argv_bundle_splits_a_word_as_sgetopt(word, want):
    """A bundled word: the flags, the letter that takes a value, and that value if attached."""
    assert bundle(word, takes_value(TCPSERVER_OPTSTRING)) == want


def test_argv_getopt_stops_at_the_first_operand():
    """Options until a word not starting with '-', '-' itself, '--' (skipped) or unknown."""
    words = ["-vRl0", "-c", "40", "0", "smtp"]
    assert getopt(words, 0, TCPSERVER_OPTSTRING) == (3, ["v", "R", "l", "c"])
    assert getopt(["-v", "--", "-x"], 0, TCPSERVER_OPTSTRING) == (2, ["v"])
    assert getopt(["-v", None, "x"], 0, TCPSERVER_OPTSTRING) == (1, ["v"])
