"""File operations every stage uses: atomic writes, staged folders, output-folder locking.

Readers never see half a file: each output is written to a hidden temporary name next to it and
renamed into place (``os.replace``); a folder is built aside and swapped in (:func:`staged_folder`);
a folder that several runs write into is shared through a ``flock`` (:func:`writing_into`), and the
one run that holds it alone first removes the temporary files killed runs left. Run folders are
locked with :mod:`autoseg.core.runlock`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from autoseg.core.runlock import process_alive


def _read_umask() -> int:
    """The process umask, read once (``os.umask`` can only be read by setting it, which is not
    thread-safe later on)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file; mkstemp gives 0600


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file next to ``path`` for the caller to write; on success it gets the permissions
    a plain new file would have and is renamed to ``path`` (readers never see half a file), on
    failure it is removed. Hidden name (``.{name}.*``), so a killed run's leftover is never taken
    for an output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_with(path: Path, write: Callable[[BinaryIO], Any], durable: bool = True) -> Path:
    """Atomically write ``path`` with ``write(file)`` (binary file object), flushed to disk first.

    ``durable=False`` leaves out the per-file ``fsync`` (milliseconds each, the largest cost of writing
    many small files): the rename is still atomic for other processes and for a killed process, but
    after a power loss the file may be empty; callers that write many files flush them together with
    :func:`flush_file_system` and check what they read back."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def flush_file_system(folder: Path) -> None:
    """Write the file system holding ``folder`` to disk (Linux ``syncfs``; ``sync`` elsewhere): one
    flush for many files written with ``durable=False``."""
    try:
        import ctypes

        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux, or a C library without syncfs
        if hasattr(os, "sync"):
            os.sync()
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename
    (``durable``: see :func:`atomic_write_with`)."""
    atomic_write_with(path, lambda f: f.write(data), durable)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``, same file
    system); False where the system or file system cannot, so the caller falls back to renames."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without the wrapper (glibc < 2.28, some musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel, or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_temporary(name: str, outputs: set[str]) -> bool:
    """Whether ``name`` is a temporary file of one of ``outputs`` (``.{output}.XXXXXXXX...``)."""
    if not name.startswith("."):
        return False
    return any(name[1:].startswith(f"{o}.") for o in outputs)


@contextmanager
def writing_into(out_dir: Path, outputs: list[str]):
    """Hold a shared lock on ``out_dir`` while writing the files ``outputs`` into it (atomically, with
    :func:`atomic_path`); when no other run holds one, first delete the temporaries a killed run left
    for them (no live writer can own them then). The lock is the kernel's (``flock`` on the folder):
    it goes with its process, even on SIGKILL. ``out_dir`` is created when missing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): leftovers stay, hidden and never taken for outputs
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            sole = True
        except BlockingIOError:  # another run is writing here: its temporaries are live
            sole = False
        except OSError:  # no flock on this file system (some network mounts): leave leftovers alone
            yield
            return
        if sole:
            names = set(outputs)
            for p in out_dir.iterdir():
                if _is_temporary(p.name, names) and p.is_file():
                    p.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def replace_folder(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target``, replacing an existing one.

    An existing ``target`` is swapped with ``new`` atomically where the system can
    (:func:`exchange_paths`): at every instant ``target`` is the whole old or the whole new folder,
    even if the process is killed; the old one (then at ``new``) is deleted afterwards. Elsewhere the
    old folder is renamed aside first, which leaves a short window without ``target``."""
    if target.exists() and exchange_paths(new, target):
        shutil.rmtree(new, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_STAGING = ".staging-"  # ".{target}.staging-<pid>-<host>-<random>": where staged_folder builds a folder


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A new, empty folder to fill in place of ``target``: when the block ends normally it replaces
    ``target`` (:func:`replace_folder`, in one step where the system can); when it raises, or the
    process is killed, ``target`` is left as it was. The folder is built under
    ``.{target name}.staging-<pid>-<host>-*/`` next to ``target``; such staging folders of processes
    on this machine that no longer run (killed) are removed on the next call."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}{_STAGING}"
    _remove_dead_staging(target.parent, prefix)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{socket.gethostname()}-", dir=target.parent))
    try:
        new = staging / target.name  # made by mkdir (the umask's permissions; mkdtemp gives 0700)
        new.mkdir()
        yield new
        replace_folder(new, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_dead_staging(parent: Path, prefix: str) -> None:
    """Delete staging folders ``{prefix}<pid>-<host>-*`` in ``parent`` left by killed processes of this
    machine; a live process's folder, another machine's, or one whose process id is in use again is
    left alone."""
    for p in parent.glob(f"{prefix}*"):
        pid, _, rest = p.name[len(prefix):].partition("-")
        if (pid.isdigit() and rest.startswith(f"{socket.gethostname()}-") and p.is_dir()
                and not process_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


class OutputFolderError(ValueError):
    """A folder that outputs should go to cannot be created or written to."""


def ensure_writable_dir(folder: Path, what: str = "output folder") -> Path:
    """Create ``folder`` (and parents) and prove it takes files by writing and removing a probe, so a
    command fails before any slow work instead of at its first write. Raises
    :class:`OutputFolderError` naming the folder and the fix."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".autoseg-write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(folder) else ""
        raise OutputFolderError(f"{folder}: the {what} cannot be written to: {reason}{where}; choose a folder you "
                                "can write to, or fix its permissions") from None
    return folder


def atomic_write_json(path: Path, obj: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), durable)
