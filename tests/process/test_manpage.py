"""The man page supervise-smtp(8): generated from its markdown source, clean and complete."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

from conftest import need

from supervise_smtp import __version__, cli

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "supervise-smtp.8"


def _renderer():
    spec = importlib.util.spec_from_file_location("render_man", REPO / "docs" / "render_man.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _groff(*extra: str) -> subprocess.CompletedProcess[str]:
    need("groff")  # fails under CI, skips elsewhere
    return subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", *extra, str(PAGE)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def _text() -> str:
    """The page as plain text, 80 columns, typographic dashes folded to ASCII."""
    proc = _groff("-rLL=80n", "-P-c", "-P-b", "-P-u")
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"[\u2010\u2011\u2012\u2013\u2212]", "-", proc.stdout)
    return re.sub(r"-\n\s+", "-", text)  # a word broken after a hyphen


def test_manpage_committed_file_matches_renderer():
    """The committed docs/supervise-smtp.8 is exactly what render_man.py produces now."""
    render_man = _renderer()
    expected = render_man.render(render_man.SOURCE.read_text(encoding="utf-8"), __version__)
    assert PAGE.read_text(encoding="utf-8") == expected, (
        "docs/supervise-smtp.8 is stale: run `python docs/render_man.py` and commit the result"
    )


def test_manpage_th_line_carries_package_version():
    """The .TH line names section 8 and the version from supervise_smtp/__init__.py."""
    assert f'.TH SUPERVISE-SMTP 8 "2026-11-25" "supervise-smtp {__version__}"\n' in (
        PAGE.read_text(encoding="utf-8")
    )


def test_manpage_groff_reports_no_warnings():
    """groff -man -ww formats the page without a single warning on stderr."""
    proc = _groff("-z")
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_manpage_lists_every_valued_option():
    """Every option cli._VALUED accepts appears in the rendered page."""
    text = _text()
    missing = [opt for opt in cli._VALUED if opt not in text]
    assert not missing, f"options missing from the man page: {missing}"


def test_manpage_documents_exit_codes_100_and_111():
    """The rendered EXIT CODES section documents codes 100 and 111."""
    text = _text()
    match = re.search(r"^EXIT CODES\n(.*?)^\S", text, re.M | re.S)
    assert match, "no EXIT CODES section"
    section = match.group(1)
    words = " ".join(section.split())  # undo justification and line breaks
    assert "100 usage error" in words
    assert "111 the child could not be started" in words
