"""check-service: each setting that stops mail is a finding with its fix.

The service dirs are the shipped ones (or a small run script) in a
directory every uid can traverse, with settings pointing at stand-ins (a
wrapper check-service reads but never runs, and a qmail-smtpd it starts once
as root, as its user, to see its banner: two-line sh scripts), a rules cdb
written by the real ``tcprules``, and a
free port.  qmail's own accounts (``qmaild`` and ``qmaill`` in the
``nofiles`` group) are created when missing, as on a qmail host, and left
in place (CI runs as root in a throwaway machine; other tests create them
the same way).  A missing account is a name made up for the test.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import in_ci, need
from helpers import free_port, qmail_users

from supervise_smtp.errors import UsageError
from supervise_smtp.runscript import check as checkservice
from supervise_smtp.runscript.check_run import MIN_PYTHON_LIMIT_BYTES
from supervise_smtp.runscript.wrap_serve import to_serve

REPO = Path(__file__).resolve().parents[2]
SUITES = ["daemontools", "runit", "s6"]

GOOD_RUN = """#!/bin/sh
exec 2>&1
exec tcpserver -v -R -l 0 -x {cdb} -u 7791 -g 2108 127.0.0.1 {port} \\
  {wrapper} -- softlimit -m 24000000 {smtpd}
"""
GOOD_LOG = "#!/bin/sh\nexec multilog t ./main\n"
ABSENT = f"ssmtp-absent{os.getpid()}"  # an account no host has


# ------------------------------------------------------------------ fixtures


def _need_root() -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI must run as root")
        pytest.skip("needs root (creates qmail's accounts)")


@pytest.fixture(scope="module")
def accounts() -> dict[str, pwd.struct_passwd]:
    """qmaild and qmaill in the nofiles group (qmail's INSTALL.ids), created if missing."""
    _need_root()
    return qmail_users()


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="check-service-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


RULES = '127.:allow,RELAYCLIENT=""\n:allow\n'


@pytest.fixture(scope="module")
def tcprules_cdb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """RULES compiled once by the real tcprules; each test gets a copy."""
    tmp = tmp_path_factory.mktemp("tcprules")
    subprocess.run([need("tcprules"), str(tmp / "tcp.smtp.cdb"), str(tmp / "tcp.smtp.tmp")],
                   input=RULES.encode(), check=True, capture_output=True)
    return (tmp / "tcp.smtp.cdb").read_bytes()


class Parts:
    """The stand-ins and the rules a service's settings point at, in ``root``."""

    def __init__(self, root: Path, wrapper: list[str], cdb: bytes) -> None:
        self.root = root
        self.wrapper = _script(root / "bin" / "supervise-smtp",
                               "#!/bin/sh\nexec " + " ".join(wrapper) + ' "$@"\n')
        self.smtpd = _script(root / "bin" / "qmail-smtpd",  # started once, as root
                             "#!/bin/sh\necho '220 stand-in ESMTP'\n")
        self.rules = root / "tcp.smtp"
        self.rules.write_text(RULES)
        self.cdb = root / "tcp.smtp.cdb"
        self.cdb.write_bytes(cdb)
        os.utime(self.rules, (time.time() - 60, time.time() - 60))  # older than its cdb
        self.port = free_port()

    def settings(self) -> dict[str, str]:
        return {"SUPERVISE_SMTP": str(self.wrapper), "SMTPD": str(self.smtpd),
                "TCPRULES": str(self.cdb), "IP": "127.0.0.1", "PORT": str(self.port)}

    def good_run(self) -> str:
        return GOOD_RUN.format(wrapper=self.wrapper, smtpd=self.smtpd, cdb=self.cdb,
                               port=self.port)


@pytest.fixture
def parts(public: Path, wrapper: list[str], tcprules_cdb: bytes) -> Parts:
    return Parts(public, wrapper, tcprules_cdb)


def configure(svc: Path, values: dict[str, str]) -> None:
    """Set values in a service dir the way its operator would: lines of ./conf
    (runit; a commented default is replaced) or files of ./env."""
    for sub in ("", "log"):
        conf = svc / sub / "conf"
        env = svc / sub / "env"
        mine = {k: v for k, v in values.items() if k.startswith("LOG") == (sub == "log")}
        if conf.exists():
            text = conf.read_text()
            for name, value in mine.items():
                line = f"{name}={value}"
                text, n = re.subn(rf"^#?{name}=.*$", line, text, flags=re.M)
                if not n:
                    text += line + "\n"
            conf.write_text(text)
        elif env.is_dir():
            for name, value in mine.items():
                (env / name).write_text(value + "\n" if value else "")


@pytest.fixture
def shipped(parts: Parts) -> Callable[..., Path]:
    """Factory: a copy of a shipped service dir, configured with ``parts`` and extras."""
    def make(suite: str, **extra: str) -> Path:
        svc = parts.root / suite / "qmail-smtpd"
        shutil.copytree(REPO / suite / "qmail-smtpd", svc)
        configure(svc, {**parts.settings(), **extra})
        return svc
    return make


def _service(root: Path, run: str, log: str | None = GOOD_LOG, mode: int = 0o755) -> Path:
    svc = root / "svc"
    (svc / "log" / "main").mkdir(parents=True)
    _script(svc / "run", run, mode)
    if log is not None:
        _script(svc / "log" / "run", log)
    return svc


def _levels(svc: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"ok": [], "warning": [], "error": []}
    for f in checkservice.check(str(svc)):
        found[f.level].append(str(f).split(": ", 1)[1])
    return found


def _one(found: list[str], pattern: str) -> str:
    """The one line of ``found`` matching ``pattern`` (a regex)."""
    hits = [line for line in found if re.search(pattern, line)]
    assert len(hits) == 1, (pattern, found)
    return hits[0]


# ------------------------------------------------------- dirs that are right


@pytest.mark.parametrize("suite", SUITES)
def test_checkservice_shipped_dirs_pass(suite, shipped, accounts, capsys):
    """A shipped dir pointing at installed parts, with qmaild, qmaill and a tcprules
    cdb, passes: exit 0, and every check says what it found."""
    svc = shipped(suite)
    assert checkservice.main([str(svc)]) == 0
    out = capsys.readouterr().out
    assert "error:" not in out, out
    found = _levels(svc)
    d, n = accounts["qmaild"], "nofiles"
    _one(found["ok"], rf"^run: qmail-smtpd runs as uid {d.pw_uid} \(qmaild\), gid "
                      rf"{d.pw_gid} \({n}\)$")
    _one(found["ok"], r"^run: line \d+: supervise-smtp runs qmail-smtpd$")
    _one(found["ok"], rf"^run: qmail-smtpd \S+/bin/qmail-smtpd is executable by uid "
                      rf"{d.pw_uid}$")
    _one(found["ok"], rf"^run: rules \S+/tcp.smtp.cdb readable by uid {d.pw_uid}$")
    _one(found["ok"], r"^run: the memory limit comes after supervise-smtp$")
    _one(found["ok"], r"^run: at most 20 connections at once \(-c\)$")
    _one(found["ok"], r"^run: 127\.0\.0\.1 port \d+ is free$")
    _one(found["ok"], rf"^log/run: \S+ runs as qmaill \(uid {accounts['qmaill'].pw_uid}\)$")
    _one(found["ok"], r"^log/run: \S+/log/main is missing; log/run creates it$")


@pytest.mark.parametrize("suite", SUITES)
def test_checkservice_shipped_dirs_with_serve_1(suite, shipped, accounts):
    """SERVE=1: the serve line is the one read, with the same settings, and passes."""
    svc = shipped(suite, SERVE="1")
    found = _levels(svc)
    assert found["error"] == []
    _one(found["ok"], r"^run: line \d+: supervise-smtp serve \(SERVE=1\) takes tcpserver's "
                      r"place$")
    _one(found["ok"], r"^run: line \d+: supervise-smtp serve is started with exec$")
    _one(found["ok"], r"^run: the memory limit comes after supervise-smtp serve$")
    _one(found["ok"], r"^run: qmail-smtpd runs as uid \d+ \(qmaild\)")
    assert not any("supervise-smtp runs qmail-smtpd" in t for t in found["ok"])


def test_checkservice_good_run_exit_0(parts, capsys):
    """A small correct run script prints only ok: and warning: lines and exits 0."""
    svc = _service(parts.root, parts.good_run())
    assert checkservice.main([str(svc)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.split(":")[0] in ("ok", "warning") for line in lines)


def test_checkservice_reads_a_wrap_run_serve_script(parts):
    """A run script that wrap-run --serve converted is read as a serve line."""
    text = to_serve(parts.good_run(), str(parts.wrapper)).text
    assert "supervise-smtp serve" in text and "tcpserver" not in text
    found = _levels(_service(parts.root, text))
    assert found["error"] == []
    _one(found["ok"], r"^run: line 3: supervise-smtp serve takes tcpserver's place$")
    _one(found["ok"], r"^run: qmail-smtpd runs as uid 7791 \(")


# ------------------------------------------------------------------ accounts


@pytest.mark.parametrize("suite", SUITES)
def test_checkservice_missing_account(suite, shipped):
    """`id -u NAME` with no such user: -u and -g are empty, each an error that names
    the setting, where it comes from, and the two fixes."""
    svc = shipped(suite)
    run = svc / "run"
    run.write_text(run.read_text().replace("id -u qmaild", f"id -u {ABSENT}")
                   .replace("id -g qmaild", f"id -g {ABSENT}"))
    assert checkservice.main([str(svc)]) == 1
    errors = _levels(svc)["error"]
    where = "conf" if suite == "runit" else "env/QMAILDUID"
    line = _one(errors, r"^run: tcpserver -u is empty")
    assert re.sub(r"run line \d+", "run line N", line) == (
        f"run: tcpserver -u is empty: QMAILDUID comes from run line N: "
        f"$(id -u {ABSENT} 2>/dev/null), and "
        f"id: '{ABSENT}': no such user (tcpserver reads it as 0 and keeps root's uid); fix: "
        "create the user: groupadd -f nofiles && useradd --system -g nofiles -d /var/qmail "
        f"-s /usr/sbin/nologin {ABSENT}; or set QMAILDUID in {svc}/{where} to the numeric "
        "uid (id -u qmaild)")
    _one(errors, rf"^run: tcpserver -g is empty: NOFILESGID comes from run line \d+: "
                 rf"\$\(id -g {ABSENT} 2>/dev/null\)")


def test_checkservice_uid_that_is_a_name(shipped, accounts):
    """QMAILDUID=qmaild (a name, not a number): tcpserver would read 0 and stay root."""
    svc = shipped("runit", QMAILDUID="qmaild")
    line = _one(_levels(svc)["error"], r"^run: tcpserver -u 'qmaild' is not a number")
    assert "QMAILDUID comes from ./conf line" in line
    assert line.endswith(f"fix: set QMAILDUID in {svc}/conf to the numeric uid "
                         "(id -u qmaild)")


def test_checkservice_serve_refuses_an_empty_uid(shipped):
    """With SERVE=1 a missing account is serve's usage error (exit 100)."""
    svc = shipped("daemontools", SERVE="1", QMAILDUID="", NOFILESGID="")
    run = svc / "run"
    run.write_text(run.read_text().replace("id -u qmaild", f"id -u {ABSENT}"))
    line = _one(_levels(svc)["error"], r"^run: serve -u is empty")
    assert "(serve refuses it: exit 100)" in line


# ------------------------------------------------------------------- wrapper


@pytest.mark.parametrize("suite", SUITES)
def test_checkservice_wrapper_missing(suite, shipped, accounts):
    """A SUPERVISE_SMTP that does not exist: install.sh or the setting to fix it."""
    svc = shipped(suite, SUPERVISE_SMTP="/nonexistent/supervise-smtp")
    where = "conf" if suite == "runit" else "env/SUPERVISE_SMTP"
    assert _levels(svc)["error"] == [
        "run: supervise-smtp /nonexistent/supervise-smtp is missing or not executable; fix: "
        "install it with sh scripts/install.sh (it links /usr/local/bin/supervise-smtp), or "
        f"set SUPERVISE_SMTP in {svc}/{where} to its absolute path"]


def test_checkservice_wrapper_unreachable_by_qmaild(shipped, parts, accounts):
    """A wrapper in a directory qmaild cannot search (a 0700 home) is an error."""
    private = parts.root / "private"
    private.mkdir(mode=0o700)
    hidden = _script(private / "supervise-smtp", parts.wrapper.read_text())
    svc = shipped("runit", SUPERVISE_SMTP=str(hidden))
    line = _one(_levels(svc)["error"], r"^run: supervise-smtp runs as uid")
    assert f"{private} is not searchable by uid {accounts['qmaild'].pw_uid}" in line
    assert "fix: install it with sh scripts/install.sh" in line


@pytest.mark.parametrize("serve", ["", "1"])
def test_checkservice_wrapper_options_refused(shipped, accounts, serve):
    """Wrapper options the wrapper (or serve) refuses stop every connection."""
    svc = shipped("runit", SERVE=serve, SUPERVISE_SMTP_OPTS='"--format xml"')
    who = "supervise-smtp serve" if serve else "supervise-smtp"
    line = _one(_levels(svc)["error"], rf"^run: line \d+: {who} refuses its options")
    assert "bad value for --format: xml" in line
    assert f"set SUPERVISE_SMTP_OPTS in {svc}/conf" in line


def test_checkservice_every_refused_wrapper_option_is_reported(shipped, accounts):
    """Three bad options in SUPERVISE_SMTP_OPTS: three findings, not just the first."""
    svc = shipped("runit", SUPERVISE_SMTP_OPTS='"--format xml --bogus --linger -1"')
    refused = [e for e in _levels(svc)["error"] if "refuses its options" in e]
    assert [re.sub(r".*refuses its options: (.*) \(exit 100.*", r"\1", e) for e in refused] == [
        "bad value for --format: xml (one of logfmt|json)", "unknown option --bogus",
        "bad value for --linger: -1"]


# --------------------------------------------------------------- qmail-smtpd


def test_checkservice_smtpd_missing(shipped, accounts):
    svc = shipped("s6", SMTPD="/nonexistent/qmail-smtpd")
    assert _levels(svc)["error"] == [
        "run: qmail-smtpd /nonexistent/qmail-smtpd is missing or not executable: every "
        "connection fails; fix: install qmail (netqmail), or set SMTPD in "
        f"{svc}/env/SMTPD to its path"]


def test_checkservice_smtpd_not_executable_by_qmaild(shipped, parts, accounts):
    """A qmail-smtpd only root may run (0700) is an error for qmaild."""
    parts.smtpd.chmod(0o700)
    line = _one(_levels(shipped("runit"))["error"], r"^run: qmail-smtpd's uid")
    assert f"{parts.smtpd} is not executable by uid {accounts['qmaild'].pw_uid} " \
           "(mode 0700, owner 0:0)" in line


# --------------------------------------------------------------------- rules


def test_checkservice_rules_missing(shipped, parts, accounts):
    """No cdb: tcpserver drops every connection; the fix is the tcprules command."""
    parts.cdb.unlink()
    svc = shipped("daemontools")
    assert _levels(svc)["error"] == [
        f"run: rules {parts.cdb} does not exist: tcpserver drops every connection (unable "
        f"to read {parts.cdb}); fix: tcprules {parts.cdb} {parts.cdb}.tmp < {parts.rules}, "
        f"or set TCPRULES in {svc}/env/TCPRULES to the cdb"]


def test_checkservice_rules_missing_under_X(parts):
    """tcpserver -X with no cdb lets every client in: a warning, not an error."""
    parts.cdb.unlink()
    parts.rules.unlink()
    svc = _service(parts.root, parts.good_run().replace("-x ", "-X -x "))
    found = _levels(svc)
    assert found["error"] == []
    line = _one(found["warning"], r"^run: rules .* -X lets every client in")
    assert "e.g. 127.:allow,RELAYCLIENT=\"\" and :allow" in line


def test_checkservice_rules_unreadable_by_qmaild(shipped, parts, accounts):
    parts.cdb.chmod(0o600)
    line = _one(_levels(shipped("runit"))["error"], r"^run: rules .* cannot be read by")
    assert "every connection is dropped; fix: chmod 644" in line


def test_checkservice_rules_not_a_cdb(shipped, parts, accounts):
    """A file that is not a cdb (here the source, copied over) is an error."""
    shutil.copy(parts.rules, parts.cdb)
    line = _one(_levels(shipped("runit"))["error"], r"^run: rules .* is not a readable cdb")
    assert f"fix: tcprules {parts.cdb} {parts.cdb}.tmp < {parts.rules}" in line


def test_checkservice_rules_older_than_source(shipped, parts, accounts):
    """tcp.smtp edited after tcp.smtp.cdb was built: a warning with the rebuild."""
    later = parts.cdb.stat().st_mtime + 10
    os.utime(parts.rules, (later, later))
    found = _levels(shipped("runit"))
    assert found["error"] == []
    assert f"run: {parts.rules} is newer than {parts.cdb}: the rules in force are the old " \
           f"ones; fix: tcprules {parts.cdb} {parts.cdb}.tmp < {parts.rules}" in found["warning"]


# ------------------------------------------------------------- memory limits


@pytest.mark.parametrize("limit, level", [("2000000", "error"), ("500000000", "warning")])
def test_checkservice_softlimit_before_wrapper(parts, limit, level):
    """softlimit before supervise-smtp binds Python: below what it needs to start, an
    error (every connection fails); above, a warning.  Both say to move it."""
    assert int(limit) < MIN_PYTHON_LIMIT_BYTES or level == "warning"
    run = parts.good_run().replace("exec tcpserver", f"exec softlimit -m {limit} tcpserver") \
        .replace("softlimit -m 24000000 /", "/")
    found = _levels(_service(parts.root, run))
    line = _one(found[level], r"^run: line 3: softlimit ")
    assert "fix: move it after supervise-smtp --, just before qmail-smtpd" in line
    assert [e for e in found["error"] if e != line] == []


def test_checkservice_python_needs_more_than_the_error_limit(wrapper):
    """The error threshold is honest: the wrapper cannot start under 2 MB, and starts
    under MIN_PYTHON_LIMIT_BYTES."""
    softlimit = need("softlimit")
    argv = [*wrapper, "--", "true"]
    low = subprocess.run([softlimit, "-m", "2000000", *argv], input=b"", capture_output=True,
                         timeout=30)
    high = subprocess.run([softlimit, "-m", str(MIN_PYTHON_LIMIT_BYTES), *argv], input=b"",
                          capture_output=True, timeout=30)
    assert low.returncode != 0
    assert high.returncode == 0, high.stderr


def test_checkservice_no_softlimit(parts):
    run = parts.good_run().replace("softlimit -m 24000000 ", "")
    line = _one(_levels(_service(parts.root, run))["warning"], r"^run: no softlimit")
    assert line.endswith("fix: add softlimit -m 24000000 just before qmail-smtpd")


# ------------------------------------------------------------- concurrency


@pytest.mark.parametrize("value", ["abc", "0"])
def test_checkservice_concurrency_not_a_number(shipped, accounts, value):
    """-c that tcpserver reads as 0 accepts no connection."""
    svc = shipped("runit", MAXSMTPD=value)
    line = _one(_levels(svc)["error"], rf"^run: -c '{value}' \(MAXSMTPD from ./conf line")
    assert "tcpserver reads it as 0 and accepts no connection" in line


def test_checkservice_concurrency_fix_quotes_a_default_only_the_script_has(shipped, accounts,
                                                                            parts):
    """The shipped run's fallback (control/concurrencyincoming, else 20) is quoted for the
    shipped run, never for a script of one's own that has none."""
    line = _one(_levels(shipped("runit", MAXSMTPD="abc"))["error"], r"^run: -c 'abc'")
    assert "(MAXSMTPD unset: control/concurrencyincoming, else 20)" in line
    own = GOOD_RUN.replace("-l 0", "-l 0 -c abc")
    svc = _service(parts.root, own.format(wrapper=parts.wrapper, smtpd=parts.smtpd,
                                          cdb=parts.cdb, port=parts.port))
    line = _one(_levels(svc)["error"], r"^run: -c 'abc'")
    assert "concurrencyincoming" not in line and "MAXSMTPD" not in line, line
    assert line.endswith("to a number, the most connections at once"), line


def test_checkservice_serve_setting_unknown(shipped, accounts):
    """SERVE=yes: the shipped run script exits 100."""
    line = _one(_levels(shipped("runit", SERVE="yes"))["error"], r"^run: SERVE=yes")
    assert "fix: set SERVE in" in line


# ---------------------------------------------------------------------- port


def test_checkservice_port_in_use(shipped, parts, accounts):
    """Another process listening on the port: named, with the fix."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", parts.port))
        other.listen()
        found = _levels(shipped("runit"))
    line = _one(found["error"], rf"^run: 127\.0\.0\.1 port {parts.port} is already in use")
    assert f"by pid {os.getpid()} (" in line
    assert "tcpserver cannot bind, and the supervisor restarts it every second; fix: stop " \
           "that server" in line


def _listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.02)


@pytest.mark.parametrize("server", ["tcpserver", "serve"])
def test_checkservice_port_held_by_its_own_server(shipped, parts, accounts, wrapper, server):
    """The service's own running tcpserver (or serve) is not a conflict: it runs in
    the service dir, as every supervisor starts it."""
    svc = shipped("runit", SERVE="1" if server == "serve" else "")
    opts = ["-R", "-H", "-l", "0", "127.0.0.1", str(parts.port), "true"]
    argv = [need("tcpserver"), *opts] if server == "tcpserver" else [*wrapper, "serve", *opts]
    proc = subprocess.Popen(argv, cwd=svc, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _listening(parts.port, proc)
        found = _levels(svc)
    finally:
        proc.kill()
        proc.wait()
    assert found["error"] == []
    _one(found["ok"], rf"^run: 127\.0\.0\.1 port {parts.port} is held by this service's own "
                      rf"\S+ \(pid {proc.pid}\)$")


def test_checkservice_address_not_on_this_host(shipped, accounts):
    """IP set to an address the host does not have: tcpserver cannot bind."""
    svc = shipped("daemontools", IP="192.0.2.7")
    assert _levels(svc)["error"] == [
        "run: 192.0.2.7 is not an address of this host: tcpserver cannot bind; fix: set IP "
        f"in {svc}/env/IP (0: all addresses)"]


def test_checkservice_unknown_port_name(shipped, accounts):
    svc = shipped("runit", PORT="no-such-service")
    _one(_levels(svc)["error"], r"^run: port 'no-such-service' is not a port number")


# ----------------------------------------------------------------------- log


@pytest.mark.parametrize("suite", SUITES)
def test_checkservice_log_user_missing(suite, shipped):
    """A log user that does not exist: the logger fails, then the mail service blocks."""
    svc = shipped(suite, LOGUSER=ABSENT)
    line = _one(_levels(svc)["error"], rf"^log/run: \S+ runs as {ABSENT}")
    assert "the log service fails, and the mail service blocks once its log pipe is full" \
           in line
    assert f"fix: create the user: groupadd -f nofiles && useradd --system -g nofiles -d " \
           f"/nonexistent -s /usr/sbin/nologin {ABSENT}, or set LOGUSER in" in line


@pytest.mark.parametrize("suite", SUITES)
def test_checkservice_log_dir_not_writable(suite, shipped, accounts):
    """An existing log directory the log user cannot write is an error until chowned;
    so is a ``current`` file it cannot append to."""
    svc = shipped(suite)
    main = svc / "log" / "main"
    main.mkdir(mode=0o755)
    line = _one(_levels(svc)["error"], r"^log/run: \S+ runs as qmaill and cannot write")
    assert line.endswith(f"fix: chown -R qmaill {main}")
    uid, gid = accounts["qmaill"].pw_uid, accounts["qmaill"].pw_gid
    os.chown(main, uid, gid)
    found = _levels(svc)
    assert found["error"] == []
    _one(found["ok"], rf"^log/run: {main} is writable by qmaill$")
    (main / "current").write_text("")  # root's, 0644
    _one(_levels(svc)["error"], rf"^log/run: .*{main}/current is not writable by uid {uid}")


def test_checkservice_log_dir_missing(parts):
    """A logger directory that does not exist and that log/run does not create."""
    svc = _service(parts.root, parts.good_run(), log="#!/bin/sh\nexec multilog t ./gone\n")
    assert _levels(svc)["error"] == [
        f"log/run: {svc}/log/gone does not exist: multilog cannot start; fix: mkdir -p "
        f"{svc}/log/gone && chown root {svc}/log/gone"]


# ------------------------------------------------ the run script's structure


@pytest.mark.parametrize("run, message", [
    (GOOD_RUN.replace("exec tcpserver", "tcpserver"), "tcpserver is not started with exec"),
    (GOOD_RUN.replace("exec 2>&1\n", ""), "stderr is not sent to the log"),
    (GOOD_RUN.replace("{wrapper} -- ", ""), "supervise-smtp is not in the qmail-smtpd chain"),
    (GOOD_RUN.replace("{wrapper}", "/nonexistent/supervise-smtp"), "missing or not executable"),
    (GOOD_RUN.replace("{wrapper}", "supervise-smtp"), "supervise-smtp is not on PATH"),
    (GOOD_RUN + "if then\n", "sh -n fails"),
    ("#!/bin/sh\nexec 2>&1\nexec tcpsvd 0 25 qmail-smtpd\n", "cannot find the tcpserver"),
    ("#!/bin/sh\nPATH=/nonexistent\n" + GOOD_RUN.split("\n", 1)[1],
     "tcpserver is not installed (not found on /nonexistent); fix: apt-get install ucspi-tcp"),
])
def test_checkservice_errors(parts, monkeypatch, run, message):
    """Each broken run script gives an error: finding that names the problem."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no supervise-smtp on it
    svc = _service(parts.root, run.format(wrapper=parts.wrapper, smtpd=parts.smtpd,
                                          cdb=parts.cdb, port=parts.port))
    errors = _levels(svc)["error"]
    assert any(message in e for e in errors), errors
    assert checkservice.main([str(svc)]) == 1


@pytest.mark.parametrize("program", ["tcpserver", "softlimit"])
def test_checkservice_program_at_another_path_says_where_it_is(parts, program):
    """Life with qmail's /usr/local/bin/tcpserver where Debian's is /usr/bin/tcpserver:
    the finding says where the program is and to change the path, not to install it."""
    local = f"/usr/local/bin/{program}"
    assert not os.path.exists(local), f"{local} exists on this host"
    installed = shutil.which(program, path=checkservice.SUPERVISOR_PATH)
    assert installed is not None, program
    run = GOOD_RUN.replace(f"exec {program}" if program == "tcpserver" else f"-- {program}",
                           f"exec {local}" if program == "tcpserver" else f"-- {local}")
    svc = _service(parts.root, run.format(wrapper=parts.wrapper, smtpd=parts.smtpd,
                                          cdb=parts.cdb, port=parts.port))
    errors = _levels(svc)["error"]
    line = _one(errors, rf"{local} does not exist")
    assert line == (f"run: {local} does not exist; {program} is installed as {installed}; "
                    f"fix: change {local} to {installed} in the script"), errors
    assert not any("apt-get install" in e for e in errors), errors


def test_checkservice_run_not_executable(parts):
    """A run script without the x bit is an error."""
    svc = _service(parts.root, parts.good_run(), mode=0o644)
    assert f"run: not executable; fix: chmod 755 {svc}/run" in _levels(svc)["error"]


def test_checkservice_missing_log_service(parts):
    """No log/run is an error: the events would reach the supervisor's stderr."""
    svc = _service(parts.root, parts.good_run(), log=None)
    assert any(e.startswith("log/run: missing") for e in _levels(svc)["error"])


@pytest.mark.parametrize("edit, message", [
    (("-- softlimit", "-- recordio softlimit"), "recordio is still"),
    (("-- softlimit", "-- fixcrio softlimit"), "fixcrio is still"),
    (("{wrapper}", "supervise-smtp"), "looked up on this shell's PATH"),
])
def test_checkservice_warnings(parts, monkeypatch, edit, message):
    """Risky but working setups give warning: findings and still exit 0."""
    monkeypatch.setenv("PATH", str(parts.wrapper.parent) + ":/usr/bin:/bin")
    run = GOOD_RUN.replace(*edit).format(wrapper=parts.wrapper, smtpd=parts.smtpd,
                                         cdb=parts.cdb, port=parts.port)
    found = _levels(_service(parts.root, run))
    assert any(message in w for w in found["warning"]), found
    assert found["error"] == []


@pytest.mark.parametrize("log, message", [
    ("#!/bin/sh\nexec multilog ./main\n", "multilog without a timestamp option"),
    ("#!/bin/sh\nexec svlogd ./main\n", "svlogd without a timestamp option"),
    ("#!/bin/sh\nexec cat > /dev/null\n", "no multilog, svlogd or s6-log"),
])
def test_checkservice_log_warnings(parts, log, message):
    """A logger without timestamps, or no known logger, is a warning."""
    svc = _service(parts.root, parts.good_run(), log=log)
    assert any(message in w for w in _levels(svc)["warning"])


def test_checkservice_shell_syntax_errors(parts):
    """A run script the lexer cannot cut is an error, a log/run one a warning, a conf
    one is skipped (its settings unknown)."""
    svc = _service(parts.root, parts.good_run() + "echo 'oops\n",
                   log="#!/bin/sh\nexec multilog t \"./main\n")
    (svc / "conf").write_text("X='unterminated\n")
    found = _levels(svc)
    assert "run: cannot find the tcpserver ... qmail-smtpd command: unterminated ' quote " \
           f"at line 5; fix: correct the syntax of {svc}/run" in found["error"]
    assert 'log/run: cannot parse: unterminated " quote at line 2; fix: correct the syntax ' \
           f"of {svc}/log/run" in found["warning"]


def test_checkservice_is_read_only(parts):
    """check-service changes no file and creates none."""
    svc = _service(parts.root, parts.good_run())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
              for p in parts.root.rglob("*")}
    checkservice.check(str(svc))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
             for p in parts.root.rglob("*")}
    assert before == after


@pytest.mark.parametrize("args", [[], ["a", "b"], ["--bogus"], ["/nonexistent-dir"]])
def test_checkservice_usage_errors(args):
    """Bad arguments raise UsageError (exit 100)."""
    with pytest.raises(UsageError):
        checkservice.main(args)


def test_checkservice_cli_exit_codes(wrapper, parts):
    """Through the command line: 100 for usage, 1 with errors, 0 for a good dir."""
    run = subprocess.run([*wrapper, "check-service"], capture_output=True, timeout=30)
    assert run.returncode == 100
    assert run.stderr.startswith(b"supervise-smtp check-service: fatal: usage:")
    good = _service(parts.root, parts.good_run())
    run = subprocess.run([*wrapper, "check-service", str(good)], capture_output=True,
                         timeout=30)
    assert run.returncode == 0, run.stdout
    (good / "run").write_text("#!/bin/sh\nexec tcpserver 0 25 qmail-smtpd\n")
    run = subprocess.run([*wrapper, "check-service", str(good)], capture_output=True,
                         timeout=30)
    assert run.returncode == 1 and b"\nerror: " in b"\n" + run.stdout


# --------------------------------------------- what qmail-smtpd meets as its user


@pytest.mark.parametrize("mode", [None, 0o700], ids=["missing", "root-only"])
def test_checkservice_qmailqueue_qmail_smtpd_cannot_run(shipped, accounts, parts, mode):
    """QMAILQUEUE naming a program that is not there, or that qmaild may not run: every
    message would get 451; an error, with where QMAILQUEUE is set."""
    queue = parts.root / "bin" / "qmail-scanner-queue"
    if mode is not None:
        _script(queue, "#!/bin/sh\nexit 0\n", mode)
    svc = shipped("daemontools", QMAILQUEUE=str(queue))
    line = _one(_levels(svc)["error"], r"^run: QMAILQUEUE=")
    why = (f"{queue}: No such file or directory" if mode is None else
           f"{queue} is not executable by uid {accounts['qmaild'].pw_uid}")
    assert why in line and "451 unable to exec qq" in line, line
    assert f"fix: install the queue program, or set QMAILQUEUE in {svc}/env/QMAILQUEUE" in line
    queue.unlink(missing_ok=True)
    _script(queue, "#!/bin/sh\nexit 0\n")
    _one(_levels(svc)["ok"], rf"^run: QMAILQUEUE {queue} can be run by qmail-smtpd$")


@pytest.mark.parametrize("name", ["me", "rcpthosts"])
def test_checkservice_control_file_unreadable_by_qmaild(shipped, accounts, parts, name):
    """control/me or control/rcpthosts under the qmail home of that qmail-smtpd (HOME/bin/
    qmail-smtpd) that qmaild cannot read: 421 to every client."""
    control = parts.root / "control"
    control.mkdir(exist_ok=True)
    for each in ("me", "rcpthosts"):
        (control / each).write_text("mx.example\n")
        (control / each).chmod(0o644)
    (control / name).chmod(0o600)
    line = _one(_levels(shipped("runit"))["error"], rf"control/{name} is not readable")
    assert "421 unable to read controls" in line and f"fix: chmod 644 {control / name}" in line


def test_checkservice_child_started_as_its_user_must_print_a_banner(shipped, accounts):
    """softlimit -m 2000000 placed right, yet nothing can map libc under it: check-service
    (root) starts the child's part as qmaild and reports the missing 220."""
    found = _levels(shipped("daemontools"))
    _one(found["ok"], r"^run: softlimit -m 24000000 \S+/qmail-smtpd, started as uid \d+, "
                      r"prints its banner \(220 stand-in ESMTP\)$")
    line = _one(_levels(shipped("runit", SOFTLIMIT="2000000"))["error"], r"printed no 220")
    assert line.startswith("run: softlimit -m 2000000 ") and "SOFTLIMIT" in line, line


def test_checkservice_child_start_skipped_and_said_when_not_root(shipped, accounts,
                                                                   monkeypatch):
    """Not root: the child cannot be started as qmaild, and the finding says so."""
    from supervise_smtp.runscript import check_child as checkservice_child

    svc = shipped("runit", SOFTLIMIT="2000000")
    monkeypatch.setattr(checkservice_child.os, "geteuid", lambda: 1000)
    found = _levels(svc)
    line = _one(found["warning"], r"was not started as uid")
    assert "check-service is not root" in line
    assert not any("printed no 220" in e for e in found["error"])


@pytest.mark.parametrize("suite", SUITES)
def test_checkservice_collect_textfile_dir_not_writable_by_the_log_user(suite, shipped,
                                                                        accounts, parts):
    """The shipped log/run's collect line, uncommented, with its root-owned textfile
    directory: qmaill cannot write the counters there, an error; made qmaill's, ok."""
    svc = shipped(suite)
    prom = parts.root / "node-exporter"
    prom.mkdir(mode=0o755)
    log_run = svc / "log" / "run"
    text = log_run.read_text()
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("#exec "))
    end = next(i for i in range(start, len(lines)) if not lines[i].rstrip().endswith("\\"))
    collect = "".join(line[1:] for line in lines[start:end + 1])  # uncommented
    collect = collect.replace("/var/lib/prometheus/node-exporter", str(prom))
    collect = collect.replace("/usr/local/bin/supervise-smtp", str(parts.wrapper))
    log_run.write_text("".join(lines[:start]) + collect)
    line = _one(_levels(svc)["error"], r"^log/run: collect runs as qmaill and cannot write")
    assert f"--textfile in {prom}" in line and f"fix: mkdir -p {prom} && chown qmaill" in line
    os.chown(prom, accounts["qmaill"].pw_uid, -1)
    _one(_levels(svc)["ok"], rf"^log/run: collect's --textfile directory {prom} is writable")
