import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from autoseg.core import processes


def _loaded(name):
    import sys

    return name in sys.modules


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_pools_fork_from_a_server_that_imported_the_preloaded_modules(monkeypatch):
    monkeypatch.setattr(processes, "_PRELOAD", [])
    processes.preload_workers(["json", "colorsys"])
    processes.preload_workers(["colorsys"])  # asked twice, imported once
    ctx = processes.worker_context()
    assert ctx.get_start_method() == "forkserver"
    assert processes._PRELOAD == ["json", "colorsys"]
    from multiprocessing import forkserver

    assert forkserver._forkserver._preload_modules == ["json", "colorsys"]  # what a new server imports
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        assert pool.submit(_loaded, "json").result()


def test_without_a_fork_server_workers_are_spawned(monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert processes.worker_context().get_start_method() == "spawn"
