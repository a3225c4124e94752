"""Fixtures shared by the whole suite: binaries, the wrapper command, tcpserver.

Under CI (``CI=true``) a missing binary fails the test instead of skipping
it, so that a broken CI image can never turn the end-to-end suite green.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import TcpServer, events, set_subreaper, wrapper_argv  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Signals as a supervisor leaves them: a suite started under nohup (HUP
    ignored) would hand that to every wrapper and child it runs, and a shell
    cannot trap a signal ignored on entry -- the HUP tests would hang."""
    import signal

    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


# What starts a server (tcpserver, serve, a supervisor): the fixtures that do,
# and the helpers a test may call itself.  Such a test is marked ``server``;
# the fast lane, ``pytest -m "not server"``, runs everything else.
_SERVER_FIXTURES = frozenset({"tcpserver", "serve", "both", "service", "runit_service",
                              "installed"})
_SERVER_CALLS = ("Listener(", "TcpServer(", "ServeServer(", "Service(", "tcpserver(",
                 "serve(", "both(", "runit_service(")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``server`` every test that starts one (all of e2e, and any other that
    calls a server fixture or helper)."""
    import inspect

    for item in items:
        starts = "e2e" in item.keywords or bool(_SERVER_FIXTURES & set(
            getattr(item, "fixturenames", ())))
        if not starts:
            try:
                source = inspect.getsource(item.function)  # type: ignore[attr-defined]
            except (AttributeError, OSError, TypeError):
                source = ""
            starts = any(call in source for call in _SERVER_CALLS)
        if starts:
            item.add_marker(pytest.mark.server)


def in_ci() -> bool:
    """True when running under CI, where nothing may be skipped for lack of a binary."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def need(binary: str) -> str:
    """Path of ``binary``; fails under CI and skips elsewhere when it is missing."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{binary} not installed (run scripts/bootstrap.sh)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(name="need")
def need_fixture() -> Callable[[str], str]:
    """The ``need(binary)`` helper, as a fixture."""
    return need


@pytest.fixture
def wrapper() -> list[str]:
    """argv prefix that runs supervise-smtp with the interpreter under test."""
    return wrapper_argv()


@pytest.fixture
def tcpserver(tmp_path: Path) -> Iterator[Callable[..., TcpServer]]:
    """Factory starting real tcpservers; all are killed and reaped at teardown, and
    every event line they logged must then parse strictly."""
    need("tcpserver")
    started: list[TcpServer] = []

    def start(argv: list[str], env: dict[str, str] | None = None,
              opts: tuple[str, ...] = ()) -> TcpServer:
        server = TcpServer(argv, tmp_path, env=env, opts=opts)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
    for server in started:
        # Every line the wrapper wrote, read or not by the test, parses strictly
        # (helpers.events: logfmt or JSON, keys from tests/log_keys.py).
        events(server.log())


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This process is a child subreaper for the duration of the test: the
    supervisors' orphans (tcpserver, loggers, connections) become its children,
    so that ``Service.stop`` reaps them."""
    set_subreaper(True)
    try:
        yield
    finally:
        set_subreaper(False)
