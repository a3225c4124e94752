"""Event classes emitted by the sans-IO observer.

Events are plain classes with ``__slots__`` rather than dataclasses: importing
``dataclasses`` costs ~16 ms here, and the observer is imported once per SMTP
connection.  Each subclass lists its fields in ``__slots__``; the field names
are the log keys (stable API: never rename one), and ``NAME`` is the
snake_case event name written as ``event=...``.
"""

from __future__ import annotations

__all__ = ["Event"]


class Event:
    """Base of all observer events: keyword construction, equality, repr."""

    __slots__: tuple[str, ...] = ()
    NAME = "event"

    def __init__(self, **fields: object) -> None:
        slots = self.__slots__
        for key in slots:
            object.__setattr__(self, key, fields.pop(key, None))
        if fields:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(fields)}")

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def fields(self) -> dict[str, object]:
        """The event's fields in declaration order, for output."""
        return {key: getattr(self, key) for key in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.fields() == other.fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.fields().values())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields().items())
        return f"{type(self).__name__}({inner})"
