"""Classification of stderr lines by the program that wrote them."""

from __future__ import annotations

import pytest

from supervise_smtp.session.stderr import classify


@pytest.mark.parametrize(
    ("line", "source"),
    [
        (b"X-Qmail-Scanner-1.25st: Process 4242 closed, parent process died", "qmail-scanner"),
        (b"X-Qmail-Scanner-2.11: [mx.example1234] clean", "qmail-scanner"),
        (b"simscan:[4321]:CLEAN (0.00/0.00):0.1s:subject:1.2.3.4:a@b:c@d", "simscan"),
        (b"qmail-queue: fatal: unable to write", "qmail-queue"),
        (b"rblsmtpd: 1.2.3.4 pid 99: 451 listed", "rblsmtpd"),
        (b"anything else", "child"),
        (b"", "child"),
    ],
)
def test_scanner_classify(line, source):
    """Each known program's line shape is recognised; the rest is the child's."""
    assert classify(line) == source


def test_stderr_events_capped_the_rest_counted_and_still_read():
    """After STDERR_EVENTS child_stderr events, lines are only counted -- but a
    qmail-scanner parent death among them is still seen."""
    from supervise_smtp.session.diagnose import Facts
    from supervise_smtp.session.stderr import StderrWatch

    facts = Facts()
    said: list[dict[str, object]] = []
    watch = StderrWatch(facts, lambda name, **f: said.append(f), None, 42, False)
    cap = StderrWatch.STDERR_EVENTS
    watch.feed(b"x\n" * (cap + 50))
    watch.feed(b"X-Qmail-Scanner-2.1: Process 77 closed, parent process died\n")
    watch.feed(b"")
    assert len(said) == cap
    assert facts.stderr_unlogged == 51
    assert facts.scanner_died_pid == 77
