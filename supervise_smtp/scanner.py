"""Which program wrote a stderr line under qmail-smtpd (pure).

qmail-smtpd itself writes nothing to stderr; what arrives there comes from the
queue program it starts at DATA (qmail-scanner, simscan, qmail-queue) or from a
program chained before it (rblsmtpd).  Patterns are tolerant of versions:
qmail-scanner prefixes ``X-Qmail-Scanner-<version>:``, simscan ``simscan:``.
"""

from __future__ import annotations

__all__ = ["classify", "parent_died_pid"]


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


_DIED = b"parent process died"
_PROCESS = b"Process "


def parent_died_pid(line: bytes) -> int | None:
    """The pid in qmail-scanner's ``Process 4242 closed, parent process died``.

    qmail-scanner writes this when it finds getppid() == 1: qmail-smtpd died
    under it (a bare LF, a lost client mid-DATA).  0 when the line says so
    without a readable pid.
    """
    if _DIED not in line:
        return None
    at = line.find(_PROCESS)
    if at < 0:
        return 0
    digits = line[at + len(_PROCESS):].split(b" ", 1)[0].rstrip(b",")
    return int(digits) if digits.isdigit() and len(digits) < 12 else 0
