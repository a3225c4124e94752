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

The seeded volume run draws from the same generator with a seeded PRNG
instead of Hypothesis (which keeps every example it tried, and would not
scale): a few hundred sessions in CI; the deep run, SUPERVISE_SMTP_DEEP=1
(not CI), plays 20,000 through the wrapper under tcpserver and 10^6
through serve.  ``bench/byte_exact.py`` runs the same with progress lines,
a time limit, and one session replayed by its index.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from byte_sessions import (
    HypothesisDraw,
    Server,
    describe,
    play_all,
    play_many,
    script_child,
    session,
)
from conftest import need
from helpers import wrapper_argv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_keys import check_keys

pytestmark = pytest.mark.e2e

# About 10-20 s per mode on the 2-core CI box.
WRAPPER_EXAMPLES = 40
SERVE_EXAMPLES = 60
# The seeded volume run: a few hundred sessions in CI (so that the deep run's
# engine cannot rot), the deep run's counts with SUPERVISE_SMTP_DEEP=1.
DEEP = os.environ.get("SUPERVISE_SMTP_DEEP") == "1"
VOLUME = {"wrapper": 20_000, "serve": 1_000_000} if DEEP else {"wrapper": 40, "serve": 200}
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


@pytest.mark.parametrize("kind", ["wrapper", "serve"])
def test_byte_exact_seeded_volume(kind, tmp_path):
    """Seeded sessions, 16 at a time, all exact: a few hundred in CI; the deep run
    (SUPERVISE_SMTP_DEEP=1) plays 20,000 through the wrapper and 10^6 through serve."""
    server = _server("tcpserver" if kind == "wrapper" else "serve", tmp_path)
    try:
        result = asyncio.run(play_many(server, VOLUME[kind], "volume", concurrency=16))
    finally:
        server.stop()
    assert result["played"] == VOLUME[kind]
    assert result["failed"] == 0, "\n\n".join(result["failures"])  # type: ignore[arg-type]
    assert not server.bad_lines, server.bad_lines
