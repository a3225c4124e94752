"""A cdb the worker may not read is a drop, even under -X: EACCES, not ENOENT.

serve's workers run as the -u user; root reads any file, so the check runs in
a forked child that drops to nobody first (CI runs as root).
"""

from __future__ import annotations

import errno
import os

from cdblib import Writer

from supervise_smtp.serve.rules import RulesError, lookup

NOBODY = 65534


def test_unreadable_cdb_is_eacces(tmp_path):
    path = tmp_path / "r.cdb"
    with open(path, "wb") as f, Writer(f) as writer:
        writer.put(b"", b"")
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o755)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.geteuid() == 0:  # root reads any file: become nobody
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            else:  # the file is ours: take our own right to read it
                os.chmod(path, 0)
            try:
                lookup(str(path), "1.2.3.4")
            except RulesError as err:
                code = 0 if err.errno == errno.EACCES else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
