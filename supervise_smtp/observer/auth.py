"""One AUTH exchange (RFC 4954): the user name in, every secret out.

Client lines of an AUTH exchange are credentials.  They are decoded here only
long enough to take the user name (PLAIN's authentication identity, LOGIN's
first answer, CRAM-MD5's name) and are then dropped: nothing in this object,
and so nothing in any event or in the summary, can hold a password, a digest
or the raw base64 line.  This is redaction by construction, not a regex over
the log.
"""

from __future__ import annotations

from .state import USER_CAP

__all__ = ["AuthExchange"]


def _b64decode(line: bytes) -> bytes | None:
    import binascii  # cheap, and only on the AUTH path

    try:
        return binascii.a2b_base64(line.strip())
    except (binascii.Error, ValueError):
        return None


class AuthExchange:
    """Follows one AUTH command until the server's final reply."""

    __slots__ = ("mechanism", "user", "user_truncated", "cancelled", "_answers")

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.user: bytes | None = None
        self.user_truncated = False
        self.cancelled = False
        self._answers = 0  # client responses seen (initial response included)

    def client_response(self, line: bytes) -> None:
        """A client response (initial or after a 334); keeps the user name only."""
        self._answers += 1
        if line.strip() == b"*":
            self.cancelled = True
            return
        if self._answers != 1 or self.user is not None:
            return  # a later answer: LOGIN's password, or more SASL data
        if self.mechanism not in ("PLAIN", "LOGIN", "CRAM-MD5"):
            return
        decoded = _b64decode(line)
        if decoded is None:
            return
        if self.mechanism == "PLAIN":
            parts = decoded.split(b"\x00")
            user = parts[1] if len(parts) >= 3 else None
        elif self.mechanism == "LOGIN":
            user = decoded
        else:
            user = decoded.rpartition(b" ")[0] or None
        del decoded
        if user is not None:
            self.user_truncated = len(user) > USER_CAP
            self.user = user[:USER_CAP]
