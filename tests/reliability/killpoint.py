"""Run the autoseg command line and SIGKILL it at a chosen point (the interruption tests' driver).

``python killpoint.py '<KillPoint as JSON>' ARG ...`` runs ``autoseg ARG ...`` (``autoseg.cli.main``,
exactly what ``python -m autoseg`` runs) after wrapping one function: on its ``nth`` call whose
arguments match ``match`` (fnmatch on the base name of any str/Path argument; None: every call),
the process sends itself SIGKILL ``before`` or ``after`` the call. Nothing runs after that (no
``finally``, no atexit), just as when a scheduler kills a job. ``signal`` may name another signal
(SIGTERM, SIGINT), which the process handles as it would one sent by a scheduler or Ctrl-C. Useful targets:

- ``os:replace`` -- every atomic write renames its temporary file into place; ``before`` leaves the
  temporary file behind, ``after`` stops right after an artifact appeared;
- ``autoseg.training.trainer:train_step`` -- one optimiser step (kills in the middle of an epoch);
- ``autoseg.storage:write_case`` -- one preprocessed case.

:func:`count_calls` counts the matching calls of an uninterrupted in-process run, to draw seeded
kill points that fall inside the work.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path


@dataclass(frozen=True)
class KillPoint:
    target: str  # "module:attribute"
    nth: int  # 1-based index among the matching calls
    when: str = "before"  # or "after"
    match: str | None = None
    signal: str = "SIGKILL"  # or SIGTERM / SIGINT: what a scheduler sends first, and Ctrl-C

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _matches(args: tuple, kwargs: dict, pattern: str | None) -> bool:
    if pattern is None:
        return True
    names = [Path(a).name for a in (*args, *kwargs.values()) if isinstance(a, (str, os.PathLike))]
    return any(fnmatch(n, pattern) for n in names)


@contextlib.contextmanager
def wrapped(target: str, match: str | None, on_call):
    """Replace ``target`` by a wrapper calling ``on_call(index, phase)`` around each matching call
    (phase "before" / "after"; index counts matching calls from 1); restored on exit."""
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    count = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal count
        if not _matches(args, kwargs, match):
            return original(*args, **kwargs)
        count += 1
        index = count
        on_call(index, "before")
        result = original(*args, **kwargs)
        on_call(index, "after")
        return result

    setattr(module, attr, wrapper)
    try:
        yield lambda: count
    finally:
        setattr(module, attr, original)


@contextlib.contextmanager
def count_calls(target: str, match: str | None = None):
    """``with count_calls(...) as n: ...; n()`` is the number of matching calls made in the block."""
    with wrapped(target, match, lambda index, phase: None) as n:
        yield n


def main(argv: list[str]) -> int:
    point = KillPoint(**json.loads(argv[0]))

    def on_call(index: int, phase: str) -> None:
        if index == point.nth and phase == point.when:
            sys.stdout.flush()
            os.kill(os.getpid(), getattr(signal, point.signal))

    from autoseg.cli import main as autoseg_main

    with wrapped(point.target, point.match, on_call):
        return autoseg_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
