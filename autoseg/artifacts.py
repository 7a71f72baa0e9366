"""Typed JSON artifacts: frozen dataclasses that round-trip through JSON with a schema version.

Every artifact a stage writes (fingerprint.json, plans.json, splits.json, ...) is a frozen dataclass
deriving from :class:`Artifact`. ``save`` writes atomically (temporary file in the same folder, then
``os.replace``), ``load`` validates the schema name and version before building the object, so a
stale or foreign file gives a clear message instead of a ``KeyError`` deep inside a later stage.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar

from autoseg import jsonfiles

T = TypeVar("T", bound="Artifact")


class ArtifactError(ValueError):
    """An artifact file is missing, unreadable, of another kind or of an unknown schema version."""


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


def atomic_write_with(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Atomically write ``path`` with ``write(file)`` (binary file object), flushed to disk first."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    atomic_write_with(path, lambda f: f.write(data))


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
    import socket

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
    import socket

    from autoseg.training.runlock import process_alive

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


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def _from_jsonable(tp: Any, value: Any) -> Any:
    """Build a value of type ``tp`` from its JSON form (dataclasses, tuples, lists, dicts, unions)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or value is None:
        return value
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _from_jsonable(a, value)
            except (TypeError, ValueError, KeyError):
                continue
        raise TypeError(f"value {value!r} matches none of {args}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            if f.name in value:
                kwargs[f.name] = _from_jsonable(hints[f.name], value[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f"missing key '{f.name}' for {tp.__name__}")
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_jsonable(args[0], v) for v in value)
        if args and len(args) != len(value):
            raise TypeError(f"expected {len(args)} items, got {len(value)}")
        return tuple(_from_jsonable(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [_from_jsonable(args[0], v) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_from_jsonable(kt, k) if kt is not str else k: _from_jsonable(vt, v) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.lstrip("-").isdigit():
                return int(value)
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass(frozen=True)
class Artifact:
    """Base class of JSON artifacts. Subclasses set ``KIND`` and ``SCHEMA_VERSION``."""

    KIND: ClassVar[str] = "artifact"
    SCHEMA_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        body = _to_jsonable(self)
        return {"kind": self.KIND, "schema_version": self.SCHEMA_VERSION, **body}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object for {cls.KIND}")
        kind = data.get("kind")
        if kind != cls.KIND:
            raise ArtifactError(f"{source}: is a '{kind}' file, expected '{cls.KIND}'")
        version = data.get("schema_version")
        if version != cls.SCHEMA_VERSION:
            raise ArtifactError(
                f"{source}: {cls.KIND} has schema version {version}, this autoseg reads version "
                f"{cls.SCHEMA_VERSION}; rerun the command that writes it (e.g. `autoseg plan`)"
            )
        body = {k: v for k, v in data.items() if k not in ("kind", "schema_version")}
        try:
            return _from_jsonable(cls, body)
        except (TypeError, KeyError, ValueError) as e:
            raise ArtifactError(f"{source}: invalid {cls.KIND}: {e}; rerun the command that writes it "
                                "(e.g. `autoseg plan`)") from None

    def save(self, path: Path) -> Path:
        atomic_write_json(Path(path), self.to_dict())
        return Path(path)

    @classmethod
    def load(cls: type[T], path: Path) -> T:
        path = Path(path)
        if path.is_dir():
            raise ArtifactError(f"{path}: is a folder; give the {cls.KIND} JSON file")
        if not path.is_file():
            raise ArtifactError(f"{path}: not found")
        try:
            data = jsonfiles.loads(path.read_text(), path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{path}: cannot be read as JSON ({e}); delete it and rerun") from None
        return cls.from_dict(data, source=str(path))
