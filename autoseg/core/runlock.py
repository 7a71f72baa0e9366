"""A lock file in a run folder so two processes never train the same fold at once.

``fold_k/.lock`` is created atomically (a hard link, which fails when the lock exists) and holds
``host pid``. Its holder keeps it alive in two ways:

- an **OS lock**: ``flock`` on an open descriptor of the file, which the kernel releases when the
  holder dies, however it dies. Another process that finds the file locked knows the holder lives,
  on this host or (on a shared file system that passes locks on) on another one;
- a **heartbeat**: a thread sets the file's modification time every :data:`HEARTBEAT_SECONDS`. A lock
  whose heartbeat is older than :data:`STALE_SECONDS` (measured with the file system's clock, so the
  hosts' clocks need not agree) is stale whatever host wrote it -- the fallback where OS locks do not
  reach other hosts (NFS mounted ``nolock``, some FUSE and object-store mounts).

A lock is taken over when it is stale: its process is gone (same host: the pid is not alive, is a
zombie, or is this very process, which cannot hold a lock it does not know of: a restarted
container reuses pids), or nobody holds its OS lock and its heartbeat has stopped. A lock written
on another host whose OS lock is free but whose heartbeat is recent is waited for (at most
:data:`STALE_SECONDS`): a scheduler that resubmits a killed job on another node starts once the old
heartbeat has gone stale, and refuses if the heartbeat moves on (its holder lives). A live lock
refuses with a message naming the process, the host and the file.

On NFS: ``flock`` is sent to the server's lock manager as a whole-file byte-range lock (Linux >= 2.6.12;
NFSv3 needs ``rpc.statd``/``lockd`` on client and server, NFSv4 has locking built in); a client that
dies keeps its locks until the server notices (NFSv4 lease, ~90 s; NFSv3 when the client reboots);
a process that dies on a live client releases them at once. The heartbeat covers the rest.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

LOCK_NAME = ".lock"
# nnU-Net has no run lock; these are judgement: a heartbeat every 15 s costs nothing, and 120 s (8
# missed beats) survives a stalled NFS server or a swapping host without declaring a live run dead
HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 120.0
# a killed holder's OS lock outlives its pid for a moment (its main thread is a zombie while its other
# threads still exit), and a process taking a stale lock over holds it for an instant
TAKEOVER_WAIT_SECONDS = 10.0
_HELD: set[Path] = set()  # lock files this process holds (a lock naming our pid and not here is stale)

try:
    import fcntl
except ImportError:  # Windows: no OS lock, the heartbeat alone
    fcntl = None


class RunLockedError(ValueError):
    """Another live process holds the run folder."""


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a killed but not yet reaped zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:  # Linux: "State: Z (zombie)" once killed but not yet reaped by its parent
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1] not in ("Z", "X")
    except OSError:
        pass
    return True


def _holder(path: Path) -> tuple[str, int] | None:
    try:
        host, pid = path.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def os_locked(path: Path) -> bool | None:
    """Whether a process holds the OS lock of ``path``: True, False, or None when this system or file
    system cannot tell (no ``flock``, or the file is gone). Probes with a shared lock, so two probes
    never take each other for a holder."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _flock_within(fd: int, seconds: float) -> bool:
    """Take the exclusive OS lock of ``fd`` within ``seconds``: True when taken (or when the file
    system has no locks), False when still held by another process."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        except OSError:
            return True


def _create(path: Path, tmp: Path, text: str) -> None:
    """Create ``path`` holding ``text`` (already in ``tmp``); FileExistsError when it exists."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then write
        pass
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class RunLock:
    """Context manager: ``with RunLock(run_dir): ...`` holds ``run_dir/.lock`` for the block.

    ``doing`` completes the refusal message "<folder> is being <doing> by process ...";
    ``heartbeat_s`` and ``stale_after_s`` default to :data:`HEARTBEAT_SECONDS` and
    :data:`STALE_SECONDS`; ``notify`` (a callable taking one line) is told when acquiring waits for
    another host's heartbeat to go stale."""

    def __init__(self, run_dir: Path, doing: str = "trained", heartbeat_s: float = HEARTBEAT_SECONDS,
                 stale_after_s: float = STALE_SECONDS, notify=None):
        self.path = Path(run_dir) / LOCK_NAME
        self.doing = doing
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.notify = notify
        self.held = False
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- judging an existing lock ---------------------------------------------------------------------
    def _age(self, now: float | None) -> float | None:
        """Seconds since the lock's last heartbeat (``now``: the file system's current time)."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        return (time.time() if now is None else now) - mtime

    def _verdict(self, holder: tuple[str, int], now: float | None) -> str:
        """"live", "stale", or "silent" (another host's lock: no OS lock held, heartbeat still recent)."""
        host, pid = holder
        here = host == socket.gethostname()
        if here and pid == os.getpid():
            return "live" if self.path.resolve() in _HELD else "stale"
        if here and not process_alive(pid):
            return "stale"
        if os_locked(self.path):
            return "live"
        age = self._age(now)
        if age is not None and age >= self.stale_after_s:
            return "stale"  # heartbeat stopped (another host's, or a reused pid here)
        return "live" if here else "silent"

    def _refusal(self, holder: tuple[str, int]) -> RunLockedError:
        host, pid = holder
        return RunLockedError(
            f"{self.path.parent} is being {self.doing} by process {pid} on {host}; wait for it or stop it (if no "
            f"such process runs, delete {self.path})")

    def check(self, now: float | None = None) -> None:
        """Raise :class:`RunLockedError` when a live process holds the lock (nothing is written). A
        silent lock of another host passes: :meth:`acquire` waits for it to beat or go stale."""
        holder = _holder(self.path)
        if holder is not None and self._verdict(holder, now) == "live":
            raise self._refusal(holder)

    def _wait_until_stale(self, holder: tuple[str, int], now: float) -> None:
        """Another host's lock without an OS lock: wait while its heartbeat ages; refuse as soon as it
        beats again or its OS lock is taken (its holder lives)."""
        first = self._age(now)
        if first is None:
            return
        remaining = self.stale_after_s - first
        if self.notify is not None:
            self.notify(f"{self.path} was written by process {holder[1]} on {holder[0]}, last heartbeat "
                        f"{first:.0f} s ago; waiting up to {remaining:.0f} s for it to beat again or go stale")
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile
        deadline = time.monotonic() + remaining
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            try:
                beat = self.path.stat().st_mtime != mtime
            except FileNotFoundError:
                return  # released meanwhile
            if beat or os_locked(self.path) or _holder(self.path) != holder:
                raise self._refusal(holder)

    # --- holding ----------------------------------------------------------------------------------------
    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        # the holder line goes into a private file first, then is hard-linked into place (fails when
        # the lock exists): the lock file is never seen empty, even when its writer is killed
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        tmp.write_text(me + "\n")
        try:
            for _ in range(3):
                try:
                    _create(self.path, tmp, me + "\n")
                except FileExistsError:
                    self._judge_existing(tmp.stat().st_mtime)  # the file system's "now"
                    continue
                self._hold()
                return self
        finally:
            tmp.unlink(missing_ok=True)
        raise RunLockedError(f"could not take the lock {self.path}; delete it if no process works there")

    def _judge_existing(self, now: float) -> None:
        """Refuse a live lock; remove a stale one (raced safely: see :meth:`_remove_stale`)."""
        holder = _holder(self.path)
        verdict = "stale" if holder is None else self._verdict(holder, now)
        if verdict == "live":
            raise self._refusal(holder)
        if verdict == "silent":
            self._wait_until_stale(holder, now)
        self._remove_stale()

    def _remove_stale(self) -> None:
        """Delete the stale lock file, holding its OS lock while checking that the path still names
        the file judged, so two processes taking over at once never delete each other's new lock
        (waits up to :data:`TAKEOVER_WAIT_SECONDS` for that OS lock)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if fcntl is not None and not _flock_within(fd, TAKEOVER_WAIT_SECONDS):
                return  # still held: the next round judges the lock again
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self.path.unlink()
            except FileNotFoundError:
                pass
        finally:
            os.close(fd)

    def _hold(self) -> None:
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                for _ in range(50):  # a probe holds a shared lock for an instant
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(0.01)
            except OSError:  # no locks on this file system: the heartbeat alone
                pass
            self._fd = fd
        self.held = True
        _HELD.add(self.path.resolve())
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="autoseg-lock-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # deleted by hand, or the file system is away for a moment
                pass

    def release(self) -> None:
        if self.held:
            self._stop.set()
            if self._beat is not None:
                self._beat.join()
            holder = _holder(self.path)
            if holder == (socket.gethostname(), os.getpid()):
                self.path.unlink(missing_ok=True)
            if self._fd is not None:  # unlock first: forked children (data-loader workers) share the lock
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                except OSError:
                    pass
                os.close(self._fd)
                self._fd = None
            _HELD.discard(self.path.resolve())
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
