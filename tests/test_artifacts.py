"""Atomic writes: all or nothing, plain-file permissions, no leftovers on failure."""

import os
import stat
import sys

import pytest

from autoseg.artifacts import atomic_path, atomic_write_bytes, exchange_paths, replace_folder


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
        monkeypatch.setattr("autoseg.artifacts.exchange_paths", lambda a, b: False)
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
