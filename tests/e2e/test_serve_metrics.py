"""serve's Prometheus metrics: /metrics from the parent's loop, the textfile, a real scrape.

The parent counts what each worker's end-of-session message carries (the
summary's counters, metrics_record) and what it sees itself (rules denials,
the -c limit, active connections).  The counters /metrics shows are checked
against the same Metrics fed with the summary lines serve wrote to its log
-- the log-stage path of ``collect`` -- so the two ways of counting must
agree, family by family, rather than match numbers typed in here.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from helpers import (
    BODY,
    SMTPD,
    SmtpClient,
    double_env,
    events,
    free_port,
    recv_until_eof,
    wrapper_argv,
)
from prometheus_client.parser import text_string_to_metric_families
from test_serve import Listener

from supervise_smtp.logs.metrics import Metrics

pytestmark = pytest.mark.e2e

OPTS = ["-v", "-R", "-H", "-l", "0"]
CONNECTION_FAMILIES = ("supervise_smtp_connections", "supervise_smtp_replies",
                       "supervise_smtp_bare_lf", "supervise_smtp_queue_exit",
                       "supervise_smtp_child_exit", "supervise_smtp_bytes",
                       "supervise_smtp_session_duration_seconds")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition, parsed by prometheus-client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def from_log(log: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The same families counted from the summary lines, as collect counts them."""
    metrics = Metrics()
    for line in events(log):
        if line["event"] == "summary":
            metrics.observe(line)
    return samples(metrics.exposition().decode())


def connection_samples(all_samples: dict) -> dict:
    return {k: v for k, v in all_samples.items()
            if k[0].startswith(CONNECTION_FAMILIES) and not k[0].endswith("_created")}


def sessions(server: Listener) -> None:
    """One message queued, one bare-LF reject, one client lost in the body."""
    client = SmtpClient(server)  # type: ignore[arg-type]
    assert client.message()[0] == 250
    client.cmd(b"QUIT", 221)
    client.close()
    client = SmtpClient(server)  # type: ignore[arg-type]
    client.envelope()
    client.cmd(b"DATA", 354)
    client.sock.sendall(b"Subject: lf\n\nbare\n.\r\n")
    assert client.reply()[0] == 451
    recv_until_eof(client.sock)
    client.close()
    client = SmtpClient(server)  # type: ignore[arg-type]
    client.envelope()
    client.cmd(b"DATA", 354)
    client.sock.sendall(BODY[:20])
    client.close()
    server.end_statuses(3)


def test_serve_metrics_listen_counts_what_the_summaries_say(tmp_path, need):
    need("tcpserver")
    port = free_port()
    env = double_env(tmp_path, FAKE_QUEUE_DIR=str(tmp_path))
    server = Listener("serve", [*OPTS, "--metrics-listen", f"127.0.0.1:{port}"], [SMTPD],
                      tmp_path, env=env)
    try:
        before = samples(scrape(port))
        assert before[("supervise_smtp_serve_active_connections", ())] == 0
        sessions(server)
        after = samples(scrape(port))
        log = server.log()
    finally:
        server.stop()
    want = connection_samples(from_log(log))
    assert connection_samples(after) == want
    # and what that means, for the reader of this test
    assert want[("supervise_smtp_bare_lf_total", ())] == 1
    assert want[("supervise_smtp_queue_exit_total", (("class", "success"),))] == 1
    assert after[("supervise_smtp_session_duration_seconds_count", ())] == 3
    assert after[("supervise_smtp_serve_active_connections", ())] == 0


def test_serve_metrics_count_denials_and_the_limit(tmp_path, need):
    tcprules = need("tcprules")
    cdb = tmp_path / "rules.cdb"
    subprocess.run([tcprules, str(cdb), str(tmp_path / "rules.tmp")],
                   input=b"127.0.0.1:deny\n", check=True, timeout=30)
    port = free_port()
    server = Listener("serve", [*OPTS, "-c", "1", "-x", str(cdb),
                                "--metrics-listen", f"127.0.0.1:{port}"], ["true"], tmp_path)
    try:
        for _ in range(2):
            assert server.talk() == b""
        server.end_statuses(2)
        got = samples(scrape(port))
        limits = server.log().count("event=limit ")
    finally:
        server.stop()
    assert got[("supervise_smtp_serve_denied_total", ())] == 2
    assert got[("supervise_smtp_serve_limit_reached_total", ())] == limits == 2
    assert got.get(("supervise_smtp_connections_total", (("stage", "connect"),
                                                         ("verdict", "ok")))) in (None, 0)


def test_serve_metrics_textfile_rewritten_0644(tmp_path, need):
    need("tcpserver")
    textfile = tmp_path / "supervise_smtp.prom"
    env = double_env(tmp_path, FAKE_QUEUE_DIR=str(tmp_path))
    server = Listener("serve", [*OPTS, "--metrics-textfile", str(textfile),
                                "--metrics-interval", "0.2"], [SMTPD], tmp_path, env=env)
    try:
        deadline = time.monotonic() + 15
        while not textfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stat.S_IMODE(textfile.stat().st_mode) == 0o644  # node_exporter reads it
        sessions(server)
        want = connection_samples(from_log(server.log()))
        deadline = time.monotonic() + 15
        while connection_samples(samples(textfile.read_text())) != want \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert connection_samples(samples(textfile.read_text())) == want
    finally:
        server.stop()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".supervise_smtp.prom")]


def _serve_status(*args: str) -> tuple[int, bytes]:
    run = subprocess.run([*wrapper_argv(), "serve", *args, "127.0.0.1", "0", "true"],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return run.returncode, run.stderr


@pytest.mark.parametrize("value", ["localhost:9", "127.0.0.1", "127.0.0.1:0", "[::1]:x"])
def test_serve_metrics_listen_bad_values_exit_100(value):
    code, err = _serve_status("--metrics-listen", value)
    assert code == 100 and b"--metrics-listen" in err


def test_serve_metrics_port_taken_exits_111(tmp_path):
    port = free_port()
    first = Listener("serve", ["--metrics-listen", f"127.0.0.1:{port}"], ["true"], tmp_path)
    try:
        code, err = _serve_status("--metrics-listen", f"127.0.0.1:{port}")
        assert code == 111 and b"unable to bind metrics" in err
        assert first.proc.poll() is None
    finally:
        first.stop()


def test_real_prometheus_scrapes_serve(tmp_path, need):
    """Debian's prometheus scrapes serve's /metrics; its HTTP API returns our counter."""
    prometheus = need("prometheus")
    env = double_env(tmp_path, FAKE_QUEUE_DIR=str(tmp_path))
    metrics_port, web_port = free_port(), free_port()
    server = Listener("serve", [*OPTS, "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                      [SMTPD], tmp_path, env=env)
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n"
                      "scrape_configs:\n  - job_name: supervise_smtp\n"
                      f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n")
    prom = subprocess.Popen([prometheus, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        client = SmtpClient(server)  # type: ignore[arg-type]
        assert client.message()[0] == 250
        client.cmd(b"QUIT", 221)
        client.close()
        server.end_statuses(1)
        query = (f"http://127.0.0.1:{web_port}/api/v1/query?query="
                 + urllib.parse.quote('sum(supervise_smtp_queue_exit_total{class="success"})'))
        value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(query, timeout=5) as resp:
                    result = json.load(resp)["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    if value == 1:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        assert value == 1
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        server.stop()


def test_serve_metrics_textfile_unwritable_never_stops_serving(tmp_path, need):
    """A textfile it cannot write: one serve_error line per run of failures; the mail goes on."""
    need("tcpserver")
    textfile = tmp_path / "missing-dir" / "supervise_smtp.prom"
    env = double_env(tmp_path, FAKE_QUEUE_DIR=str(tmp_path))
    server = Listener("serve", [*OPTS, "--metrics-textfile", str(textfile),
                                "--metrics-interval", "0.1"], [SMTPD], tmp_path, env=env)
    try:
        server.wait_for(r"^event=serve_error where=metrics_textfile error=")
        client = SmtpClient(server)  # type: ignore[arg-type]
        assert client.message()[0] == 250
        client.cmd(b"QUIT", 221)
        client.close()
        server.end_statuses(1)
        time.sleep(0.5)  # five more failed rewrites
        assert server.log().count("where=metrics_textfile") == 1
        (tmp_path / "missing-dir").mkdir()
        deadline = time.monotonic() + 15
        while not textfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert samples(textfile.read_text())[("supervise_smtp_queue_exit_total",
                                              (("class", "success"),))] == 1
    finally:
        server.stop()


def test_serve_workers_do_not_hold_the_metrics_port(tmp_path):
    """SIGTERM with a session still running: a new serve binds the same metrics port at
    once (the worker finishing that session closed its copy of /metrics' socket)."""
    hold = tmp_path / "hold"
    hold.write_text("#!/bin/sh\necho hi\nread line\n")
    hold.chmod(0o755)
    port = free_port()
    old = Listener("serve", [*OPTS, "--metrics-listen", f"127.0.0.1:{port}"], [str(hold)],
                   tmp_path)
    try:
        with old.connect() as sock:
            assert sock.recv(10) == b"hi\n"
            os.kill(old.pid, signal.SIGTERM)
            assert old.proc.wait(timeout=15) == 0
            code, err = _serve_status_after_start("--metrics-listen", f"127.0.0.1:{port}")
            assert code == 0, err
            sock.sendall(b"bye\n")
    finally:
        old.stop()


def _serve_status_after_start(*args: str) -> tuple[int, bytes]:
    """Start serve, see it listen (-1), stop it: its exit code and stderr."""
    proc = subprocess.Popen([*wrapper_argv(), "serve", *args, "-1", "127.0.0.1", "0", "true"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip().isdigit():
        proc.terminate()
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err
