"""What a cluster job meets (issue 15, "Cluster and restart behaviour"): SIGTERM before the kill or on
preemption, Ctrl-C, and a resubmission on another node that finds the killed job's run lock.

Signals are sent like the SIGKILLs of ``test_interruption.py``: ``killpoint.py`` makes the process send
itself the signal on the n-th call of a function, so the point is exact; one test signals the whole
process group (trainer and data-loader workers) as a scheduler does.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from .killpoint import KillPoint
from .procs import (RUN, assert_same_tree, child_env, cli, finish, losses, same_weights, spawn, temporaries,
                    train_args)

FINAL = "checkpoint_final.pt"


def _epoch_of(run_dir) -> int:
    from autoseg.core.checkpoint import LATEST, load_checkpoint

    path = run_dir / LATEST
    return int(load_checkpoint(path)["train_state"]["epoch"]) if path.is_file() else 0


def _resume_command(err: str) -> list[str]:
    """The command the stop message gives, as arguments of ``autoseg``."""
    words = shlex.split(err.split("resume with: ", 1)[1].strip())
    assert words[:2] == ["autoseg", "train"] and words[-1] == "--resume", words
    return words[1:]


@pytest.mark.slow
@pytest.mark.parametrize("signame, nth", [("SIGTERM", 5), ("SIGINT", 4)])
def test_a_signal_mid_epoch_stops_after_the_step_and_resume_reaches_the_uninterrupted_weights(
        reference, tmp_path, signame, nth):
    workdir = reference.planned_copy(tmp_path / "w")
    run_dir = workdir / RUN / "fold_0"
    args = train_args(workdir)
    point = KillPoint("autoseg.training.trainer:train_step", nth=nth, when="before", signal=signame)

    code, out, err = finish(spawn(args, tmp_path, point))

    assert code == 128 + getattr(signal, signame), (code, err)
    done = (nth - 1) // 2  # 2 steps per epoch: the epochs finished before the signalled step
    assert f"autoseg train: stopped by {signame}; {run_dir} holds the checkpoint of epoch {done}" in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert _epoch_of(run_dir) == done and not (run_dir / FINAL).exists()
    assert not (run_dir / ".lock").exists() and temporaries(run_dir) == []  # lock released, nothing half-written

    code, out, err = cli(_resume_command(err))  # the command the message gives

    assert code == 0, err
    assert f"resuming after epoch {done}:" in (run_dir / "training_log.txt").read_text()
    assert same_weights(run_dir / FINAL, reference.run_dir / FINAL)
    assert losses(run_dir) == losses(reference.run_dir)
    assert_same_tree(run_dir / "validation", reference.run_dir / "validation")


@pytest.mark.slow
def test_sigterm_during_the_final_validation_ends_at_once_and_resume_validates(reference, tmp_path):
    workdir = reference.planned_copy(tmp_path / "w")
    run_dir = workdir / RUN / "fold_0"
    point = KillPoint("autoseg.training.session:_final_validation", nth=1, when="before", signal="SIGTERM")

    code, out, err = finish(spawn(train_args(workdir), tmp_path, point))

    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM outside the training loop" in err and "Traceback" not in err
    assert (run_dir / FINAL).is_file() and not (run_dir / "validation" / "summary.json").exists()
    assert not (run_dir / ".lock").exists()
    code, out, err = cli(_resume_command(err))
    assert code == 0, err
    assert_same_tree(run_dir / "validation", reference.run_dir / "validation")


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_data_loader_workers_stops_cleanly(reference, tmp_path):
    """A scheduler signals every process of the job: the workers leave it to the trainer."""
    workdir = reference.planned_copy(tmp_path / "w")
    run_dir = workdir / RUN / "fold_0"
    args = train_args(workdir, epochs=500)
    args[args.index("--num-workers") + 1] = "2"
    proc = subprocess.Popen([sys.executable, "-m", "autoseg", *args], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint_latest.pt").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err and "DataLoader worker" not in err, err
    assert not (run_dir / ".lock").exists() and temporaries(run_dir) == []
    done = _epoch_of(run_dir)
    code, out, err = cli(train_args(workdir, epochs=done + 1, resume=True))
    assert code == 0, err
    assert len(losses(run_dir)) == done + 1


_OTHER_HOST_HOLDER = """\
import fcntl, os, sys, time
with open(sys.argv[1], "w") as f:
    f.write("other-node 4242\\n")
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(300)
"""


def test_a_resubmitted_job_finds_the_killed_jobs_lock_of_another_node_and_resumes(reference, tmp_path):
    """The lock of a job killed on another node (its heartbeat stopped long ago) no longer blocks
    `train --resume`; a live job on another node (its OS lock held) still does, at once."""
    workdir = reference.planned_copy(tmp_path / "w")
    run_dir = workdir / RUN / "fold_0"
    run_dir.mkdir(parents=True)
    lock = run_dir / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", _OTHER_HOST_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, err = cli(train_args(workdir, resume=True))
        assert code == 2 and f"{run_dir} is being trained by process 4242 on other-node" in err, err
        assert err.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()
    past = time.time() - 10 * 60  # killed with its node ten minutes ago
    os.utime(lock, (past, past))

    code, out, err = cli(train_args(workdir, resume=True))

    assert code == 0, err
    assert same_weights(run_dir / FINAL, reference.run_dir / FINAL)
    assert not lock.exists()
