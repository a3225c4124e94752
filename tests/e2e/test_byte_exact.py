"""Byte-exactness through the real processes, both ways, on generated sessions.

Hypothesis generates sessions (tests/byte_sessions.py): SMTP commands and
replies, DATA bodies with every kind of line ending, NUL, 8-bit bytes,
2000-byte lines, smuggling shapes (``\\n.\\n``, ``\\r.\\r``...), BDAT
chunks, TLS-looking records and binary junk, each step cut into random
chunks with random pauses, lock-step or pipelined, on both sides.  Each
batch of sessions runs at once through one server started for the module:
the wrapper under a real tcpserver, and ``supervise-smtp serve``, both with
the default options (observe mode).  The child, tests/fakes/script_child.c,
plays the server's side from a script and records what it read.

Each session must arrive exactly: the client receives the child's bytes
and the child records the client's bytes, byte for byte; the summary
counts them (``bytes_in``, ``bytes_out``) and passes the child's exit code
on; and every line the server wrote parses strictly, with keys from
tests/log_keys.py.

The deep runs (10^6 sessions through serve, 20,000 through the wrapper
under tcpserver) are ``bench/byte_exact.py``: same generator, a seeded
PRNG instead of Hypothesis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from byte_sessions import HypothesisDraw, Server, describe, play_all, script_child, session
from conftest import need
from helpers import wrapper_argv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_keys import check_keys

pytestmark = pytest.mark.e2e

# About 10-20 s per mode on the 2-core CI box; the deep runs are in bench/.
WRAPPER_EXAMPLES = 40
SERVE_EXAMPLES = 60
SETTINGS = dict(deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def sessions(draw):
    return session(HypothesisDraw(draw))


batches = st.lists(sessions(), min_size=1, max_size=3)


def _server(kind: str, workdir: Path) -> Server:
    child = str(script_child())
    child_dir = workdir / "child"
    child_dir.mkdir()
    if kind == "tcpserver":
        need("tcpserver")
        return Server(["tcpserver"], [*wrapper_argv(), "--", child], child_dir,
                      check_line=check_keys)
    return Server([*wrapper_argv(), "serve"], [child], child_dir, check_line=check_keys)


@pytest.fixture(scope="module")
def under_tcpserver(tmp_path_factory) -> Iterator[Server]:
    """One tcpserver running the wrapper around script_child, for every example."""
    server = _server("tcpserver", tmp_path_factory.mktemp("tcpserver"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def under_serve(tmp_path_factory) -> Iterator[Server]:
    """One ``supervise-smtp serve`` running script_child, for every example."""
    server = _server("serve", tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()


def _check(server: Server, batch) -> None:
    played = asyncio.run(play_all(server, batch))
    bad = [p for p in played if p.problems]
    assert not bad, "\n\n".join(describe(p) for p in bad)
    assert not server.bad_lines, server.bad_lines


@settings(max_examples=WRAPPER_EXAMPLES, **SETTINGS)
@given(batch=batches)
def test_byte_exact_wrapper_under_tcpserver(under_tcpserver, batch):
    """Generated sessions through tcpserver and the wrapper arrive exactly, both ways."""
    _check(under_tcpserver, batch)


@settings(max_examples=SERVE_EXAMPLES, **SETTINGS)
@given(batch=batches)
def test_byte_exact_serve(under_serve, batch):
    """Generated sessions through ``supervise-smtp serve`` arrive exactly, both ways."""
    _check(under_serve, batch)
