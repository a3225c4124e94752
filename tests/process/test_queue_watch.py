"""QueueWatch: the queue program under qmail-smtpd, seen from /proc.

Real processes (this test's own children), not stand-ins: a child that forks
a grandchild plays qmail-smtpd and its queue program.
"""

from __future__ import annotations

import os
import time

from supervise_smtp.session.procfs import QueueWatch


def _wait_for_child_of(pid: int, timeout: float = 5.0) -> None:
    from supervise_smtp.session.procfs import children

    deadline = time.monotonic() + timeout
    while not children(pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_queue_watch_sees_the_queue_program_and_that_it_outlived_its_parent():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # "qmail-smtpd": forks its "queue program", waits to be told to go
        if os.fork() == 0:
            os.close(w)
            os.read(r, 1)  # lives until the test closes the pipe
            os._exit(0)
        os.read(r, 1)
        os._exit(1)
    os.close(r)
    try:
        _wait_for_child_of(pid)
        watch = QueueWatch(pid)
        assert watch.pid is None
        watch.at_data_start()
        queue_pid = watch.pid
        assert queue_pid is not None and queue_pid != pid
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        watch.at_child_exit()
        assert watch.outlived is True
    finally:
        os.close(w)


def test_queue_watch_without_a_queue_program():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    watch = QueueWatch(pid)
    watch.at_data_start()
    watch.at_child_exit()
    assert (watch.pid, watch.outlived) == (None, None)
