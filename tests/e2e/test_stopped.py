"""An operator's signal is not a crash, under real tcpserver.

TERM, HUP or INT sent to the wrapper (svc -d on a process group, a reload,
a shutdown) is passed on to qmail-smtpd; the child that dies of it was
stopped, not crashed: ``verdict=stopped stopped_by=SIGTERM``, which is not
in the default alert list.  The wrapper still dies by the child's signal, so
tcpserver's ``end PID status S`` is unchanged.  The same signal sent to the
child alone is a crash as before, and a child that survives HUP and finishes
its session is ok.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest
from helpers import SMTPD, SmtpClient, TcpServer, double_env, events, one_summary, recv_until_eof

pytestmark = pytest.mark.e2e

def _env(tmp_path) -> dict[str, str]:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return double_env(tmp_path, FAKE_QUEUE_DIR=str(spool))


def _up_to_mail(client: SmtpClient) -> None:
    assert client.reply()[0] == 220
    client.cmd(b"EHLO client.test", 250)
    client.cmd(b"MAIL FROM:<e2e@example.com>", 250)


def _pids(server: TcpServer) -> tuple[int, int]:
    """(wrapper pid, child pid) from the connect line."""
    m = server.wait_for(r"^event=connect .*?\bpid=(\d+)\b.*?\bchild_pid=(\d+)")
    return int(m[1]), int(m[2])


def _finish(server: TcpServer) -> tuple[dict[str, str], int]:
    summary, status, _ = one_summary(server)
    return summary, status


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["TERM", "HUP", "INT"])
def test_signal_to_wrapper_mid_session_is_stopped(tcpserver, wrapper, tmp_path, signum):
    """TERM/HUP/INT to the wrapper after MAIL: verdict=stopped, tcpserver sees the signal."""
    name = signal.Signals(signum).name
    server = tcpserver([*wrapper, "--", SMTPD], env=_env(tmp_path))
    client = SmtpClient(server)
    _up_to_mail(client)
    wrapper_pid, _ = _pids(server)
    os.kill(wrapper_pid, signum)
    assert recv_until_eof(client.sock) == b""
    client.sock.close()
    summary, status = _finish(server)
    assert summary["verdict"] == "stopped", summary
    assert summary["stopped_by"] == name
    assert summary["signal"] == name and "exit" not in summary
    assert summary["stage"] == "mail"
    assert summary["reason"] == (f"supervise-smtp received {name} and passed it on: "
                                 f"child killed by {name} in stage mail")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signum, status
    assert "event=alert" not in server.log()


def test_sigterm_to_child_alone_is_server_crashed(tcpserver, wrapper, tmp_path):
    """SIGTERM to qmail-smtpd only (the wrapper was not told anything): server_crashed."""
    server = tcpserver([*wrapper, "--", SMTPD], env=_env(tmp_path))
    client = SmtpClient(server)
    _up_to_mail(client)
    _, child_pid = _pids(server)
    os.kill(child_pid, signal.SIGTERM)
    assert recv_until_eof(client.sock) == b""
    client.sock.close()
    summary, status = _finish(server)
    assert summary["verdict"] == "server_crashed", summary
    assert summary["reason"] == "child killed by SIGTERM"
    assert summary["signal"] == "SIGTERM" and "stopped_by" not in summary
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status


def test_hup_survivor_finishing_its_session_is_ok(tcpserver, wrapper, tmp_path):
    """A child that ignores HUP goes on after the wrapper passed it on: QUIT answered, ok."""
    child = ["/bin/sh", "-c", 'trap "" HUP; exec "$@"', "sh", SMTPD]
    server = tcpserver([*wrapper, "--", *child], env=_env(tmp_path))
    client = SmtpClient(server)
    _up_to_mail(client)
    wrapper_pid, _ = _pids(server)
    os.kill(wrapper_pid, signal.SIGHUP)
    assert client.cmd(b"RCPT TO:<rcpt@example.org>", 250) == b"250 ok"
    assert client.cmd(b"DATA", 354) == b"354 go ahead"
    client.sock.sendall(b"Subject: still here\r\n\r\nhello\r\n.\r\n")
    assert client.reply()[1].startswith(b"250 ok ")
    assert client.cmd(b"QUIT", 221) == b"221 fake.example"
    client.sock.shutdown(socket.SHUT_WR)
    assert recv_until_eof(client.sock) == b""
    client.sock.close()
    summary, status = _finish(server)
    assert (summary["verdict"], summary["queued"]) == ("ok", "yes"), summary
    assert "stopped_by" not in summary
    assert status == 0
    assert [e["event"] for e in events(server.log())].count("summary") == 1
