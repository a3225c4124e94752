"""/proc lookups: children, start time, liveness; a vanished process is just gone."""

from __future__ import annotations

import os
import subprocess
import time

from supervise_smtp.session import procfs


def test_procfs_children_start_and_alive():
    """A shell's background child is found, identified by start time, and seen to end."""
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE)
    try:
        kid = int(proc.stdout.readline())
        deadline = time.monotonic() + 5
        while kid not in procfs.children(proc.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ticks = procfs.start_ticks(kid)
        assert ticks is not None
        assert procfs.alive(kid, ticks)
        assert not procfs.alive(kid, ticks + 1)  # same pid, other process
        os.kill(kid, 9)
        proc.wait(5)
        assert not procfs.alive(kid, ticks)
    finally:
        proc.kill()
        proc.wait()


def test_procfs_gone_process_is_not_an_error():
    """Lookups on a pid that does not exist answer 'nothing', never raise."""
    assert procfs.children(2**22 + 7) == []
    assert procfs.start_ticks(2**22 + 7) is None
    assert not procfs.alive(2**22 + 7, None)
