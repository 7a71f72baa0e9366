"""Same seed, same result (issue 5, "Determinism"): a second process (another hash seed, another
workdir) plans the same raw data into byte-identical artifacts and, on the CPU, trains the same loss
curve and weights as the reference run of ``conftest.py``; another training seed gives another curve."""

from __future__ import annotations

import pytest

from .procs import RUN, assert_same_tree, cli, finish, losses, plan_args, same_weights, spawn, train_args


def test_plan_in_another_process_gives_identical_plans_splits_and_arrays(reference, tmp_path):
    workdir = tmp_path / "w"
    code, out, err = finish(spawn(plan_args(reference.raw, workdir, reference.preset), tmp_path, PYTHONHASHSEED="7"))
    assert code == 0, err
    # fingerprint.json, plans.json, splits.json, dataset.json, preprocessing.json, every case's
    # arrays (.npy byte-equal), foreground locations and properties
    assert_same_tree(workdir / "preprocessed", reference.workdir / "preprocessed")


@pytest.mark.slow
def test_training_with_the_same_seed_repeats_the_loss_curve_and_another_seed_does_not(reference, tmp_path):
    same = reference.planned_copy(tmp_path / "same")
    code, out, err = finish(spawn(train_args(same), tmp_path, PYTHONHASHSEED="7"))
    assert code == 0, err
    curve = losses(same / RUN / "fold_0")
    assert len(curve) == 4 and curve == losses(reference.run_dir)  # exact floats, epoch by epoch
    assert same_weights(same / RUN / "fold_0" / "checkpoint_final.pt", reference.run_dir / "checkpoint_final.pt")

    other = reference.planned_copy(tmp_path / "other")
    code, out, err = cli(train_args(other, seed=7))
    assert code == 0, err
    other_curve = losses(other / RUN / "fold_0")
    assert len(other_curve) == 4 and all(a != b for a, b in zip(other_curve, curve))
