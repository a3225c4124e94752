"""Sans-IO SMTP observer: bytes of both directions in, events out.

``Observer`` follows one SMTP connection as the relay sees it (RFC 5321,
1870, 2920, 3030, 3207, 4954), hands TLS to ``tls.TLSStream`` and keeps
only counters of message bodies and never a credential.  Imported once per
connection, so this package imports nothing beyond its own small modules.
"""

from __future__ import annotations

from .events import Event
from .protocol import MAX_SMTP_LINE_BYTES, Observer
from .state import STAGES, MessageStats, SessionState

__all__ = ["MAX_SMTP_LINE_BYTES", "STAGES", "Event", "MessageStats", "Observer", "SessionState"]
