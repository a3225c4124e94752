"""check-service: findings on the shipped service dirs and on broken ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from supervise_smtp import checkservice
from supervise_smtp.errors import UsageError

REPO = Path(__file__).resolve().parents[2]

GOOD_RUN = """#!/bin/sh
exec 2>&1
exec tcpserver -v -R -l 0 -x /etc/tcp.smtp.cdb -u 7791 -g 2108 0 smtp \\
  {wrapper} -- softlimit -m 24000000 /var/qmail/bin/qmail-smtpd
"""
GOOD_LOG = "#!/bin/sh\nexec setuidgid qmaill multilog t ./main\n"


def _service(root: Path, run: str, log: str | None = GOOD_LOG, mode: int = 0o755) -> Path:
    svc = root / "svc"
    (svc / "log").mkdir(parents=True)
    (svc / "run").write_text(run)
    (svc / "run").chmod(mode)
    if log is not None:
        (svc / "log" / "run").write_text(log)
        (svc / "log" / "run").chmod(0o755)
    return svc


def _levels(svc: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"ok": [], "warning": [], "error": []}
    for f in checkservice.check(str(svc)):
        found[f.level].append(f.text)
    return found


@pytest.fixture
def wrapper_path(wrapper: list[str], tmp_path: Path) -> str:
    """An absolute executable path for the wrapper (a shim for ``python -m``)."""
    if len(wrapper) == 1:
        return wrapper[0]
    shim = tmp_path / "supervise-smtp"
    shim.write_text("#!/bin/sh\nexec " + " ".join(wrapper) + ' "$@"\n')
    shim.chmod(0o755)
    return str(shim)


@pytest.mark.parametrize("suite", ["daemontools", "runit", "s6"])
def test_checkservice_shipped_dirs_clean(suite, tmp_path, wrapper_path):
    """The shipped dirs, with SUPERVISE_SMTP set to an installed wrapper, have no error."""
    svc = tmp_path / "qmail-smtpd"
    shutil.copytree(REPO / suite / "qmail-smtpd", svc)
    if suite == "runit":
        conf = (svc / "conf").read_text().replace(
            "SUPERVISE_SMTP=/usr/local/bin/supervise-smtp", f"SUPERVISE_SMTP={wrapper_path}")
        (svc / "conf").write_text(conf)
    else:
        (svc / "env" / "SUPERVISE_SMTP").write_text(wrapper_path + "\n")
    found = _levels(svc)
    assert found["error"] == []
    assert any("supervise-smtp runs qmail-smtpd" in t for t in found["ok"])
    assert any("memory limit comes after supervise-smtp" in t for t in found["ok"])
    assert any("stamps each line" in t for t in found["ok"])


def test_checkservice_reads_the_wrapper_path_from_env(tmp_path):
    """A SUPERVISE_SMTP that does not exist is an error naming the path."""
    svc = tmp_path / "qmail-smtpd"
    shutil.copytree(REPO / "daemontools" / "qmail-smtpd", svc)
    (svc / "env" / "SUPERVISE_SMTP").write_text("/nonexistent/supervise-smtp\n")
    found = _levels(svc)
    assert found["error"] == ["run: supervise-smtp /nonexistent/supervise-smtp is missing "
                              "or not executable"]


def test_checkservice_good_dir_exit_0(tmp_path, wrapper_path, capsys):
    """A correct dir prints only ok: lines (and warnings) and exits 0."""
    svc = _service(tmp_path, GOOD_RUN.format(wrapper=wrapper_path))
    assert checkservice.main([str(svc)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.split(":")[0] in ("ok", "warning") for line in lines)


@pytest.mark.parametrize("run, message", [
    (GOOD_RUN.replace("exec tcpserver", "tcpserver"), "tcpserver is not started with exec"),
    (GOOD_RUN.replace("exec 2>&1\n", ""), "stderr is not sent to the log"),
    (GOOD_RUN.replace("{wrapper} -- ", ""), "supervise-smtp is not in the qmail-smtpd chain"),
    (GOOD_RUN.replace("{wrapper}", "/nonexistent/supervise-smtp"), "missing or not executable"),
    (GOOD_RUN.replace("{wrapper}", "supervise-smtp"), "supervise-smtp is not on PATH"),
    (GOOD_RUN + "if then\n", "sh -n fails"),
    ("#!/bin/sh\nexec 2>&1\nexec tcpsvd 0 25 qmail-smtpd\n", "cannot find the tcpserver"),
])
def test_checkservice_errors(tmp_path, wrapper_path, monkeypatch, run, message):
    """Each broken run script gives an error: finding that names the problem."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no supervise-smtp on it
    svc = _service(tmp_path, run.replace("{wrapper}", wrapper_path))
    errors = _levels(svc)["error"]
    assert any(message in e for e in errors), errors
    assert checkservice.main([str(svc)]) == 1


def test_checkservice_run_not_executable(tmp_path, wrapper_path):
    """A run script without the x bit is an error."""
    svc = _service(tmp_path, GOOD_RUN.format(wrapper=wrapper_path), mode=0o644)
    assert "run: not executable (chmod 755 run)" in _levels(svc)["error"]


def test_checkservice_missing_log_service(tmp_path, wrapper_path):
    """No log/run is an error: the events would reach the supervisor's stderr."""
    svc = _service(tmp_path, GOOD_RUN.format(wrapper=wrapper_path), log=None)
    assert any(e.startswith("log/run: missing") for e in _levels(svc)["error"])


@pytest.mark.parametrize("run, message", [
    (GOOD_RUN.replace("exec tcpserver", "exec softlimit -m 90000000 tcpserver").replace(
        "softlimit -m 24000000 /var", "/var"), "comes before supervise-smtp"),
    (GOOD_RUN.replace("softlimit -m 24000000 ", ""), "no softlimit after supervise-smtp"),
    (GOOD_RUN.replace("-- softlimit", "-- recordio softlimit"), "recordio is still"),
    (GOOD_RUN.replace("-- softlimit", "-- fixcrio softlimit"), "fixcrio is still"),
    (GOOD_RUN.replace("{wrapper}", "supervise-smtp"), "looked up on this shell's PATH"),
])
def test_checkservice_warnings(tmp_path, wrapper_path, monkeypatch, run, message):
    """Risky but working setups give warning: findings and still exit 0."""
    monkeypatch.setenv("PATH", str(Path(wrapper_path).parent) + ":/usr/bin:/bin")
    svc = _service(tmp_path, run.replace("{wrapper}", wrapper_path))
    found = _levels(svc)
    assert any(message in w for w in found["warning"]), found
    assert found["error"] == []


@pytest.mark.parametrize("log, message", [
    ("#!/bin/sh\nexec multilog ./main\n", "multilog without a timestamp option"),
    ("#!/bin/sh\nexec svlogd ./main\n", "svlogd without a timestamp option"),
    ("#!/bin/sh\nexec cat > /dev/null\n", "no multilog, svlogd or s6-log"),
])
def test_checkservice_log_warnings(tmp_path, wrapper_path, log, message):
    """A logger without timestamps, or no known logger, is a warning."""
    svc = _service(tmp_path, GOOD_RUN.format(wrapper=wrapper_path), log=log)
    assert any(message in w for w in _levels(svc)["warning"])


def test_checkservice_shell_syntax_errors(tmp_path, wrapper_path):
    """A run script the lexer cannot cut is an error, a log/run one a warning, a conf
    one is skipped (its settings unknown)."""
    svc = _service(tmp_path, GOOD_RUN.format(wrapper=wrapper_path) + "echo 'oops\n",
                   log="#!/bin/sh\nexec multilog t \"./main\n")
    (svc / "conf").write_text("X='unterminated\n")
    found = _levels(svc)
    assert "run: cannot find the tcpserver ... qmail-smtpd command: unterminated ' quote " \
           "at line 5" in found["error"]
    assert 'log/run: cannot parse: unterminated " quote at line 2' in found["warning"]


def test_checkservice_is_read_only(tmp_path, wrapper_path):
    """check-service changes no file and creates none."""
    svc = _service(tmp_path, GOOD_RUN.format(wrapper=wrapper_path))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
              for p in svc.rglob("*")}
    checkservice.check(str(svc))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
             for p in svc.rglob("*")}
    assert before == after


@pytest.mark.parametrize("args", [[], ["a", "b"], ["--bogus"], ["/nonexistent-dir"]])
def test_checkservice_usage_errors(args):
    """Bad arguments raise UsageError (exit 100)."""
    with pytest.raises(UsageError):
        checkservice.main(args)


def test_checkservice_cli_exit_codes(wrapper, tmp_path):
    """Through the command line: 100 for usage, 1 with errors."""
    run = subprocess.run([*wrapper, "check-service"], capture_output=True, timeout=30)
    assert run.returncode == 100
    assert run.stderr.startswith(b"supervise-smtp check-service: fatal: usage:")
    svc = _service(tmp_path, "#!/bin/sh\nexec tcpserver 0 25 qmail-smtpd\n", log=None)
    run = subprocess.run([*wrapper, "check-service", str(svc)], capture_output=True, timeout=30)
    assert run.returncode == 1 and b"\nerror: " in b"\n" + run.stdout
