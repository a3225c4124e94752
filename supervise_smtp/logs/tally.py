"""What one connection's summary adds to the counters, and its short record (pure).

Both ways of counting go through ``tally``: ``collect`` reads the summary
lines in the log stream, and serve's workers send their parent one short
record per connection (``record``), which the parent reads back with
``parse_record``.  No prometheus-client here: a worker builds its record
with this module alone, and ``metrics.py`` counts what it returns.

Every label value is one of a fixed set, whatever the log line or the
record says: anything else becomes ``other``, so neither a client nor a
garbled line can create a series (no addresses, host names or free text).
The sets, and why:

- ``verdict``: diagnose.VERDICTS.  ``stage``: diagnose.STAGES and ``quit``
  (where a session that QUIT after a failure ended).
- ``code`` (of ``last_reply=``, the reply the session ended on): the class
  ``2xx``..``5xx``, except qmail-smtpd's own codes that tell an operator
  what happened: 421 (out of memory, unreadable control files: qmail-smtpd
  gives up), 451 (smtplf, timeout, ``qq`` temporary failures), 502 (not
  SMTP: 502 unimplemented), 503 (out of sequence), 552 (databytes), 553
  (rcpthosts, badmailfrom: refused), 554 (``qq`` permanent failures, too
  many hops).
- ``class`` of the queue program's fate at the end of a message, in
  qmail-queue(8)'s terms: ``success`` (exit 0, ``250 ok``), ``permanent``
  (exit 11-40, a 5xx reply), ``temporary`` (any other exit, a 4xx reply),
  ``signal`` (killed: ``qq crashed``, or --subreaper saw its signal),
  ``unknown`` (the end of data was sent and no reply came).  A message that
  never ended (a bare-LF reject, a client lost in the body) has no class.
- ``status`` of qmail-smtpd: its exit code (0-255), its signal's name, or
  ``unknown`` (the status was lost).
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping

from supervise_smtp.session.diagnose import STAGES, VERDICTS
from supervise_smtp.session.qmail import QQ_TEXTS

__all__ = [
    "CHILD_SIGNALS",
    "OTHER",
    "MAX_RECORD_BYTES",
    "QUEUE_CLASSES",
    "RECORD_TAG",
    "REPLY_CODES",
    "REPLY_LABELS",
    "STAGE_LABELS",
    "VERDICT_LABELS",
    "Tally",
    "duplicate_risk",
    "parse_record",
    "record",
    "tally",
]

OTHER = "other"
VERDICT_LABELS = (*VERDICTS, OTHER)
STAGE_LABELS = (*STAGES, "quit", OTHER)
REPLY_CODES = ("421", "451", "502", "503", "552", "553", "554")
REPLY_LABELS = ("2xx", "3xx", "4xx", "5xx", *REPLY_CODES, OTHER)
QUEUE_CLASSES = ("success", "temporary", "permanent", "signal", "unknown")
CHILD_SIGNALS = frozenset(
    {s.name for s in _signal.Signals} | {f"SIG{n}" for n in range(1, 65)})
CHILD_LABELS = frozenset({str(n) for n in range(256)} | CHILD_SIGNALS | {"unknown", OTHER})

RECORD_TAG = b"ssr1"  # the record format's name and version
MAX_RECORD_BYTES = 512  # a record is one write well under PIPE_BUF (4096)
_MAX_DIGITS = 15  # integers beyond 10**15 are garbage, not a count

# qq meanings (qmail.py) by the class their reply stands for: #5.x.x is permanent.
_QQ_PERMANENT = frozenset(m for text, (m, _) in QQ_TEXTS.items() if b"(#5." in text)
_QQ_TEMPORARY = frozenset(m for text, (m, _) in QQ_TEXTS.items() if b"(#4." in text)


class Tally:
    """The counted part of one summary: bounded labels and non-negative integers.

    A label is None when the summary says nothing about it (no reply, no
    message ended); an integer is 0 when absent, except ``duration_ms``
    (None: not observed in the histogram).
    """

    __slots__ = ("verdict", "stage", "code", "queue", "child", "parent_died", "bare_lf",
                 "duplicate_risk", "rejects", "bytes_in", "bytes_out", "duration_ms",
                 "log_dropped")

    verdict: str
    stage: str
    code: str | None
    queue: str | None
    child: str | None
    parent_died: bool
    bare_lf: bool
    duplicate_risk: bool
    rejects: int
    bytes_in: int
    bytes_out: int
    duration_ms: int | None
    log_dropped: int

    def __init__(self, verdict: str = OTHER, stage: str = OTHER, code: str | None = None,
                 queue: str | None = None, child: str | None = None, parent_died: bool = False,
                 bare_lf: bool = False, rejects: int = 0, bytes_in: int = 0, bytes_out: int = 0,
                 duration_ms: int | None = None, log_dropped: int = 0,
                 duplicate_risk: bool = False) -> None:
        self.verdict = verdict
        self.stage = stage
        self.code = code
        self.queue = queue
        self.child = child
        self.parent_died = parent_died
        self.bare_lf = bare_lf
        self.duplicate_risk = duplicate_risk
        self.rejects = rejects
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.duration_ms = duration_ms
        self.log_dropped = log_dropped

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tally):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Tally({inner})"


def _text(value: object) -> str | None:
    """A field as text, whether it comes from diagnose (int, bytes...) or a parsed line."""
    if value is None:
        return None
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:64]).decode("ascii", "replace")
    return str(value)[:64]


def _count(value: object) -> int | None:
    """A non-negative integer field, or None when absent or not a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < 10 ** _MAX_DIGITS else None
    text = _text(value)
    if text is None or not text.isdigit() or not text.isascii() or len(text) > _MAX_DIGITS:
        return None
    return int(text)


def _one_of(value: object, allowed: tuple[str, ...] | frozenset[str]) -> str:
    text = _text(value)
    return text if text is not None and text in allowed else OTHER


def _reply_label(last_reply: object) -> str | None:
    """``last_reply="451 See ..."`` -> ``451``; ``250 ok`` -> ``2xx``; None: no reply."""
    text = _text(last_reply)
    if not text:
        return None
    code = text[:3]
    if len(code) < 3 or not code.isdigit() or not code.isascii() or text[3:4] not in ("", " ",
                                                                                      "-"):
        return OTHER
    if code in REPLY_CODES:
        return code
    return code[0] + "xx" if code[0] in "2345" else OTHER


def _queue_class(fields: Mapping[str, object]) -> str | None:
    """The queue program's fate at the end of the message, or None (no message ended)."""
    meaning = _text(fields.get("queue"))
    if _text(fields.get("queue_signal")) is not None or meaning == "crashed":
        return "signal"
    code = _count(fields.get("queue_exit"))
    if code is not None:
        if code == 0:
            return "success"
        return "permanent" if 11 <= code <= 40 else "temporary"
    verdict = _text(fields.get("verdict"))
    if verdict == "queue_perm_fail" or meaning in _QQ_PERMANENT:
        return "permanent"
    if verdict == "queue_temp_fail" or meaning in _QQ_TEMPORARY:
        return "temporary"
    queued = _text(fields.get("queued"))
    if queued == "yes":
        return "success"
    if queued == "unknown":
        return "unknown"
    return None


def duplicate_risk(fields: Mapping[str, object]) -> str | None:
    """``yes`` or ``unknown`` (the summary's ``queued``) when the client may send this
    message again, else None.

    Queued with a reply the client is not known to have got
    (``reply_delivered`` no or unknown: never counted as delivered by
    default), or the end of data sent and no reply seen (``queued=unknown``).
    One reading for report, collect and serve's counters alike.
    """
    queued = _text(fields.get("queued"))
    if queued == "unknown":
        return queued
    if queued == "yes" and _text(fields.get("reply_delivered")) != "yes":
        return queued
    return None


def _child_label(fields: Mapping[str, object]) -> str | None:
    """qmail-smtpd's signal name, exit code, ``unknown``; None when the line has neither."""
    sig = _text(fields.get("signal"))
    if sig is not None:
        return sig if sig in CHILD_SIGNALS else OTHER
    code = _text(fields.get("exit"))
    if code is None:
        return None
    return code if code in CHILD_LABELS else OTHER


def tally(fields: Mapping[str, object]) -> Tally:
    """The counted part of one summary's fields.

    ``fields``: the ``event=summary`` line's keys, as the session builds them
    (ints, bytes, bools) or as a reader parsed them back (strings).
    Never raises: a field that is not what it should be counts as ``other``
    (a label) or is left out (a number).
    """
    bare_lf = _count(fields.get("bare_lf"))
    return Tally(
        verdict=_one_of(fields.get("verdict"), VERDICT_LABELS),
        stage=_one_of(fields.get("stage"), STAGE_LABELS),
        code=_reply_label(fields.get("last_reply")),
        queue=_queue_class(fields),
        child=_child_label(fields),
        parent_died=_text(fields.get("queue")) == "parent_died",
        bare_lf=bool(bare_lf),
        duplicate_risk=duplicate_risk(fields) is not None,
        rejects=_count(fields.get("rejects")) or 0,
        bytes_in=_count(fields.get("bytes_in")) or 0,
        bytes_out=_count(fields.get("bytes_out")) or 0,
        duration_ms=_count(fields.get("duration_ms")),
        log_dropped=_count(fields.get("log_dropped")) or 0,
    )


# record keys: one letter each, in this order; labels first, then integers
_LABEL_KEYS = {b"v": "verdict", b"s": "stage", b"c": "code", b"q": "queue", b"x": "child"}
_INT_KEYS = {b"r": "rejects", b"i": "bytes_in", b"o": "bytes_out", b"d": "duration_ms",
             b"g": "log_dropped"}
_FLAG_KEYS = {b"p": "parent_died", b"l": "bare_lf", b"u": "duplicate_risk"}
_ALLOWED: dict[str, tuple[str, ...] | frozenset[str]] = {
    "verdict": VERDICT_LABELS, "stage": STAGE_LABELS, "code": REPLY_LABELS,
    "queue": QUEUE_CLASSES, "child": CHILD_LABELS,
}


def record(fields: Mapping[str, object]) -> bytes:
    """One summary's counters as one short line for serve's parent (``parse_record``).

    ASCII, ``\\n``-terminated, under MAX_RECORD_BYTES: one ``os.write`` to
    a pipe shared by all workers never interleaves with another's (PIPE_BUF).
    Only bounded labels and integers: nothing a client sent.
    """
    t = tally(fields)
    parts = [RECORD_TAG]
    for key, name in _LABEL_KEYS.items():
        value = getattr(t, name)
        if value is not None:
            parts.append(key + b"=" + value.encode("ascii"))
    for key, name in _FLAG_KEYS.items():
        if getattr(t, name):
            parts.append(key + b"=1")
    for key, name in _INT_KEYS.items():
        number = getattr(t, name)
        if number or number == 0 and name == "duration_ms":  # 0 ms is still observed
            parts.append(b"%s=%d" % (key, number))
    return b" ".join(parts) + b"\n"


def parse_record(line: bytes) -> Tally | None:
    """A record's Tally, or None when it is not one (garbage, cut, unknown label)."""
    if len(line) > MAX_RECORD_BYTES:
        return None
    words = line.rstrip(b"\n").split(b" ")
    if words[0] != RECORD_TAG:
        return None
    t = Tally(verdict="", stage="")
    seen: set[bytes] = set()
    for word in words[1:]:
        key, eq, raw = word.partition(b"=")
        if not eq or key in seen:
            return None
        seen.add(key)
        if key in _LABEL_KEYS:
            name = _LABEL_KEYS[key]
            value = raw.decode("ascii", "replace")
            if value not in _ALLOWED[name]:
                return None
            setattr(t, name, value)
        elif key in _INT_KEYS:
            if not raw.isdigit() or len(raw) > _MAX_DIGITS:
                return None
            setattr(t, _INT_KEYS[key], int(raw))
        elif key in _FLAG_KEYS:
            if raw != b"1":
                return None
            setattr(t, _FLAG_KEYS[key], True)
        else:
            return None
    if not t.verdict or not t.stage:
        return None
    return t
