"""Prometheus metrics of supervise-smtp, counted from summaries (prometheus-client).

Used by the log-stage filter ``collect`` and by serve's parent; never on
the per-connection path (prometheus-client is a costly import) and
never in a serve worker (it sends ``logs.tally.record(fields)`` instead).
Each ``Metrics`` has its own CollectorRegistry: no process or platform
collectors, nothing from the default registry, only these families.

Names follow Prometheus' conventions (postfix_exporter's where they
overlap): ``supervise_smtp_`` prefix, ``_total`` counters, base units
(seconds, bytes).  Labels take only bounded values (logs/tally.py says
which).  Series an alert rule watches are created at 0 when a Metrics is
made, so that the first crash after a restart is an increase and not a
series that appears at 1 (docs/alerts/supervise-smtp.rules.yml).

A process restart starts every counter from zero, as Prometheus expects of
counters; ``_created`` series are not written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from supervise_smtp.logs.tally import (
    MAX_RECORD_BYTES,
    QUEUE_CLASSES,
    STAGE_LABELS,
    Tally,
    parse_record,
    record,
    tally,
)

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS_S", "PREINITIALISED_VERDICTS", "Metrics",
           "TextfileWriter", "record"]

# The text format every Prometheus 2.x server and node_exporter's textfile
# collector read; what generate_latest writes for these plain names.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# From a LAN client's clean session (tens of ms, most of it qmail-smtpd's
# start-up) through internet sessions (seconds) to qmail-smtpd's own
# timeoutsmtpd (1200 s by default, per command).
DURATION_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                      1200.0)

# Verdicts the shipped alert rules fire on at their first occurrence.
PREINITIALISED_VERDICTS = ("server_crashed", "wrapper_error")

_disable_created = getattr(prometheus_client, "disable_created_metrics", None)
if _disable_created is not None:  # prometheus-client >= 0.17
    _disable_created()


class Metrics:
    """The metric families, in one registry of their own; ``serve=True`` adds serve's."""

    def __init__(self, serve: bool = False) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=True)
        self._partial = b""  # observe_record: a record cut by a read, waiting for its end
        self._skipping = False  # ... or the rest of an over-long one, to be dropped
        self.connections = Counter(
            "supervise_smtp_connections", "SMTP connections by verdict and by the stage "
            "the verdict is about (one per summary line).", ["verdict", "stage"], registry=reg)
        self.replies = Counter(
            "supervise_smtp_replies", "Connections by the code of the last reply the server "
            "gave (last_reply=): 2xx..5xx, or qmail-smtpd's own 421 451 502 503 552 553 554.",
            ["code"], registry=reg)
        self.rejects = Counter(
            "supervise_smtp_rejects", "4xx and 5xx replies to SMTP commands (rejects=).",
            registry=reg)
        self.bare_lf = Counter(
            "supervise_smtp_bare_lf", "Connections whose message held a bare LF (bare_lf=), "
            "rejected by qmail-smtpd's 451 smtplf or fixed by --bare-lf fix.", registry=reg)
        self.queue_exit = Counter(
            "supervise_smtp_queue_exit", "Ends of messages by the queue program's fate: "
            "success, temporary, permanent (qmail-queue exit 11-40 or a 5xx), signal, "
            "unknown (no reply).", ["class"], registry=reg)
        self.child_exit = Counter(
            "supervise_smtp_child_exit", "qmail-smtpd exits by exit code or signal name "
            "(unknown: the status was lost).", ["status"], registry=reg)
        self.parent_died = Counter(
            "supervise_smtp_scanner_parent_died", "Connections whose queue program "
            "(qmail-scanner) reported or outlived its parent's death, by the verdict of "
            "that connection.", ["verdict"], registry=reg)
        self.bytes = Counter(
            "supervise_smtp_bytes", "Bytes relayed: in from the client, out to it.",
            ["direction"], registry=reg)
        self.duration = Histogram(
            "supervise_smtp_session_duration_seconds", "Duration of SMTP connections, from "
            "the wrapper's start to the summary.", buckets=DURATION_BUCKETS_S, registry=reg)
        self.duplicate_risk = Counter(
            "supervise_smtp_duplicate_risk", "Messages the client may send again: queued "
            "with a reply it is not known to have got (reply_delivered no or unknown), or "
            "the end of data sent and no reply seen (queued=unknown).", registry=reg)
        self.log_dropped = Counter(
            "supervise_smtp_log_dropped", "Event lines lost because the log service did not "
            "read them in time (log_dropped=).", registry=reg)
        self.unreadable = Counter(
            "supervise_smtp_summaries_unreadable", "Summary lines (collect) or worker "
            "records (serve) that could not be read, so were not counted.", registry=reg)
        self.serve = serve
        if serve:
            self.active = Gauge(
                "supervise_smtp_serve_active_connections", "Connections serve's workers are "
                "handling now.", registry=reg)
            self.denied_total = Counter(
                "supervise_smtp_serve_denied", "Connections the -x rules denied.",
                registry=reg)
            self.limit_total = Counter(
                "supervise_smtp_serve_limit_reached", "Times serve reached its -c limit and "
                "stopped accepting.", registry=reg)
        for verdict in PREINITIALISED_VERDICTS:
            for stage in STAGE_LABELS[:-1]:
                self.connections.labels(verdict, stage)
        for cls in QUEUE_CLASSES:
            self.queue_exit.labels(cls)
        for direction in ("in", "out"):
            self.bytes.labels(direction)

    def observe(self, fields: Mapping[str, object]) -> None:
        """Count one summary: the fields of its line, parsed back or as the session built them."""
        self.observe_tally(tally(fields))

    def observe_tally(self, t: Tally) -> None:
        """Count one connection's Tally."""
        self.connections.labels(t.verdict, t.stage).inc()
        if t.code is not None:
            self.replies.labels(t.code).inc()
        if t.rejects:
            self.rejects.inc(t.rejects)
        if t.bare_lf:
            self.bare_lf.inc()
        if t.duplicate_risk:
            self.duplicate_risk.inc()
        if t.queue is not None:
            self.queue_exit.labels(t.queue).inc()
        if t.child is not None:
            self.child_exit.labels(t.child).inc()
        if t.parent_died:
            self.parent_died.labels(t.verdict).inc()
        if t.bytes_in:
            self.bytes.labels("in").inc(t.bytes_in)
        if t.bytes_out:
            self.bytes.labels("out").inc(t.bytes_out)
        if t.duration_ms is not None:
            self.duration.observe(t.duration_ms / 1000.0)
        if t.log_dropped:
            self.log_dropped.inc(t.log_dropped)

    def observe_record(self, data: bytes) -> int:
        """Count the worker records in ``data``, what a read of their pipe returned.

        Any number of ``record()`` lines, cut anywhere: an unfinished record
        waits for the next call (at most MAX_RECORD_BYTES of it; past that it
        is garbage and dropped up to its newline).  A line that is not a
        valid record counts in supervise_smtp_summaries_unreadable_total and
        nothing else.  Returns the number of records counted.
        """
        counted = 0
        lines = data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            if self._skipping:
                self._skipping = False
                self._partial = b""
                continue
            line = self._partial + line if self._partial else line
            self._partial = b""
            t = parse_record(line)
            if t is None:
                if line:
                    self.unreadable_line()
                continue
            self.observe_tally(t)
            counted += 1
        if self._skipping:
            return counted
        self._partial += tail
        if len(self._partial) > MAX_RECORD_BYTES:
            self._partial = b""
            self._skipping = True
            self.unreadable_line()
        return counted

    def unreadable_line(self) -> None:
        """One summary line or record that could not be read."""
        self.unreadable.inc()

    # serve's parent: the state of the listener

    def set_active(self, count: int) -> None:
        """Connections being handled now (serve)."""
        self.active.set(count)

    def denied(self, count: int = 1) -> None:
        """Connections the -x rules denied (serve)."""
        self.denied_total.inc(count)

    def limit_reached(self, count: int = 1) -> None:
        """serve reached its -c limit (counted once each time it stops accepting)."""
        self.limit_total.inc(count)

    # exposition

    def exposition(self) -> bytes:
        """Every family in the text format (CONTENT_TYPE), for /metrics or a textfile."""
        return generate_latest(self.registry)

    def write_textfile(self, path: str) -> None:
        """Replace ``path`` atomically with the exposition, mode 0644; OSError on failure.

        node_exporter's textfile collector reads ``*.prom`` files, perhaps
        while we write: the text goes to a temporary file in the same
        directory (a name it ignores, ``.NAME.PID.tmp``), then rename() puts
        it in place whole.  0644 whatever the umask: node_exporter runs as
        another user (the one exception to the 0600 rule for our files).
        No fsync: after a crash the next write replaces whatever is there.
        """
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
        data = self.exposition()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o644)
        try:
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class TextfileWriter:
    """A Metrics' textfile, rewritten every ``interval`` seconds by its owner's loop.

    Rewritten changed or not: the file's mtime tells that its writer is alive
    (node_textfile_mtime_seconds, the SuperviseSmtpTextfileStale rule).  A
    failure never raises: ``warn`` gets one message at the first failure of
    a run and one when a write succeeds again; the owner goes on.
    """

    def __init__(self, metrics: Metrics, path: str, interval: float,
                 warn: Callable[[str], None]) -> None:
        self.metrics = metrics
        self.path = path
        self.interval = interval
        self.warn = warn
        self.due = 0.0  # monotonic time of the next write: the first call writes
        self.failing = False

    def maybe_write(self, now: float, force: bool = False) -> bool:
        """Write if due (or ``force``); True when the file was written."""
        if not force and now < self.due:
            return False
        self.due = now + self.interval
        try:
            self.metrics.write_textfile(self.path)
        except OSError as err:
            if not self.failing:
                self.warn(f"warning: unable to write {self.path}: {err.strerror or err}; "
                          f"retrying every {self.interval:g} s")
            self.failing = True
            return False
        if self.failing:
            self.warn(f"info: wrote {self.path} again")
        self.failing = False
        return True
