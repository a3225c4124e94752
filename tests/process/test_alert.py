"""session/alert.py: --alert-on/--alert-rate parsing, matching, rate limit, detached run.

Matching is checked with a missing program (``action=error`` means "an alert
was called for", None means "not"), so that no process is started.  The
detached-run tests use small sh scripts and poll the files they write; no
timing is asserted, only orderings (maybe_alert returned while the program
still ran).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervise_smtp.errors import UsageError
from supervise_smtp.session import alert
from supervise_smtp.session.alert import DEFAULT_ON, maybe_alert, parse_rate, parse_verdicts
from supervise_smtp.session.diagnose import STAGES, VERDICTS, client_lost

MISSING = "/nonexistent/supervise-smtp-alert"
HOUR = 3600.0


def _script(tmp_path: Path, body: str, name: str = "alert.sh") -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _wait_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


def _wait_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The lines of ``path`` once it has ``count`` of them, after a grace for extra ones."""
    deadline = time.monotonic() + timeout
    while not path.exists() or len(path.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"{path}: fewer than {count} lines"
        time.sleep(0.01)
    time.sleep(0.2)
    return path.read_text().splitlines()


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while _running(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        time.sleep(0.05)


def _counter(tmp_path: Path) -> tuple[str, Path]:
    """A program appending ``<verdict> <suppressed>`` to calls.txt, and that file."""
    calls = tmp_path / "calls.txt"
    line = '"$SUPERVISE_SMTP_VERDICT $SUPERVISE_SMTP_SUPPRESSED"'
    prog = _script(tmp_path, f"echo {line} >> {calls}\n", "counter.sh")
    return prog, calls


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, want", [
    ("server_crashed", {"server_crashed"}),
    ("queue_temp_fail,queue_perm_fail", {"queue_temp_fail", "queue_perm_fail"}),
    (" ok , bare_lf ", {"ok", "bare_lf"}),
    ("parent_died", {"parent_died"}),
    ("client_lost_after_data_body", {"client_lost_after_data_body"}),
    ("client_lost_after_*,timeout", {client_lost(s) for s in STAGES} | {"timeout"}),
    (",".join(VERDICTS), set(VERDICTS)),
])
def test_alert_parse_verdicts_good(text, want):
    """Verdict names, parent_died and the client_lost_after_* wildcard are accepted."""
    assert parse_verdicts(text) == frozenset(want)


@pytest.mark.parametrize("text, bad", [
    ("", "''"), ("ok,", "''"), ("ok,,bare_lf", "''"), ("crashed", "crashed"),
    ("OK", "OK"), ("client_lost_after_nowhere", "client_lost_after_nowhere"),
    ("client_lost_*", "client_lost_*"), ("ok bare_lf", "ok bare_lf"),
])
def test_alert_parse_verdicts_bad(text, bad):
    """An unknown or empty entry is a UsageError that names it."""
    with pytest.raises(UsageError, match=bad.replace("*", r"\*")):
        parse_verdicts(text)


def test_alert_default_on_names_are_valid():
    """DEFAULT_ON is the issue's list and every name in it parses."""
    assert DEFAULT_ON == {"server_crashed", "queue_temp_fail", "queue_perm_fail",
                          "wrapper_error", "parent_died"}
    assert parse_verdicts(",".join(sorted(DEFAULT_ON))) == DEFAULT_ON


@pytest.mark.parametrize("text, want", [
    ("10/3600", (10, 3600.0)), ("10/3600s", (10, 3600.0)), ("5/1m", (5, 60.0)),
    ("1/1h", (1, 3600.0)), ("100/1d", (100, 86400.0)), ("3/0.5s", (3, 0.5)),
    ("2/1.5m", (2, 90.0)),
])
def test_alert_parse_rate_good(text, want):
    """N/PERIOD with PERIOD in seconds or with a unit s, m, h, d."""
    assert parse_rate(text) == want


@pytest.mark.parametrize("text", [
    "", "10", "10/", "/3600", "0/1h", "-1/1h", "1/0", "1/0s", "1/-5", "1/1w", "1/h",
    "x/1h", "1/abc", "1/1h/2", "1/inf", "1/nan", "1.5/1h", "1/1e3", " 1/1h", "1/1 h",
    f"{alert.MAX_RATE_COUNT + 1}/1d",
])
def test_alert_parse_rate_bad(text):
    """Anything but N >= 1 over a positive period is a UsageError quoting the value."""
    with pytest.raises(UsageError, match="--alert-rate"):
        parse_rate(text)


# ---------------------------------------------------------------- matching


@pytest.mark.parametrize("verdict", sorted(DEFAULT_ON - {"parent_died"}))
def test_alert_default_matches_abnormal_verdicts(verdict):
    """With on=None the default verdicts call for an alert."""
    assert maybe_alert(MISSING, None, None, None, verdict, {}, False)["action"] == "error"


@pytest.mark.parametrize("verdict", ["ok", "bare_lf", "rejected", "timeout",
                                     "client_lost_after_data"])
def test_alert_default_skips_other_verdicts(verdict):
    """With on=None, ok and the other verdicts call for nothing (None, nothing run)."""
    assert maybe_alert(MISSING, None, None, None, verdict, {}, False) is None


def test_alert_parent_died_matches_whatever_the_verdict():
    """A qmail-scanner parent death calls for an alert even with verdict=bare_lf."""
    assert maybe_alert(MISSING, None, None, None, "bare_lf", {}, True) is not None
    assert maybe_alert(MISSING, frozenset({"ok"}), None, None, "bare_lf", {}, True) is None
    assert maybe_alert(MISSING, frozenset({"parent_died"}), None, None, "ok", {}, True)


def test_alert_explicit_set_replaces_default():
    """--alert-on bare_lf alerts on bare_lf only, not on the default verdicts."""
    on = parse_verdicts("bare_lf")
    assert maybe_alert(MISSING, on, None, None, "bare_lf", {}, False) is not None
    assert maybe_alert(MISSING, on, None, None, "server_crashed", {}, False) is None


def test_alert_client_lost_wildcard_matches_every_stage():
    """client_lost_after_* (expanded or passed as is) matches every client_lost verdict."""
    for on in (parse_verdicts("client_lost_after_*"), frozenset({"client_lost_after_*"})):
        for stage in STAGES:
            assert maybe_alert(MISSING, on, None, None, client_lost(stage), {}, False)
        assert maybe_alert(MISSING, on, None, None, "ok", {}, False) is None


# ---------------------------------------------------------------- errors


def test_alert_missing_prog_is_an_error(tmp_path):
    """A program that does not exist gives action=error naming it, and no exception."""
    result = maybe_alert(MISSING, None, None, None, "server_crashed", {}, False)
    assert result == {"action": "error",
                      "error": f"unable to run {MISSING}: No such file or directory"}
    assert maybe_alert("no-such-alert-prog-xyz", None, None, None, "server_crashed", {},
                       False)["action"] == "error"


def test_alert_unexecutable_prog_is_an_error(tmp_path):
    """An executable file that execve refuses (ENOEXEC) is reported from the grandchild."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF not really\n")
    junk.chmod(0o755)
    result = maybe_alert(str(junk), None, None, None, "server_crashed", {}, False)
    assert result == {"action": "error", "error": f"unable to exec {junk}: Exec format error"}


def test_alert_unwritable_state_dir_is_an_error(tmp_path):
    """A state dir that cannot be created gives action=error, never an exception."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = maybe_alert(MISSING, None, (1, HOUR), str(blocker / "state"), "server_crashed",
                         {}, False)
    assert result is not None and result["action"] == "error"
    assert maybe_alert(MISSING, None, (1, HOUR), None, "server_crashed", {},
                       False) == {"action": "error", "error": "--alert-rate needs --state-dir"}


def test_alert_failed_start_spends_no_budget(tmp_path):
    """A program that could not start is not counted as a sent alert."""
    prog, calls = _counter(tmp_path)
    state = str(tmp_path / "state")
    assert maybe_alert(MISSING, None, (1, HOUR), state, "server_crashed", {},
                       False)["action"] == "error"
    assert maybe_alert(prog, None, (1, HOUR), state, "server_crashed", {},
                       False)["action"] == "sent"


# ---------------------------------------------------------------- rate limit


def test_alert_rate_limit_honoured_across_calls(tmp_path):
    """With 3/1h, five abnormal connections send three alerts and suppress two."""
    prog, calls = _counter(tmp_path)
    state = str(tmp_path / "state")
    results = [maybe_alert(prog, None, (3, HOUR), state, "queue_temp_fail", {}, False)
               for _ in range(5)]
    assert [r["action"] for r in results] == ["sent"] * 3 + ["suppressed"] * 2
    assert [r.get("suppressed") for r in results[3:]] == [1, 2]
    assert all(r["suppressed_before"] == 0 for r in results[:3])
    assert _wait_lines(calls, 3) == ["queue_temp_fail 0"] * 3


def test_alert_suppressed_count_reported_on_next_sent(tmp_path, monkeypatch):
    """Once the window has passed, the next alert carries the suppressed count, then 0."""
    prog, calls = _counter(tmp_path)
    state = str(tmp_path / "state")
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])

    def call() -> dict[str, object]:
        result = maybe_alert(prog, None, (1, 60.0), state, "server_crashed", {}, False)
        assert result is not None
        return result

    assert call()["action"] == "sent"
    assert call() == {"action": "suppressed", "suppressed": 1}
    assert call() == {"action": "suppressed", "suppressed": 2}
    now[0] += 61
    sent = call()
    assert sent["action"] == "sent" and sent["suppressed_before"] == 2
    now[0] += 61
    assert call()["suppressed_before"] == 0
    assert sorted(_wait_lines(calls, 3)) == sorted(
        ["server_crashed 0", "server_crashed 2", "server_crashed 0"])


def test_alert_clock_set_back_does_not_silence(tmp_path, monkeypatch):
    """A send time in the future (clock stepped back) is dropped, not trusted."""
    state = str(tmp_path / "state")
    prog, _ = _counter(tmp_path)
    now = [2_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    assert maybe_alert(prog, None, (1, HOUR), state, "server_crashed", {},
                       False)["action"] == "sent"
    now[0] -= 10 * HOUR
    assert maybe_alert(prog, None, (1, HOUR), state, "server_crashed", {},
                       False)["action"] == "sent"


def test_alert_corrupt_state_file_is_reset(tmp_path):
    """An unreadable state file counts as a fresh state instead of failing."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / alert.STATE_FILE).write_bytes(b"\x00garbage\nnot numbers\n")
    prog, _ = _counter(tmp_path)
    assert maybe_alert(prog, None, (1, HOUR), str(state), "server_crashed", {},
                       False)["action"] == "sent"


def test_alert_state_modes(tmp_path):
    """The state dir is created 0700 and the state file 0600."""
    prog, _ = _counter(tmp_path)
    state = tmp_path / "state"
    old = os.umask(0o022)
    try:
        maybe_alert(prog, None, (1, HOUR), str(state), "server_crashed", {}, False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / alert.STATE_FILE).stat().st_mode) == 0o600


_WORKER = """
import sys
from supervise_smtp.session.alert import maybe_alert
prog, state, count, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.stdin.readline()  # start together
for _ in range(calls):
    print(maybe_alert(prog, None, (count, 3600.0), state, "server_crashed", {}, False)["action"])
"""


def test_alert_rate_limit_honoured_across_processes(tmp_path):
    """Two processes sharing one state dir send N alerts in total, not 2N."""
    prog, calls = _counter(tmp_path)
    state = str(tmp_path / "state")
    limit, per_process = 4, 10
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, prog, state, str(limit),
                               str(per_process)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    actions = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        actions += out.split()
    assert actions.count("sent") == limit
    assert actions.count("suppressed") == 2 * per_process - limit
    assert len(_wait_lines(calls, limit)) == limit


# ---------------------------------------------------------------- the detached program


def test_alert_hanging_prog_does_not_delay_and_is_killed(tmp_path, monkeypatch):
    """maybe_alert returns while a hanging program runs; its group is killed after the timeout."""
    monkeypatch.setenv("SUPERVISE_SMTP_ALERT_TIMEOUT", "1")
    pids = tmp_path / "pids"
    prog = _script(tmp_path, f"sleep 1000 &\necho \"$$ $!\" > {pids}.tmp\n"
                             f"mv {pids}.tmp {pids}\nwait\n")
    result = maybe_alert(prog, None, None, None, "server_crashed", {}, False)
    assert result is not None and result["action"] == "sent", result
    shell, sleeper = map(int, _wait_file(pids).split())
    assert shell == result["alert_pid"]
    assert _running(sleeper)  # returned, and the program still runs
    _wait_gone(shell)
    _wait_gone(sleeper)  # SIGKILL went to the whole process group


def test_alert_env_reaches_prog_escaped(tmp_path, monkeypatch):
    """Summary fields arrive as SUPERVISE_SMTP_* variables, hostile bytes escaped."""
    out = tmp_path / "env.txt"
    monkeypatch.setenv("SUPERVISE_SMTP_LAST_REPLY", "stale")
    monkeypatch.setenv("SUPERVISE_SMTP_STALE", "stale")
    monkeypatch.setenv("ALERT_TEST_KEEP", "kept")
    prog = _script(tmp_path, f"env > {out}.tmp\nmv {out}.tmp {out}\n")
    fields: dict[str, object] = {
        "stage": "data_end", "reason": "451 disk_full after DATA", "ehlo": 1, "tls": False,
        "queued": "no", "queue_exit": 53, "notes": ("a", "b c"), "queue_pid": None,
        "last_reply": b"x\nFAKE=1", "auth_user": "\xe9\x00",
    }
    result = maybe_alert(prog, None, None, None, "queue_temp_fail", fields, False)
    assert result == {"action": "sent", "alert_pid": result["alert_pid"],
                      "suppressed_before": 0}
    lines = _wait_file(out).splitlines()
    env = dict(line.split("=", 1) for line in lines)
    mine = {k: v for k, v in env.items() if k.startswith("SUPERVISE_SMTP_")}
    assert mine == {
        "SUPERVISE_SMTP_STAGE": "data_end",
        "SUPERVISE_SMTP_REASON": "451 disk_full after DATA",
        "SUPERVISE_SMTP_EHLO": "1",
        "SUPERVISE_SMTP_TLS": "false",
        "SUPERVISE_SMTP_QUEUED": "no",
        "SUPERVISE_SMTP_QUEUE_EXIT": "53",
        "SUPERVISE_SMTP_NOTES": "a,b c",
        "SUPERVISE_SMTP_LAST_REPLY": "x\\nFAKE=1",
        "SUPERVISE_SMTP_AUTH_USER": "\\xc3\\xa9\\x00",
        "SUPERVISE_SMTP_VERDICT": "queue_temp_fail",
        "SUPERVISE_SMTP_SUPPRESSED": "0",
    }
    assert "FAKE" not in env
    assert env["ALERT_TEST_KEEP"] == "kept"


def test_alert_prog_gets_only_fds_0_to_2(tmp_path):
    """stdin and stdout are /dev/null, fd 2 is kept, no other fd leaks into the program."""
    out = tmp_path / "fds.txt"
    prog = tmp_path / "fds.py"
    prog.write_text(f"""#!{sys.executable} -S
import os
lines = []
for fd in sorted(os.listdir("/proc/self/fd"), key=int):
    try:
        lines.append(fd + " " + os.readlink("/proc/self/fd/" + fd))
    except OSError:
        pass  # listdir's own directory fd, closed by now
with open("{out}.tmp", "w") as fh:
    fh.write("\\n".join(lines) + "\\n")
os.rename("{out}.tmp", "{out}")
""")
    prog.chmod(0o755)
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_r, True)
    try:
        result = maybe_alert(str(prog), None, None, None, "server_crashed", {}, False)
        assert result is not None and result["action"] == "sent", result
        fds = dict(line.split(" ", 1) for line in _wait_file(out).splitlines())
    finally:
        os.close(leak_r)
        os.close(leak_w)
    assert fds == {"0": "/dev/null", "1": "/dev/null", "2": os.readlink("/proc/self/fd/2")}


def test_alert_prog_runs_in_own_session(tmp_path):
    """The program is detached: a session and process group other than ours."""
    out = tmp_path / "ids.txt"
    prog = _script(tmp_path, f"ps -o sid=,pgid=,ppid= -p $$ > {out}.tmp\nmv {out}.tmp {out}\n")
    result = maybe_alert(prog, None, None, None, "server_crashed", {}, False)
    assert result is not None and result["action"] == "sent"
    sid, pgid, ppid = map(int, _wait_file(out).split())
    assert sid != os.getsid(0)
    assert pgid == result["alert_pid"]
    assert ppid != os.getpid()
