import random

import numpy as np
import pytest
import torch

from autoseg import __version__
from autoseg.core.checkpoint import (CheckpointError, DatasetRecord, ModelRecord, NonFiniteWeightsError, load_checkpoint,
                                     save_checkpoint)
from autoseg.models import build_model
from autoseg.training import checkpoint as ck
from autoseg.training.checkpoint import make_checkpoint, restore, rng_state, set_rng_state
from autoseg.training.losses import make_loss
from autoseg.training.trainer import Run, Targets, TrainSettings, TrainState, make_optimizer
from tiny_workspace import tiny_plan


def _run(tmp_path, seed=0) -> Run:
    torch.manual_seed(seed)
    s = TrainSettings(epochs=5)
    model = build_model("unet", tiny_plan(), 1, 3)
    return Run(model=model, network=model, loss_fn=make_loss(3, False), optimizer=make_optimizer(model, s),
               scaler=None, settings=s, targets=Targets(3), device=torch.device("cpu"), amp_dtype=None,
               run_dir=tmp_path, record=ModelRecord(plans={"kind": "plans"}, configuration="3d_fullres", arch="unet",
                                                    fold=0, dataset=DatasetRecord("", {"background": 0}, ())))


def _step(run):
    x, y = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 1, 16, 16, 16))
    run.optimizer.zero_grad()
    run.loss_fn(run.model(x), y).backward()
    run.optimizer.step()


def test_round_trip_restores_weights_optimiser_state_and_rng(tmp_path):
    run = _run(tmp_path)
    _step(run)
    run.state = TrainState(epoch=3, ema=0.5, best_ema=0.6, epochs_since_best=1,
                           history=[{"epoch": 0, "pseudo_dice": [0.1, float("nan")]}])
    path = save_checkpoint(make_checkpoint(run), tmp_path / "checkpoint_latest.pt")
    expected_draw = (random.random(), np.random.rand(), torch.rand(3))
    fresh = _run(tmp_path, seed=1)
    restore(fresh, load_checkpoint(path))
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k])
    a, b = run.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])
    assert (fresh.state.epoch, fresh.state.ema, fresh.state.best_ema, fresh.state.epochs_since_best) == (3, 0.5, 0.6, 1)
    draw = (random.random(), np.random.rand(), torch.rand(3))
    assert draw[:2] == expected_draw[:2] and torch.equal(draw[2], expected_draw[2])


def test_checkpoint_describes_itself(tmp_path):
    ckpt = load_checkpoint(save_checkpoint(make_checkpoint(_run(tmp_path)), tmp_path / "c.pt"))
    assert (ckpt["format"], ckpt["format_version"], ckpt["autoseg_version"]) == ("autoseg-checkpoint", 1, __version__)
    assert TrainSettings.from_dict(ckpt["settings"]) == TrainSettings(epochs=5)
    assert ckpt["schedule"] == {"name": "poly", "epoch": 0, "initial_lr": 1e-2, "exponent": 0.9, "max_epochs": 5}
    assert (ckpt["arch"], ckpt["fold"], ckpt["configuration"]) == ("unet", 0, "3d_fullres")
    assert ckpt["plans"] == {"kind": "plans"} and ckpt["dataset"]["labels"] == {"background": 0}
    assert ckpt["scaler"] is None and set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}


def test_rng_state_survives_weights_only_serialisation(tmp_path):
    torch.save(rng_state(), tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    first = (random.random(), np.random.normal(), torch.randn(2))
    set_rng_state(state)
    again = (random.random(), np.random.normal(), torch.randn(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_missing_foreign_and_truncated_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an autoseg checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    good = save_checkpoint(make_checkpoint(_run(tmp_path)), tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")


def test_memory_mapped_loading_gives_the_same_weights_and_the_same_errors(tmp_path, monkeypatch):
    good = save_checkpoint(make_checkpoint(_run(tmp_path)), tmp_path / "good.pt")
    plain, mapped = load_checkpoint(good), load_checkpoint(good, mmap=True)
    assert plain["model"].keys() == mapped["model"].keys()
    assert all(torch.equal(plain["model"][k], mapped["model"][k]) for k in plain["model"])
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt", mmap=True)
    real_load = torch.load

    def no_mapping(*args, mmap=None, **kwargs):  # a file system that cannot map files
        if mmap:
            raise OSError("mmap: operation not supported")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", no_mapping)
    assert torch.equal(load_checkpoint(good, mmap=True)["model"][next(iter(plain["model"]))],
                       plain["model"][next(iter(plain["model"]))])


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": "autoseg-checkpoint", "format_version": 1, "settings": TrainSettings()}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "obj.pt")


def test_other_format_version_names_the_fix(tmp_path):
    ckpt = make_checkpoint(_run(tmp_path))
    ckpt["format_version"] = 99
    save_checkpoint(ckpt, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 99.*reads version 1"):
        load_checkpoint(tmp_path / "new.pt")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint({"format": "autoseg-checkpoint", "x": 1}, tmp_path / "checkpoint_latest.pt")
    before = path.read_bytes()

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"x": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]


def test_save_checkpoint_refuses_non_finite_weights_and_leaves_the_old_file(tmp_path):
    """Issue 15: a diverged run must never leave NaN weights behind as best or final."""
    good = {"format": "autoseg-checkpoint", "format_version": 1, "model": {"w": torch.ones(3), "n": torch.tensor(2)}}
    path = save_checkpoint(good, tmp_path / "checkpoint_best.pt")
    bad = {**good, "model": {"w": torch.tensor([1.0, float("inf"), 0.0]), "n": torch.tensor(2)}}
    match = r"checkpoint_best\.pt: not written: 1 weight tensor\(s\).*e\.g\. w"
    with pytest.raises(NonFiniteWeightsError, match=match):
        save_checkpoint(bad, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_best.pt"]
