"""A lock file in a run folder so two processes never train the same fold at once.

``fold_k/.lock`` is created atomically (a hard link, which fails when the lock exists) and holds
``host pid``. A lock whose process is gone (same host, and the pid is not alive, is a zombie, or is
this very process, which cannot hold a lock it does not know of: a restarted container reuses pids)
is stale and taken over, so a holder killed with SIGKILL never blocks a later run; a live one refuses
with a message naming the process and the file. A lock written on another host cannot be checked
and counts as live.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"
_HELD: set[Path] = set()  # lock files this process holds (a lock naming our pid and not here is stale)


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

    ``doing`` completes the refusal message "<folder> is being <doing> by process ..."."""

    def __init__(self, run_dir: Path, doing: str = "trained"):
        self.path = Path(run_dir) / LOCK_NAME
        self.doing = doing
        self.held = False

    def check(self) -> None:
        """Raise :class:`RunLockedError` when a live process holds the lock (nothing is written)."""
        holder = _holder(self.path)
        if holder is None:
            return
        host, pid = holder
        if pid == os.getpid() and host == socket.gethostname():
            live = self.path.resolve() in _HELD
        else:
            live = host != socket.gethostname() or process_alive(pid)
        if live:
            raise RunLockedError(
                f"{self.path.parent} is being {self.doing} by process {holder[1]} on {holder[0]}; wait for it "
                f"or stop it (if no such process runs, delete {self.path})")

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        # the holder line goes into a private file first, then is hard-linked into place (fails when
        # the lock exists): the lock file is never seen empty, even when its writer is killed
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        tmp.write_text(me + "\n")
        try:
            for _ in range(2):
                try:
                    _create(self.path, tmp, me + "\n")
                except FileExistsError:
                    self.check()
                    self.path.unlink(missing_ok=True)  # stale (dead pid) or unreadable: take over
                    continue
                self.held = True
                _HELD.add(self.path.resolve())
                return self
        finally:
            tmp.unlink(missing_ok=True)
        raise RunLockedError(f"could not take the lock {self.path}; delete it if no process works there")

    def release(self) -> None:
        if self.held:
            holder = _holder(self.path)
            if holder == (socket.gethostname(), os.getpid()):
                self.path.unlink(missing_ok=True)
            _HELD.discard(self.path.resolve())
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
