"""``supervise-smtp report`` as a program: inputs, log directories, gzip, exit codes."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

from helpers import wrapper_argv

from supervise_smtp.session.output import format_logfmt

T0 = 1795946400  # 2026-11-29 10:00:00 UTC


def _line(unix: int, pid: int, verdict: str = "client_lost_after_data_end") -> bytes:
    """A multilog-stamped summary that goes on the duplicate-risk list (pid tells it apart)."""
    label = f"@{2**62 + 10 + unix:016x}00000000 ".encode()
    return label + format_logfmt({"event": "summary", "remote": "192.0.2.3", "pid": pid,
                                  "verdict": verdict, "stage": "data_end", "queued": "yes",
                                  "reply_delivered": "no"})


def report(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*wrapper_argv(), "report", *map(str, args)], input=stdin,
                          capture_output=True, timeout=60, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def _json(*args: str | Path, stdin: bytes = b"") -> dict[str, object]:
    proc = report("--json", "--top", "50", *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_report_cli_reads_stdin_without_files():
    """No FILES: stdin, plain or gzip'd alike."""
    log = _line(T0, 1) + b"tcpserver: end 1 status 256\n" + _line(T0 + 1, 2, "bare_lf")
    for data in (log, gzip.compress(log)):
        doc = _json(stdin=data)
        assert doc["verdicts"] == {"bare_lf": 1, "client_lost_after_data_end": 1}
        assert (doc["input"]["files"], doc["input"]["foreign"]) == (1, 1)


def test_report_cli_log_directory_in_time_order(tmp_path):
    """A log dir: @...s and @...u archives by name (one gzip'd), then current; others ignored."""
    logdir = tmp_path / "main"
    logdir.mkdir()
    files = {"current": [5, 6], "@400000006b0c6000000000000.s": [3, 4],
             "@400000006b0c5000000000000.s": [1], "@400000006b0c5800000000000.u": [2],
             "state": [], "lock": [], "config": [99]}
    for name, pids in files.items():
        data = b"".join(_line(T0 + pid, pid) for pid in pids)
        if name.startswith("@400000006b0c6"):
            data = gzip.compress(data)  # compressed by a log processor, name unchanged
        (logdir / name).write_bytes(data)
    doc = _json(logdir)
    assert doc["input"]["files"] == 4
    assert [row["pid"] for row in doc["duplicate_risk"]["recent"]] == ["1", "2", "3", "4", "5",
                                                                       "6"]
    assert (doc["first_seen"], doc["last_seen"]) == ("2026-11-29T10:00:01Z",
                                                    "2026-11-29T10:00:06Z")


def test_report_cli_files_in_the_order_given_and_tai64n_scale(tmp_path):
    """Explicit files are read as given; --tai64n s6 reads the labels as TAI (37 s, not 10)."""
    a, b = tmp_path / "a.log", tmp_path / "b.log.gz"
    a.write_bytes(_line(T0 + 100, 7))
    b.write_bytes(gzip.compress(_line(T0, 8)))
    doc = _json(a, b)
    assert [row["pid"] for row in doc["duplicate_risk"]["recent"]] == ["7", "8"]
    assert doc["first_seen"] == "2026-11-29T10:00:00Z"
    doc = _json("--tai64n", "s6", a, b)
    assert (doc["first_seen"], doc["tai64n"]) == ("2026-11-29T09:59:33Z", "s6")


def test_report_cli_text_output_and_filters(tmp_path):
    """The text report (default) with --since and --verdict applied."""
    log = tmp_path / "current"
    log.write_bytes(_line(T0, 1) + _line(T0 + 7200, 2) + _line(T0 + 7300, 3, "bare_lf"))
    proc = report("--since", "2026-11-29T11:00", "--verdict", "client_lost_after_*", log)
    assert proc.returncode == 0, proc.stderr
    assert "connections:   1\n" in proc.stdout
    assert "left out: 1 outside --since/--until, 1 by --remote/--verdict" in proc.stdout
    assert "client_lost_after_data_end: 1 connection\n" in proc.stdout
    assert max(map(len, proc.stdout.splitlines())) <= 100


def test_report_cli_read_errors_named_others_reported_exit_111(tmp_path):
    """A gzip cut short, a corrupt one, EIO (/proc/self/mem), a directory as current: one
    line naming each, the lines before a cut and the other inputs still reported, then
    111; never a traceback."""
    data = gzip.compress(b"".join(_line(T0 + i, i) for i in range(200)))
    cut, bad, good = tmp_path / "cut.gz", tmp_path / "bad.gz", tmp_path / "good"
    cut.write_bytes(data[: len(data) - 20])
    bad.write_bytes(data[:10] + b"\xff" * 64 + data[74:])
    good.write_bytes(_line(T0 + 500, 500))
    logdir = tmp_path / "svc"
    (logdir / "current").mkdir(parents=True)
    proc = report("--json", cut, "/proc/self/mem", bad, logdir, good)
    assert proc.returncode == 111, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    named = [str(cut), "/proc/self/mem", str(bad), str(logdir / "current")]
    assert len(lines) == len(named), lines
    for line, path in zip(lines, named, strict=True):
        assert line.startswith(f"supervise-smtp report: unable to read {path}: "), line
    doc = json.loads(proc.stdout)
    assert len(doc["input"]["read_errors"]) == len(named)
    pids = [row["pid"] for row in doc["duplicate_risk"]["recent"]]
    assert "500" in pids  # the input after the bad ones
    assert 0 < doc["input"]["summaries"] <= 201


def test_report_cli_exit_codes(tmp_path):
    """100 usage or no such file, 111 unreadable, 0 --help; listed in the wrapper's --help."""
    assert report(tmp_path / "missing").returncode == 100
    proc = report("--verdict", "nope")
    assert proc.returncode == 100 and "supervise-smtp report: fatal:" in proc.stderr
    logdir = tmp_path / "svc"
    (logdir / "current").mkdir(parents=True)  # a log dir whose current cannot be read
    proc = report(logdir)
    assert proc.returncode == 111, proc.stderr
    assert "unable to read" in proc.stderr and proc.stdout.startswith("supervise-smtp report")
    proc = report("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: supervise-smtp report")
    top = subprocess.run([*wrapper_argv(), "--help"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert "supervise-smtp report [FILES...]" in top.stdout
