"""Directories we create files in: refused when another user could swap what is in them.

Our files (--capture transcripts, the --state-dir alert state, serve's
--pidfile) are created 0600 with O_NOFOLLOW (and O_EXCL where the name is
new), so a symlink planted at a name is never followed.  What no open flag
stops is another user who may write the directory itself: renaming our
file away, or replacing it once we closed it (a transcript edited after
the fact, a pidfile naming another process for the next ``kill $(cat F)``,
an alert state that silences alerts).  So, as sshd's StrictModes does for
~/.ssh, a directory is refused when

- it is not a directory;
- it belongs to someone else than us (the effective uid), root, or the
  one other owner the caller trusts (serve's -u user for the pidfile it
  must remove as that user);
- its group or others may write it without the sticky bit (with it, as on
  /tmp, nobody but the owner may remove or rename a file).

Only the directory itself is checked, not its parents: they are the
administrator's.  The check is one stat(); the caller decides what a
refusal costs (a capture: no transcript and one capture_error line, never
the session).
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["refusal"]


def refusal(path: str, owners: Iterable[int] = ()) -> str | None:
    """Why ``path`` may not hold our files (one line), or None when it may.

    ``owners``: uids trusted besides ours and root.  OSError from stat()
    (a missing directory) is the caller's to handle.
    """
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid not in (0, os.geteuid(), *owners):
        return f"{path} is owned by uid {st.st_uid}, not by us or root"
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        return f"{path} is group- or world-writable without the sticky bit (mode {mode:04o})"
    return None
