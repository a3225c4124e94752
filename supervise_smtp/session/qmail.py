"""What qmail-smtpd's replies mean (pure).

qmail-smtpd turns the queue program's exit code into a reply (qmail.c
qmail_close(): a 'D' string is permanent and becomes ``554``, a 'Z' string is
temporary and becomes ``451``; qmail-smtpd.c smtp_data()).  Reading the reply
back gives the queue program's fate even when we never saw it exit.  Texts
from netqmail 1.06 / notqmail qmail.c and qmail-smtpd.c.
"""

from __future__ import annotations

__all__ = ["QQ_TEXTS", "QP", "is_smtplf", "is_timeout", "qq_meaning", "queue_pid"]

# reply text (after the code) -> (short meaning, queue exit codes it stands for)
QQ_TEXTS: dict[bytes, tuple[str, tuple[int, ...]]] = {
    b"envelope address too long for qq (#5.1.3)": ("envelope_too_long", (11, 115)),
    b"mail server permanently rejected message (#5.3.0)": ("perm_rejected", (31,)),
    b"qq permanent problem (#5.3.0)": ("qq_permanent", ()),  # other 11-40
    b"qq out of memory (#4.3.0)": ("out_of_memory", (51,)),
    b"qq timeout (#4.3.0)": ("qq_timeout", (52,)),
    b"qq write error or disk full (#4.3.0)": ("disk_full", (53,)),
    b"qq read error (#4.3.0)": ("read_error", (54,)),
    b"qq unable to read configuration (#4.3.0)": ("config", (55,)),
    b"qq trouble making network connection (#4.3.0)": ("network", (56,)),
    b"qq trouble in home directory (#4.3.0)": ("home_directory", (61,)),
    b"qq trouble creating files in queue (#4.3.0)": ("queue_files", (62, 63, 64, 65, 66)),
    b"mail server temporarily rejected message (#4.3.0)": ("temp_rejected", (71,)),
    b"connection to mail server timed out (#4.4.1)": ("remote_timeout", (72,)),
    b"connection to mail server rejected (#4.4.1)": ("remote_rejected", (73,)),
    b"communication with mail server failed (#4.4.2)": ("remote_failed", (74,)),
    b"qq internal bug (#4.3.0)": ("internal_bug", (81, 91)),
    b"unable to exec qq (#4.3.0)": ("exec_failed", (120,)),
    b"qq temporary problem (#4.3.0)": ("qq_temporary", ()),  # any other code
    b"qq crashed (#4.3.0)": ("crashed", ()),  # killed by a signal
    b"qqt failure (#4.3.0)": ("qqt_failure", ()),  # qmail_open(): pipe or fork failed
    b"qq waitpid surprise (#4.3.0)": ("waitpid", ()),
    b"too many hops, this message is looping (#5.4.6)": ("too_many_hops", ()),
    b"sorry, that message size exceeds my databytes limit (#5.3.4)": ("databytes", ()),
}

QP = b" qp "


def qq_meaning(code: int, text: bytes) -> tuple[str | None, int | tuple[int, ...] | None]:
    """(meaning, the queue exit code or codes it stands for) of the reply to end of data.

    Several codes when qmail-smtpd gives one text for them (``qq internal
    bug``: 81 or 91), logged comma-joined (``queue_exit=81,91``); None when
    the text names no exit (a signal, a qmail-smtpd refusal, "any other").
    """
    if 200 <= code < 300:
        return ("accepted", 0) if text.startswith(b"ok") and QP in text else ("accepted", None)
    known = QQ_TEXTS.get(text.strip())
    if known is None:
        return None, None
    meaning, codes = known
    if not codes:
        return meaning, None
    return meaning, codes[0] if len(codes) == 1 else codes


def queue_pid(text: bytes) -> int | None:
    """The qp number of ``250 ok 1732537200 qp 4242``: the queue program's pid."""
    at = text.rfind(QP)
    if at < 0:
        return None
    digits = text[at + len(QP):].strip()
    return int(digits) if digits.isdigit() and len(digits) < 12 else None


def is_smtplf(code: int, text: bytes) -> bool:
    """qmail-smtpd's straynewline(): ``451 See .../docs/smtplf.html.``"""
    return code == 451 and b"smtplf" in text


def is_timeout(code: int, text: bytes) -> bool:
    """qmail-smtpd's die_alarm() ``451 timeout (#4.4.2)`` or a 421 timeout."""
    return code in (421, 451) and text.lstrip().lower().startswith(b"timeout")
