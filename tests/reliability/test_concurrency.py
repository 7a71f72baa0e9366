"""Several autoseg processes at once (issue 5, "Concurrency"): folds train side by side, a fold is
trained by one process at a time (a lock its killed holder does not leave blocking), and predictions
written into one folder by two runs are always whole files."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .procs import (RUN, cli, finish, labels, losses, predict_args, same_weights, spawn, temporaries,
                    train_args)


@pytest.mark.slow
def test_two_folds_trained_at_once_do_not_disturb_each_other(reference, tmp_path):
    workdir = reference.planned_copy(tmp_path / "w")
    procs = {fold: spawn(train_args(workdir, fold=fold, epochs=2), tmp_path) for fold in (1, 2)}
    results = {fold: finish(p) for fold, p in procs.items()}
    assert all(code == 0 for code, _, _ in results.values()), results
    alone = reference.planned_copy(tmp_path / "alone")
    code, _, err = cli(train_args(alone, fold=1, epochs=2))
    assert code == 0, err

    from autoseg.core.checkpoint import load_checkpoint

    for fold in (1, 2):
        run_dir = workdir / RUN / f"fold_{fold}"
        assert load_checkpoint(run_dir / "checkpoint_final.pt")["fold"] == fold
        assert len(losses(run_dir)) == 2 and (run_dir / "validation" / "summary.json").is_file()
        assert temporaries(run_dir) == []  # locks released, no temporary files
    # the fold trained next to another one is exactly the fold trained alone
    final = RUN / "fold_1" / "checkpoint_final.pt"
    assert same_weights(workdir / final, alone / final)
    assert losses(workdir / RUN / "fold_1") == losses(alone / RUN / "fold_1")


@pytest.mark.slow
def test_second_process_on_a_fold_is_refused_and_a_killed_holder_does_not_block(reference, tmp_path):
    from autoseg.core.checkpoint import load_checkpoint

    workdir = reference.planned_copy(tmp_path / "w")
    run_dir = workdir / RUN / "fold_0"
    holder = spawn(train_args(workdir, epochs=500), tmp_path)  # busy for minutes
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint_latest.pt").is_file():  # an epoch done and saved, lock held
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the holder never finished an epoch"
            time.sleep(0.02)
        for resume in (True, False):
            code, _, err = cli(train_args(workdir, resume=resume))
            assert code == 2 and f"{run_dir} is being trained by process {holder.pid} on " in err, err
            assert err.count("\n") == 1  # one line, no traceback
        holder.send_signal(signal.SIGKILL)
    finally:
        holder.kill()
        holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    assert (run_dir / ".lock").read_text().split()[1] == str(holder.pid)  # left behind by the killed holder
    done = load_checkpoint(run_dir / "checkpoint_latest.pt")["train_state"]["epoch"]
    code, _, err = cli(train_args(workdir, epochs=done + 1, resume=True))
    assert code == 0, err
    assert f"resuming after epoch {done}:" in (run_dir / "training_log.txt").read_text()
    assert len(losses(run_dir)) == done + 1 and not (run_dir / ".lock").exists()


def _process_state(pid: int) -> str:
    """The state letter of ``/proc/<pid>/stat`` (``Z`` for a zombie)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_lock_of_a_killed_but_unreaped_holder_is_stale(tmp_path):
    from autoseg.core.runlock import RunLock

    code = ("import sys, time\nfrom autoseg.core.runlock import RunLock\n"
            "RunLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(300)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"being trained by process {holder.pid}"):
            RunLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30  # a loaded machine may take a while to finish the kill
        while _process_state(holder.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _process_state(holder.pid) == "Z"  # dead, but unreaped: its pid still answers kill(pid, 0)
        with RunLock(tmp_path) as lock:
            assert lock.held
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_predicts_into_one_folder_only_ever_show_whole_files(reference, tmp_path):
    import nibabel as nib

    workdir = reference.trained_copy(tmp_path / "w")
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for copy in range(2):  # 6 cases: both runs work on the same cases at the same time
        for p in sorted(reference.images_ts.glob("*.nii.gz")):
            shutil.copy(p, in_dir / f"c{copy}{p.name}")
    expected = {p.name.replace("_0000", ""): nib.load(p).shape for p in in_dir.iterdir()}
    out_dir = tmp_path / "out"
    runs = [spawn(predict_args(workdir, in_dir, out_dir), tmp_path) for _ in range(2)]
    seen: dict[str, int] = {}
    while any(r.poll() is None for r in runs):  # every file that appears under its name is whole
        for p in list(out_dir.glob("*.nii.gz")) if out_dir.is_dir() else []:
            if not p.name.startswith("."):
                try:
                    shape = nib.load(p).get_fdata().shape
                except FileNotFoundError:
                    continue  # cannot happen with atomic renames, but never count a vanished file as read
                seen[p.name] = seen.get(p.name, 0) + 1
                assert shape == expected[p.name], p
        time.sleep(0.01)
    results = [finish(r) for r in runs]
    assert all(code == 0 for code, _, _ in results), results
    assert seen, "no output was observed while the runs were writing"
    got, want = labels(out_dir), labels(reference.predictions)
    assert len(got) == 6 and all((got[f"c{c}{name}"] == want[name]).all() for c in range(2) for name in want)
    assert temporaries(out_dir) == []


def test_a_second_plan_of_a_dataset_being_planned_is_refused(reference, tmp_path):
    import socket

    from .procs import plan_args

    workdir = reference.planned_copy(tmp_path / "w")
    dataset_dir = reference.preprocessed.relative_to(reference.workdir)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = workdir / dataset_dir / ".lock"
        lock.write_text(f"{socket.gethostname()} {holder.pid}\n")
        before = sorted(p.name for p in (workdir / dataset_dir).iterdir())
        code, out, err = cli(plan_args(reference.raw, workdir, reference.preset))
        assert code == 2 and "is being planned by process" in err and str(lock) in err, (code, err)
        assert "Traceback" not in out + err
        assert sorted(p.name for p in (workdir / dataset_dir).iterdir()) == before  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    code, _, err = cli(plan_args(reference.raw, workdir, reference.preset))  # the holder is gone: stale
    assert code == 0, err
    assert not lock.exists()
