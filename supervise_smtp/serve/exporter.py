"""serve's own metrics: the counters, --metrics-textfile and the /metrics endpoint.

The parent's alone (prometheus-client is imported here, in the resident
parent, never by a worker): each worker tells the parent its summary's
counters in its end-of-session message (logs/tally.py's record), which
``observe_record`` counts.  The endpoint is served from the parent's own
poll loop (logs/http.py), so the server only asks this object which
descriptors to poll, hands it their events and tells it the time.
"""

from __future__ import annotations

import time

from supervise_smtp.errors import TempError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from supervise_smtp.serve.config import ServeConfig
    from supervise_smtp.serve.log import ParentLog

__all__ = ["Exporter"]


class Exporter:
    """The counters of one serve, where --metrics-listen and --metrics-textfile want them."""

    def __init__(self, cfg: ServeConfig, log: ParentLog, active: Callable[[], int]) -> None:
        """Open what is asked for (TempError when the port cannot be bound)."""
        from supervise_smtp.logs.metrics import Metrics

        self.active = active  # the number of sessions running now, for the gauge
        self.metrics = Metrics(serve=True)
        self.textfile: Any = None  # metrics.TextfileWriter
        self.http: Any = None  # logs.http.MetricsHTTP
        self.polled: dict[int, int] = {}  # the endpoint's descriptors in the poll set
        if cfg.metrics_textfile is not None:  # written at once, then every interval
            from supervise_smtp.logs.metrics import TextfileWriter

            self.textfile = TextfileWriter(
                self.metrics, cfg.metrics_textfile, cfg.metrics_interval_s,
                lambda text: log.error("serve_error", where="metrics_textfile", error=text))
        if cfg.metrics_listen is not None:
            from supervise_smtp.logs.http import MetricsHTTP

            host, port = cfg.metrics_listen
            self.http = MetricsHTTP(host, port, body=self._exposition)
            try:
                self.http.open()
            except OSError as err:
                raise TempError(f"unable to bind metrics {host}:{port}: {err.strerror}",
                                err.errno) from err

    @property
    def clients(self) -> int:
        """Descriptors the endpoint may hold at once (its clients)."""
        if self.http is None:
            return 0
        from supervise_smtp.logs.http import MAX_CLIENTS

        return MAX_CLIENTS

    def _exposition(self) -> bytes:
        self.metrics.set_active(self.active())
        return bytes(self.metrics.exposition())

    def write_textfile(self, force: bool = False) -> None:
        """--metrics-textfile: rewritten when due; a failure is a line, never a stop."""
        if self.textfile is not None:
            self.metrics.set_active(self.active())
            self.textfile.maybe_write(time.monotonic(), force)

    def tick(self, now: float) -> None:
        """What is due: the textfile, the endpoint's idle clients."""
        if self.textfile is not None and now >= self.textfile.due:
            self.write_textfile()
        if self.http is not None:
            self.http.expire(now)

    def deadlines(self) -> list[float]:
        """When the loop must wake for us."""
        out = [self.textfile.due] if self.textfile is not None else []
        if self.http is not None and (t := self.http.next_deadline()) is not None:
            out.append(t)
        return out

    def poll(self, poller: Any) -> None:
        """The endpoint's sockets in ``poller`` as it wants them now."""
        if self.http is None:
            return
        wanted = dict(self.http.wanted())
        for fd in [fd for fd in self.polled if fd not in wanted]:
            del self.polled[fd]
            try:
                poller.unregister(fd)
            except KeyError:
                pass
        for fd, events in wanted.items():
            if self.polled.get(fd) != events:
                if fd in self.polled:
                    poller.modify(fd, events)
                else:
                    poller.register(fd, events)
                self.polled[fd] = events

    def handle(self, fd: int, revents: int) -> bool:
        """``fd``'s events, if it is one of the endpoint's; False when it is not."""
        if self.http is None or not self.http.owns(fd):
            return False
        self.http.handle(fd, revents)
        return True

    def close(self) -> None:
        """The endpoint's sockets closed (in a worker, right after fork: else a serve
        restarted while old sessions finish could not bind its port)."""
        if self.http is not None:
            self.http.close()
