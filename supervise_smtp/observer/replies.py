"""Server reply assembly: multiline replies and EHLO capabilities.

A reply is complete at its first ``ddd `` (or bare ``ddd``) line.  Only a
bounded part of it is kept: the first MAX_REPLY_LINES line texts (each cut to
TEXT_CAP), enough for any real EHLO list, so a server that never ends a
multiline reply cannot grow memory.
"""

from __future__ import annotations

from .commands import enhanced_code
from .events import Capabilities
from .state import COUNT_CAP, TEXT_CAP, clip

__all__ = ["CompleteReply", "ReplyAssembler", "capabilities"]

MAX_REPLY_LINES = 64


class CompleteReply:
    """One whole reply: code, enhanced code, joined text, line texts."""

    __slots__ = ("code", "enhanced", "text", "truncated", "lines", "texts")

    def __init__(self, code: int, texts: list[bytes], lines: int, cut: bool) -> None:
        self.code = code
        self.texts = texts
        self.lines = lines
        joined = b"\n".join(texts)
        self.text, truncated = clip(joined)
        self.truncated = truncated or cut
        self.enhanced = enhanced_code(texts[0]) if texts else None


class ReplyAssembler:
    """Collects reply lines until the last one of a reply."""

    __slots__ = ("_code", "_texts", "_lines", "_cut")

    def __init__(self) -> None:
        self._code: int | None = None
        self._texts: list[bytes] = []
        self._lines = 0
        self._cut = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished multiline reply held (at most 64 x TEXT_CAP)."""
        return sum(map(len, self._texts))

    @property
    def open(self) -> bool:
        """A multiline reply has begun but not ended."""
        return self._code is not None

    def add(self, code: int, more: bool, text: bytes, truncated: bool) -> CompleteReply | None:
        """Add one parsed line; returns the reply when this line ends it."""
        if self._code is None:
            self._code = code
        if len(self._texts) < MAX_REPLY_LINES:
            part, cut = clip(text, TEXT_CAP)
            self._texts.append(part)
            self._cut = self._cut or cut or truncated
        else:
            self._cut = True
        if self._lines < COUNT_CAP:
            self._lines += 1
        if more:
            return None
        reply = CompleteReply(self._code, self._texts, self._lines, self._cut)
        self._code = None
        self._texts = []
        self._lines = 0
        self._cut = False
        return reply


def capabilities(reply: CompleteReply) -> Capabilities:
    """The EHLO keywords of a 250 reply (the first line is the greeting)."""
    pipelining = starttls = chunking = eightbit = utf8 = False
    size: int | None = None
    auth: list[bytes] = []
    seen: set[bytes] = set()
    keywords: list[bytes] = []
    for text in reply.texts[1:]:
        words = text.split()
        if not words:
            continue
        key = words[0].upper()
        keywords.append(key)
        if key == b"PIPELINING":
            pipelining = True
        elif key == b"STARTTLS":
            starttls = True
        elif key == b"CHUNKING":
            chunking = True
        elif key == b"8BITMIME":
            eightbit = True
        elif key == b"SMTPUTF8":
            utf8 = True
        elif key == b"SIZE":
            if len(words) > 1 and words[1].isdigit() and len(words[1]) < 16:
                size = int(words[1])
            else:
                size = 0
        elif key == b"AUTH" or key.startswith(b"AUTH="):
            mechs = words[1:] if key == b"AUTH" else [key[5:]] + words[1:]
            for mech in mechs:
                mech = mech.upper()
                if mech not in seen:
                    seen.add(mech)
                    auth.append(mech)
    kw, cut = clip(b" ".join(keywords))
    auth_text = clip(b" ".join(auth))[0] if auth else None
    return Capabilities(
        pipelining=pipelining, size=size, starttls=starttls, auth=auth_text,
        chunking=chunking, eightbitmime=eightbit, smtputf8=utf8, keywords=kw,
        truncated=cut or reply.truncated,
    )
