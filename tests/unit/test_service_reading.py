"""service_settings and service_line: a run script's settings and its server
command, worked out as the script would, without running anything."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from supervise_smtp.runscript.line import NoServerLine, server_line
from supervise_smtp.runscript.settings import Setting, expand_word, service_settings
from supervise_smtp.runscript.sh import shell_commands

REPO = Path(__file__).resolve().parents[2]
ABSENT = f"ssmtp-absent{os.getpid()}"


def _settings(directory: Path, text: str) -> dict[str, Setting]:
    return service_settings(str(directory), shell_commands(text))


def _values(directory: Path, text: str) -> dict[str, str | None]:
    return {k: s.value for k, s in _settings(directory, text).items()}


def test_settings_sourced_conf_then_defaults(tmp_path):
    """./conf (sourced) wins; an empty or missing setting takes the script's default."""
    (tmp_path / "conf").write_text("A=from-conf\nB=\n#C=commented\n")
    text = ('. ./conf\n: "${A:=default-a}"\n: "${B:=default-b}"\n: "${C:=default-c}"\n'
            ': "${B=not-used}"\n')
    got = _settings(tmp_path, text)
    assert {k: s.value for k, s in got.items()} == {
        "A": "from-conf", "B": "default-b", "C": "default-c"}
    assert got["A"].origin == "./conf line 1"
    assert got["C"].origin == "run line 4"


def test_settings_colonless_default_keeps_an_empty_value(tmp_path):
    """${X=d} fills only an unset X, ${X:=d} an empty one too (as sh)."""
    text = 'X=\nY=\n: "${X=dx}" "${Y:=dy}" "${Z=dz}"\n'
    assert _values(tmp_path, text) == {"X": "", "Y": "dy", "Z": "dz"}


def test_settings_envdir_reexec(tmp_path):
    """An ``exec envdir ./env "$0"`` loads ./env as envdir does: first line, trailing
    blanks dropped, NUL as newline, an empty file unsets."""
    env = tmp_path / "env"
    env.mkdir()
    (env / "A").write_text("first  \t\nsecond\n")
    (env / "B").write_bytes(b"x\0y\n")
    (env / "C").write_text("")
    (env / "D").write_text("\n")
    text = 'C=set-in-script\nexec envdir ./env "$0"\n: "${D:=d-default}"\n'
    got = _values(tmp_path, text)
    assert got["A"] == "first"
    assert got["B"] == "x\ny"
    assert got["C"] == "set-in-script"  # unset by envdir, then set by the script
    assert got["D"] == "d-default"


@pytest.mark.parametrize("reexec", ['exec s6-envdir -I ./env "$0"', 'exec chpst -e ./env "$0"'])
def test_settings_other_envdirs(tmp_path, reexec):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "PORT").write_text("2525\n")
    assert _values(tmp_path, reexec + '\n: "${PORT:=smtp}"\n')["PORT"] == "2525"


def test_settings_id_from_the_password_database(tmp_path):
    """$(id -u NAME) / `id -g NAME` are answered by pwd; no such user is an empty value
    with the shell's reason and the fix."""
    root = pwd.getpwnam("root")
    text = (f': "${{U:=$(id -u root)}}"\nG=`id -g root`\n'
            f': "${{MISSING:=$(id -u {ABSENT})}}"\n')
    got = _settings(tmp_path, text)
    assert got["U"].value == str(root.pw_uid) and got["G"].value == str(root.pw_gid)
    assert got["MISSING"].value == ""
    assert got["MISSING"].origin == f"run line 3: $(id -u {ABSENT})"
    assert got["MISSING"].problem == f"id: '{ABSENT}': no such user"
    assert got["MISSING"].fix is not None and "useradd --system -g nofiles" in got["MISSING"].fix


def test_settings_head_of_a_control_file(tmp_path):
    """$(head -n 1 FILE 2>/dev/null) reads the file's first line; a missing file gives
    nothing, and the next default takes over (the shipped MAXSMTPD chain)."""
    control = tmp_path / "concurrencyincoming"
    text = (f': "${{MAXSMTPD:=$(head -n 1 {control} 2>/dev/null)}}"\n'
            ': "${MAXSMTPD:=20}"\n')
    assert _values(tmp_path, text)["MAXSMTPD"] == "20"
    control.write_text("37\nignored\n")
    assert _values(tmp_path, text)["MAXSMTPD"] == "37"


def test_settings_unknowable_values_are_none(tmp_path):
    """A substitution nobody can answer without running it is unknown, and so is what
    is built from it."""
    got = _values(tmp_path, 'H=$(hostname)\n: "${I:=$H.local}"\n: "${J:=$(id qmaild)}"\n')
    assert got == {"H": None, "I": None, "J": None}


def test_settings_unset_and_export(tmp_path):
    text = "export A=1 B=2\nunset A\nC=$B-x\n"
    assert _values(tmp_path, text) == {"B": "2", "C": "2-x"}


@pytest.mark.parametrize("word, want", [
    ("$OPTS", ["--format", "json"]),
    ('"$OPTS"', ["--format json"]),
    ("$EMPTY", []),
    ('"$EMPTY"', [""]),
    ("$UNSET", []),
    ('"${UNSET:-0}"', ["0"]),
    ('"${EMPTY:-0}"', ["0"]),
    ('"${EMPTY-0}"', [""]),
    ("-x$DIR/tcp.cdb", ["-x/etc/tcp.cdb"]),
    ("$(hostname)", None),
])
def test_expand_word_splits_as_sh(tmp_path, word, want):
    """An unquoted expansion is split at blanks (empty: no argument), a quoted one not."""
    values = _settings(tmp_path, "OPTS='--format json'\nEMPTY=\nDIR=/etc\n")
    (w,) = shell_commands(f"x {word}\n")[0].args[1:]
    assert expand_word(w, values) == want


@pytest.mark.parametrize("suite", ["daemontools", "runit", "s6"])
@pytest.mark.parametrize("serve", ["", "1"])
def test_server_line_of_the_shipped_scripts(tmp_path, suite, serve):
    """Both lines of each shipped script read with their settings: SERVE picks one."""
    svc = tmp_path / "svc"
    svc.mkdir()
    values = {"SERVE": serve, "QMAILDUID": "71", "NOFILESGID": "80", "PORT": "2525",
              "SUPERVISE_SMTP_OPTS": "--format json", "SMTPD": "/opt/fake-smtpd"}
    if suite == "runit":
        (svc / "conf").write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
    else:
        (svc / "env").mkdir()
        for k, v in values.items():
            (svc / "env" / k).write_text(v + "\n")
    text = (REPO / suite / "qmail-smtpd" / "run").read_text()
    commands = shell_commands(text)
    line = server_line(text, commands, service_settings(str(svc), commands))
    assert line.mode == ("serve" if serve else "tcpserver")
    assert {k: a.value for k, a in line.options.items()} == {
        "l": "0", "x": "/etc/tcp.smtp.cdb", "c": "20", "u": "71", "g": "80"}
    assert line.flags == {"v", "R"}
    assert line.host is not None and line.port is not None
    assert (line.host.value, line.port.value) == ("0", "2525")
    values_of = [a.value for a in line.args]
    assert line.smtpd is not None and values_of[line.smtpd] == "/opt/fake-smtpd"
    assert line.wrapper is not None
    assert values_of[line.wrapper] == "/usr/local/bin/supervise-smtp"
    limiter = "s6-softlimit" if suite == "s6" else "softlimit"
    assert values_of[line.prog:] == [*(["/usr/local/bin/supervise-smtp", "--format", "json",
                                        "--"] if not serve else []),
                                     limiter, "-m", "24000000", "/opt/fake-smtpd"]
    if serve:
        assert line.long_options == ["--format", "json"]
        assert line.server == line.wrapper


def test_server_line_bundled_and_attached_options(tmp_path):
    """tcpserver's getopt: -vRl0 bundles, -c40 attaches, -x FILE takes the next word."""
    text = "exec tcpserver -vRl0 -c40 -x /etc/r.cdb -u71 0 25 supervise-smtp -- qmail-smtpd\n"
    line = server_line(text, shell_commands(text), {})
    assert {k: a.value for k, a in line.options.items()} == {
        "l": "0", "c": "40", "x": "/etc/r.cdb", "u": "71"}
    assert line.flags == {"v", "R"}
    assert line.host is not None and line.host.value == "0"


def test_server_line_refusals(tmp_path):
    """No tcpserver or serve command: NoServerLine with the reason."""
    text = "exec tcpsvd 0 25 qmail-smtpd\n"
    with pytest.raises(NoServerLine, match="tcpsvd is not supported"):
        server_line(text, shell_commands(text), {})
