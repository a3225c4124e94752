"""docs/alerts/supervise-smtp.rules.yml under the real promtool (Debian's prometheus package).

``promtool check rules`` validates the file, ``promtool test rules`` runs
its unit tests (docs/alerts/supervise-smtp.rules.test.yml: each rule fires
on its case and stays quiet on stops, bare-LF bursts and the like).  Around
them: every alert has a test in which it fires, the rules name only metric
families and label values metrics.py really exposes (a rename fails here,
not silently in production), and a rule changed to alert on stops fails
the unit tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from conftest import need

from supervise_smtp.logs.metrics import Metrics
from supervise_smtp.logs.tally import (
    CHILD_SIGNALS,
    QUEUE_CLASSES,
    REPLY_LABELS,
    STAGE_LABELS,
    VERDICT_LABELS,
)

ALERTS = Path(__file__).resolve().parents[2] / "docs" / "alerts"
RULES = ALERTS / "supervise-smtp.rules.yml"
TESTS = ALERTS / "supervise-smtp.rules.test.yml"
LABEL_VALUES = {
    "verdict": set(VERDICT_LABELS), "stage": set(STAGE_LABELS), "code": set(REPLY_LABELS),
    "class": set(QUEUE_CLASSES), "direction": {"in", "out"},
    "status": {str(n) for n in range(256)} | set(CHILD_SIGNALS) | {"unknown", "other"},
}


def _promtool(*args: str, cwd: Path = ALERTS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def _alert_names() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M)


def test_alert_rules_pass_promtool_check():
    """promtool check rules: the file is valid, with every alert in it."""
    proc = _promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in proc.stdout
    assert len(_alert_names()) == 7


def test_alert_rules_pass_their_promtool_unit_tests():
    """promtool test rules: every case in supervise-smtp.rules.test.yml holds."""
    proc = _promtool("test", "rules", TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_rules_every_alert_is_tested_firing():
    """Each alert has at least one test case where it is expected to fire."""
    text = TESTS.read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:", text))
    assert firing == set(_alert_names())


def test_alert_rules_use_only_exposed_metrics_and_label_values():
    """Every supervise_smtp_* name in the rules is a family metrics.py exposes, and every
    label value they match on is one it can write."""
    exposed = set(re.findall(r"^# TYPE (\S+)", Metrics(serve=True).exposition().decode(), re.M))
    text = RULES.read_text()
    used = set(re.findall(r"\bsupervise_smtp_\w+", text))
    assert used and used <= exposed, used - exposed
    matchers = re.findall(r'(\w+)(?:=~|!~|!=|=)"([^"]*)"', text)
    checked = 0
    for label, value in matchers:
        if label not in LABEL_VALUES:
            continue
        for alternative in value.split("|"):
            if re.fullmatch(r"\w+", alternative):
                assert alternative in LABEL_VALUES[label], (label, alternative)
                checked += 1
    assert checked >= 8


def test_alert_rules_changed_to_page_on_stops_fail_the_unit_tests(tmp_path):
    """The unit tests catch a crash rule that would fire on verdict=stopped."""
    for path in (RULES, TESTS):
        shutil.copy(path, tmp_path / path.name)
    rules = tmp_path / RULES.name
    text = rules.read_text()
    assert text.count('verdict="server_crashed"') == 1
    rules.write_text(text.replace('verdict="server_crashed"', 'verdict=~"server_crashed|stopped"'))
    proc = _promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert "alertname: QmailSmtpdCrashed" in proc.stdout + proc.stderr
