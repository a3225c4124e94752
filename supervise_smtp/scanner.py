"""Which program wrote a stderr line under qmail-smtpd (pure).

qmail-smtpd itself writes nothing to stderr; what arrives there comes from the
queue program it starts at DATA (qmail-scanner, simscan, qmail-queue) or from a
program chained before it (rblsmtpd).  Patterns are tolerant of versions:
qmail-scanner prefixes ``X-Qmail-Scanner-<version>:``, simscan ``simscan:``.
"""

from __future__ import annotations

__all__ = ["classify"]


def classify(line: bytes) -> str:
    """The source of one stderr line: qmail-scanner, simscan, qmail-queue, rblsmtpd or child."""
    head = line[:200]
    if b"X-Qmail-Scanner" in head or b"qmail-scanner" in head:
        return "qmail-scanner"
    if head.lstrip().startswith(b"simscan:"):
        return "simscan"
    if b"qmail-queue" in head:
        return "qmail-queue"
    if head.startswith(b"rblsmtpd:"):
        return "rblsmtpd"
    return "child"
