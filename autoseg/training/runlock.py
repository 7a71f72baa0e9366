"""A lock file in a run folder so two processes never train the same fold at once.

``fold_k/.lock`` is created with ``O_EXCL`` and holds ``host pid``. A lock whose process is gone
(same host, pid no longer alive) is stale and taken over; a live one refuses with a message naming
the process and the file.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another live process holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> tuple[str, int] | None:
    try:
        host, pid = path.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


class RunLock:
    """Context manager: ``with RunLock(run_dir): ...`` holds ``run_dir/.lock`` for the block."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if holder is not None and (holder[0] != socket.gethostname() or _alive(holder[1])):
                    raise RunLockedError(
                        f"{self.path.parent} is being trained by process {holder[1]} on {holder[0]}; wait for it "
                        f"or stop it (if no such process runs, delete {self.path})") from None
                self.path.unlink(missing_ok=True)  # stale (dead pid) or unreadable: take over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}; delete it if no training runs there")

    def release(self) -> None:
        if self.held:
            holder = _holder(self.path)
            if holder == (socket.gethostname(), os.getpid()):
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
