import os
import socket
import subprocess
import sys

import pytest

from autoseg.core.runlock import RunLock, RunLockedError


def test_second_lock_on_the_same_run_folder_is_refused(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split() == [socket.gethostname(), str(os.getpid())]
        with pytest.raises(RunLockedError, match=f"being trained by process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {int(proc.stdout)}\n")
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())


def test_unreadable_lock_is_replaced(tmp_path):
    (tmp_path / ".lock").write_text("garbage")
    with RunLock(tmp_path) as lock:
        assert lock.held
