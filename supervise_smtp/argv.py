"""The one getopt: djb's sgetopt, as tcpserver, softlimit and chpst read their argv.

serve reads tcpserver's options with it (serve/config.py), and the
operator's tools read a run script's command lines with it (runscript/):
the option strings, which letters take a value, and how one bundled word
(``-vRl0``, ``-c40``, ``-x``) splits, are written here once.  The long
options of supervise-smtp itself are the table of session/options.py.
"""

from __future__ import annotations

__all__ = ["CHPST_OPTSTRING", "SOFTLIMIT_OPTSTRING", "SOFTLIMITS", "TCPSERVER_OPTSTRING",
           "bundle", "getopt", "takes_value"]

# getopt strings read from the installed binaries (``strings tcpserver``,
# ``strings softlimit``, ``strings chpst``): a letter followed by ":" takes an
# argument.  tcpserver(1): -c -x -t -u -g -l -b -B take one.
TCPSERVER_OPTSTRING = "dDvqQhHrR1UXx:t:u:g:l:b:B:c:pPoO"
SOFTLIMIT_OPTSTRING = "a:c:d:f:l:m:o:p:r:s:t:"
CHPST_OPTSTRING = "u:U:b:e:m:d:o:p:f:c:r:t:/:n:l:L:vP012V"
SOFTLIMITS = ("softlimit", "s6-softlimit")


def takes_value(optstring: str) -> frozenset[str]:
    """The letters of ``optstring`` that take an argument (followed by ``:``)."""
    return frozenset(c for i, c in enumerate(optstring)
                     if c != ":" and optstring[i + 1:i + 2] == ":")


def bundle(word: str, takes: frozenset[str]) -> tuple[list[str], str | None, str | None]:
    """One word of bundled short options, as sgetopt reads it.

    (the letters before any that takes a value, that letter or None, its
    value when attached to the word; None: the value is the next word).
    ``-vRl0`` is ``(["v", "R"], "l", "0")``, ``-vRl`` ``(["v", "R"], "l",
    None)``, ``-vR`` ``(["v", "R"], None, None)``.  Whether a letter is known
    at all is the caller's business.
    """
    letters: list[str] = []
    for k in range(1, len(word)):
        letter = word[k]
        if letter in takes:
            return letters, letter, word[k + 1:] or None
        letters.append(letter)
    return letters, None, None


def getopt(values: list[str | None], start: int, optstring: str) -> tuple[int, list[str]]:
    """djb sgetopt over ``values[start:]``: (index of the first operand, letters).

    ``values`` are resolved words; None (unknown) ends the options.
    """
    takes = takes_value(optstring)
    letters: list[str] = []
    i = start
    while i < len(values):
        v = values[i]
        if v is None or not v.startswith("-") or v == "-":
            break
        if v == "--":
            return i + 1, letters
        flags, letter, attached = bundle(v, takes)
        letters += flags
        if letter is not None:
            letters.append(letter)
            if attached is None:
                i += 1  # the argument is the next word
        i += 1
    return i, letters
