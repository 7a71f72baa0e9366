import os
import socket
import subprocess
import sys
import threading
import time

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


# --- locks of other hosts, OS locks and heartbeats (issue 15: a lock written on another host always counted
# as live, so a job resubmitted on another node never started) ------------------------------------------------

_FLOCK_HOLDER = """\
import fcntl, os, sys, time
path, text, beat = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(path, "w") as f:
    f.write(text)
fd = os.open(path, os.O_RDONLY)
if beat == 0:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
while True:
    time.sleep(beat or 60)
    os.utime(path)
"""


def _holder_process(tmp_path, text: str, beat: float = 0.0) -> subprocess.Popen:
    """Another host's run, simulated: writes ``text`` to the lock, then holds its OS lock (beat 0) or,
    without an OS lock, beats every ``beat`` seconds (a file system whose locks do not reach this host)."""
    proc = subprocess.Popen([sys.executable, "-c", _FLOCK_HOLDER, str(tmp_path / ".lock"), text, str(beat)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_the_holder_beats_and_its_os_lock_shows_it_lives(tmp_path):
    from autoseg.core.runlock import os_locked

    with RunLock(tmp_path, heartbeat_s=0.05) as lock:
        _age(lock.path, 100)
        time.sleep(0.5)
        assert time.time() - lock.path.stat().st_mtime < 10  # the heartbeat set it again
        assert os_locked(lock.path) is True
        assert any(t.name == "autoseg-lock-heartbeat" for t in threading.enumerate())
    assert not any(t.name == "autoseg-lock-heartbeat" for t in threading.enumerate())


def test_another_hosts_lock_whose_heartbeat_stopped_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text("other-node 4242\n")
    _age(tmp_path / ".lock", 10 * 60)
    started = time.monotonic()
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / ".lock").read_text().split() == [socket.gethostname(), str(os.getpid())]
    assert time.monotonic() - started < 5  # no waiting: its heartbeat is long gone


def test_another_hosts_lock_held_by_a_live_process_is_refused_at_once(tmp_path):
    holder = _holder_process(tmp_path, "other-node 4242\n")
    try:
        _age(tmp_path / ".lock", 10 * 60)  # even with an old heartbeat: the OS lock says it lives
        started = time.monotonic()
        with pytest.raises(RunLockedError, match="being trained by process 4242 on other-node"):
            RunLock(tmp_path).acquire()
        assert time.monotonic() - started < 5
        assert (tmp_path / ".lock").read_text() == "other-node 4242\n"
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:  # killed: the kernel released its OS lock, the heartbeat is old
        assert lock.held


def test_a_silent_lock_of_another_host_is_waited_for_until_its_heartbeat_is_stale(tmp_path):
    (tmp_path / ".lock").write_text("other-node 4242\n")  # no OS lock (e.g. NFS mounted nolock), fresh
    told = []
    started = time.monotonic()
    with RunLock(tmp_path, stale_after_s=1.5, notify=told.append) as lock:
        assert lock.held
    assert 1.0 < time.monotonic() - started < 10
    assert len(told) == 1 and "process 4242 on other-node" in told[0] and "waiting up to" in told[0]


def test_a_silent_lock_of_another_host_that_beats_again_is_refused(tmp_path):
    holder = _holder_process(tmp_path, "other-node 4242\n", beat=0.2)  # beats, but holds no OS lock
    try:
        started = time.monotonic()
        with pytest.raises(RunLockedError, match="being trained by process 4242 on other-node"):
            RunLock(tmp_path, stale_after_s=30).acquire()
        assert time.monotonic() - started < 10  # refused at the first beat, not after 30 s
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_naming_a_live_pid_of_this_host_without_os_lock_or_heartbeat_is_stale(tmp_path):
    """The pid was reused by an unrelated process (or an older autoseg held it): nothing keeps it alive."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(f"{socket.gethostname()} {other.pid}\n")
        with pytest.raises(RunLockedError):  # fresh: counted as live, as before
            RunLock(tmp_path).acquire()
        _age(tmp_path / ".lock", 10 * 60)
        with RunLock(tmp_path) as lock:
            assert lock.held
    finally:
        other.kill()
        other.wait()
