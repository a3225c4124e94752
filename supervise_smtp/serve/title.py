"""What ps and top show for serve's processes: the parent and its workers told apart.

Without it every worker is a copy of the parent's command line.  The
well-kept setproctitle library rewrites the command line (``ps``, ``top -c``)
and the thread name (``top``, ``ps -o comm``); it is imported by serve
alone, never on the per-connection path.  The title still starts with the
interpreter's path: scripts/install.sh finds the processes still running
from a release by that first word.
"""

from __future__ import annotations

import os
import sys

__all__ = ["set_title"]

_COMM_BYTES = 15  # the kernel's limit on a thread name


def set_title(role: str, detail: str = "") -> None:
    """``<python> supervise-smtp serve: ROLE DETAIL``, thread name ``ssmtp-ROLE``.

    Within the command line's own room (SPT_NOENV, set only while the
    library starts): /proc/PID/environ stays what it was, for the operator
    who reads it, and the title is cut to the original command line's length.
    """
    noenv = "SPT_NOENV" not in os.environ
    if noenv:
        os.environ["SPT_NOENV"] = "1"
    try:
        import setproctitle

        title = f"{sys.executable} supervise-smtp serve: {role}" + (
            f" {detail}" if detail else "")
        setproctitle.setproctitle(title)
        setproctitle.setthreadtitle(f"ssmtp-{role}"[:_COMM_BYTES])
    except ImportError:  # a cosmetic: never a reason not to serve
        return
    finally:
        if noenv:  # never passed on to a session's child
            os.environ.pop("SPT_NOENV", None)
