"""Which program wrote a stderr line under qmail-smtpd (pure).

qmail-smtpd itself writes nothing to stderr; what arrives there comes from the
queue program it starts at DATA (qmail-scanner, simscan, qmail-queue) or from a
program chained before it (rblsmtpd).  Patterns are tolerant of versions:
qmail-scanner prefixes ``X-Qmail-Scanner-<version>:``, simscan ``simscan:``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs start-up time; mypy knows this name
if TYPE_CHECKING:
    from typing import Any

__all__ = ["StderrWatch", "classify", "parent_died_pid"]


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


class StderrWatch:
    """The child's stderr: bounded lines, each classified, logged or passed on.

    qmail-smtpd's descendants share this pipe; what they say ends up in the
    facts (qmail-scanner's parent-death line, which queue programs spoke).
    ``emit`` writes a tagged event, ``write_raw`` a line as it came (``--stderr
    pass``).  The splitter is made at the first bytes: most sessions never
    write to stderr at all.
    """

    __slots__ = ("facts", "emit", "write_raw", "child_pid", "passthrough", "_splitter",
                 "_events")

    TAG_BYTES = 1024  # keeps an event line under PIPE_BUF
    PASS_BYTES = 65536
    # child_stderr events per connection; the lines after them are still read
    # (a qmail-scanner parent death is still seen) but only counted, in the
    # summary's stderr_unlogged: a child that floods its stderr must neither
    # flood the log nor hold the mail up formatting lines nobody will read.
    STDERR_EVENTS = 100
    QUOTE_BYTES = 160  # of the last line, for a server_crashed reason

    def __init__(self, facts: object, emit: object, write_raw: object, child_pid: int,
                 passthrough: bool) -> None:
        self.facts: Any = facts
        self.emit: Any = emit
        self.write_raw: Any = write_raw
        self.child_pid = child_pid
        self.passthrough = passthrough
        self._splitter: Any = None
        self._events = 0

    def feed(self, data: bytes) -> None:
        """Bytes read from the pipe; b"" at its end (flushes a last unterminated line)."""
        if self._splitter is None:
            if not data:
                return
            from supervise_smtp.session.linesplit import LineSplitter

            self._splitter = LineSplitter(
                self.PASS_BYTES if self.passthrough else self.TAG_BYTES, split=self.passthrough)
        facts = self.facts
        for line, total, truncated in self._splitter.feed(data):
            facts.last_stderr = line[:self.QUOTE_BYTES]  # a crash's reason quotes it
            source = classify(line)
            if source == "qmail-scanner":
                died = parent_died_pid(line)
                if died is not None:
                    facts.scanner_died_pid = died
            elif source != "child" and source not in facts.queue_notes:
                facts.queue_notes.append(source)
            if self.passthrough:
                self.write_raw(line + b"\n")
            elif self._events >= self.STDERR_EVENTS:
                facts.stderr_unlogged += 1
            else:
                self._events += 1
                self.emit("child_stderr", child_pid=self.child_pid, source=source, text=line,
                          line_bytes=total, truncated=True if truncated else None)
