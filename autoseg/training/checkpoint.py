"""Checkpoints of a training run: what the trainer writes each epoch and how a resumed run reads it back.

The file format, its digests and the record of what a model is live in
:mod:`autoseg.core.checkpoint`; this module adds the training state (``optimizer``, ``scaler``, ``schedule``: ``{"name": "poly", "epoch",
"initial_lr", "exponent", "max_epochs"}``, ``rng``: python / numpy / torch / cuda generator states,
``train_state``: EMA and best EMA pseudo Dice, epochs since best, per-epoch history, the time budget
spent so far and its plan (``train --time-budget``, :mod:`autoseg.training.budget`)).

The run folder holds ``checkpoint_latest.pt`` (every epoch), ``checkpoint_best.pt`` (when the EMA
pseudo Dice improves) and ``checkpoint_final.pt`` (end of training; the latest is then removed).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import torch

from autoseg.core.checkpoint import BEST, FINAL, FORMAT, FORMAT_VERSION, LATEST, save_checkpoint
from autoseg.training.trainer import Callback, Run, TrainState


class NonFiniteWeightsError(RuntimeError):
    """Weights with NaN or infinite values were about to be saved (training diverged)."""


def rng_state() -> dict[str, Any]:
    """Generator states of python, numpy and torch (CPU and every CUDA device) as primitives/tensors."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": _listify(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def make_checkpoint(run: Run) -> dict[str, Any]:
    """The checkpoint of ``run`` at its current epoch: format, the run's :class:`ModelRecord` (with the
    current settings), weights and training state; :func:`save_checkpoint` adds the digests."""
    s = run.settings
    if run.record is None:  # a run assembled by hand (tests): the settings alone describe it
        described = {"settings": s.to_dict()}
    else:
        described = dataclasses.replace(run.record, settings=s.to_dict(), weights_sha256=None).to_dict()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **described,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "schedule": {"name": "poly", "epoch": run.state.epoch, "initial_lr": s.lr, "exponent": s.poly_exponent,
                     "max_epochs": s.epochs},
        "rng": rng_state(),
        "train_state": {"epoch": run.state.epoch, "ema": run.state.ema, "best_ema": run.state.best_ema,
                        "epochs_since_best": run.state.epochs_since_best, "history": run.state.history,
                        "budget_elapsed": run.state.budget_elapsed, "budget_plan": run.state.budget_plan},
    }


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Put a checkpoint's weights, optimiser, scaler, RNG and epoch state back into ``run``."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    t = ckpt["train_state"]
    run.state = TrainState(epoch=int(t["epoch"]), ema=t["ema"], best_ema=t["best_ema"],
                           epochs_since_best=int(t["epochs_since_best"]), history=list(t["history"]),
                           budget_elapsed=float(t.get("budget_elapsed") or 0.0), budget_plan=t.get("budget_plan"))
    set_rng_state(ckpt["rng"])


class CheckpointCallback(Callback):
    """Writes ``checkpoint_latest.pt`` every epoch, ``checkpoint_best.pt`` when the EMA pseudo Dice
    improves and ``checkpoint_final.pt`` at the end (then removes the latest, as nnU-Net does)."""

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        ckpt = make_checkpoint(run)
        if record.get("improved"):
            save_checkpoint(ckpt, run.run_dir / BEST)
        save_checkpoint(ckpt, run.run_dir / LATEST)

    def on_train_end(self, run: Run) -> None:
        save_checkpoint(make_checkpoint(run), run.run_dir / FINAL)
        (run.run_dir / LATEST).unlink(missing_ok=True)
