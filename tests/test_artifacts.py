"""Atomic writes: all or nothing, plain-file permissions, no leftovers on failure."""

import os
import stat
import sys

import pytest

from autoseg.core.fileops import atomic_path, atomic_write_bytes, exchange_paths, replace_folder, staged_folder


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_has_the_permissions_of_a_plain_new_file(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")  # what open() gives under this umask
    atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert (tmp_path / "out.json").read_bytes() == b"{}"
    assert _mode(tmp_path / "out.json") == _mode(tmp_path / "plain")  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "plain"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix=".nii.gz") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


@pytest.mark.parametrize("exchange", [True, False])  # atomic swap (Linux), or renames where it is missing
def test_replace_folder_swaps_in_the_new_one(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr("autoseg.core.fileops.exchange_paths", lambda a, b: False)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "b").write_text("old")
    replace_folder(tmp_path / "new", tmp_path / "target")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    assert [p.name for p in (tmp_path / "target").iterdir()] == ["a"]
    (tmp_path / "first").mkdir()
    replace_folder(tmp_path / "first", tmp_path / "absent")  # nothing to replace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absent", "target"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_paths_swaps_two_folders_in_one_step(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"from_{name}").write_text(name)
    assert exchange_paths(tmp_path / "a", tmp_path / "b")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["from_b"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["from_a"]
    with pytest.raises(FileNotFoundError):
        exchange_paths(tmp_path / "a", tmp_path / "missing")


def test_staged_folder_replaces_the_target_on_success_only_with_plain_folder_permissions(tmp_path):
    (tmp_path / "plain").mkdir()  # what mkdir gives under this umask
    target = tmp_path / "out" / "model"  # parents are made
    with staged_folder(target) as new:
        assert new.name == "model" and new.parent.name.startswith(".model.staging-") and not target.exists()
        (new / "a").write_text("first")
    assert [p.name for p in target.iterdir()] == ["a"] and _mode(target) == _mode(tmp_path / "plain")  # not 0700
    with pytest.raises(RuntimeError):
        with staged_folder(target) as new:
            (new / "b").write_text("half")
            raise RuntimeError("writer died")
    assert [p.name for p in target.iterdir()] == ["a"] and [p.name for p in target.parent.iterdir()] == ["model"]


def test_staged_folder_removes_the_staging_folders_of_dead_processes_only(tmp_path):
    import socket
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer runs
    host = socket.gethostname()
    leftovers = {"dead": f".model.staging-{dead.pid}-{host}-x1", "live": f".model.staging-{os.getpid()}-{host}-x2",
                 "elsewhere": f".model.staging-{dead.pid}-another-host-x3", "other": f".other.staging-{dead.pid}-{host}-x4"}
    for name in leftovers.values():
        (tmp_path / name).mkdir()
    with staged_folder(tmp_path / "model") as new:
        (new / "a").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", leftovers["live"], leftovers["elsewhere"],
                                                                 leftovers["other"]])
