"""Paths the user names on the command line: an output that would replace one of the command's inputs,
a folder given where a file is expected (or the reverse), and file-system errors turned into one
message naming the path and the fix.

Two paths are "the same" when they resolve to the same place (symbolic links followed) or, when both
exist, when they are the same file or folder on disk (:func:`os.path.samefile`: hard links, bind
mounts, a case-insensitive file system). autoseg writes every output by renaming a temporary file onto
its name, so an output can only destroy an input whose own name it takes; comparing names (after
resolving) and identities is therefore enough.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path


class PathError(ValueError):
    """A path given by the user cannot be used as asked; the message names it and the fix."""


def same_path(a: Path | str, b: Path | str) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (see the module docstring)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return a.resolve() == b.resolve()


def inside(path: Path | str, folder: Path | str) -> bool:
    """Whether ``path`` is ``folder`` or lies somewhere below it (symbolic links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents or same_path(path, folder)


def refuse_overwriting_inputs(output: Path, inputs: Iterable[Path], option: str) -> None:
    """Raise :class:`PathError` when ``output`` (given with ``option``) names one of ``inputs``."""
    for source in inputs:
        if source is not None and same_path(output, source):
            raise PathError(f"{output}: {option} names the input {source}; writing there would destroy it. "
                            f"Give {option} another name")


def file_output(path: Path, option: str, suffix: str) -> Path:
    """``path`` checked as the file ``option`` writes: not a folder, and ending in ``suffix``
    (case-insensitive), so the name says what the file holds."""
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{path}: is a folder, but {option} needs a file name ending in {suffix} "
                        f"(e.g. {path / ('output' + suffix)})")
    if not path.name.lower().endswith(suffix):
        raise PathError(f"{path}: {option} writes a {suffix[1:].upper()} file, so its name must end in {suffix} "
                        f"(e.g. {path.with_name(path.name + suffix)})")
    return path


def folder_output(path: Path, option: str) -> Path:
    """``path`` checked as the folder ``option`` writes into: it may not exist yet, but is not a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{path}: is a file, but {option} needs a folder; give a folder (it is created if missing)")
    return path


def os_error_message(error: OSError) -> str | None:
    """One line naming the path and the fix for a file-system error, or None for an errno not handled."""
    name = error.filename2 or error.filename or ""  # a rename's destination is the path the user named
    where = f"{name}: " if name else ""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{error.strerror}; choose a folder you can write to (--workdir, -o), or fix its permissions"
    if error.errno == errno.ENOSPC:
        return f"{where}no space left on the device; free some space or choose another folder (--workdir, -o)"
    if error.errno == errno.ENOTDIR:
        return (f"{where}a file stands where a folder is needed in this path; choose a folder you can write to, "
                "or move the file away")
    if error.errno == errno.EISDIR:
        return f"{where}is a folder where a file is expected; move the folder away or choose another name"
    if error.errno == errno.EEXIST:
        if name and os.path.exists(name) and not os.path.isdir(name):  # e.g. mkdir with a file in the way
            return f"{where}is a file where a folder is needed; move the file away or choose another folder"
        return f"{where}already exists; remove it or choose another name"
    if error.errno == errno.ENOENT:
        if name and os.path.islink(name):
            return f"{where}broken symbolic link (to {os.readlink(name)}); fix or remove the link"
        return f"{where}not found; check the path (a file may have been moved or deleted while autoseg ran)"
    if error.errno == errno.ELOOP:
        return f"{where}symbolic link loop; fix or remove the link"
    if error.errno == errno.ENAMETOOLONG:
        return f"{where}file name too long; choose a shorter name or folder"
    return None
