"""How worker processes start: one place for every process pool of autoseg.

Pools start their workers from a fork server where the platform has one (Linux, macOS): the server
is a single-threaded process started once, so forking it is safe even when the caller runs threads
(progress bars, torch), and the modules it was told to import (:func:`preload_workers`) are already
loaded in every worker it forks. Starting a spawned worker instead costs about a second of imports
each time (numpy, SciPy, nibabel, autoseg), more than a small dataset's whole planning step takes.
Elsewhere (Windows) workers are spawned. See Python's ``multiprocessing`` "Contexts and start methods".
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

_PRELOAD: list[str] = []


def preload_workers(modules: list[str]) -> None:
    """Ask the fork server to import ``modules`` once, for all the workers it will fork; takes effect
    when no pool has started the server yet (one per process), otherwise workers import on their own."""
    for name in modules:
        if name not in _PRELOAD:
            _PRELOAD.append(name)


def worker_context() -> BaseContext:
    """The multiprocessing context for a process pool: ``forkserver`` where available, else ``spawn``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(_PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")
