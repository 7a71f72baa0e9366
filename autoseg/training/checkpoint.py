"""Self-describing checkpoints: weights plus everything needed to resume, predict or fine-tune.

A checkpoint is a plain dict of tensors and primitives, readable with
``torch.load(weights_only=True)`` (no pickled objects). Keys:

- ``format`` / ``format_version`` / ``autoseg_version``: what wrote it;
- ``model``, ``optimizer``, ``scaler`` (None without AMP scaling): state dicts;
- ``schedule``: ``{"name": "poly", "epoch": completed epochs, "initial_lr", "exponent", "max_epochs"}``;
- ``rng``: python / numpy / torch / cuda generator states (numbers and byte tensors);
- ``train_state``: EMA and best EMA pseudo Dice, epochs since best, per-epoch history;
- ``settings`` (TrainSettings), ``plans`` (the plans.json dict), ``configuration``, ``arch``, ``fold``;
- ``dataset``: name, labels, channel names, regions_class_order, ignore label (from dataset.json).

Files are written to a temporary name and renamed: a killed run never leaves half a checkpoint.
The run folder holds ``checkpoint_latest.pt`` (every epoch), ``checkpoint_best.pt`` (when the EMA
pseudo Dice improves) and ``checkpoint_final.pt`` (end of training; the latest is then removed).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg import __version__
from autoseg.artifacts import atomic_write_with
from autoseg.training.trainer import Callback, Run, TrainState

FORMAT = "autoseg-checkpoint"
FORMAT_VERSION = 1
LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not one this autoseg can read."""


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
    """The checkpoint dict of ``run`` at its current epoch."""
    s = run.settings
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "autoseg_version": __version__,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "schedule": {"name": "poly", "epoch": run.state.epoch, "initial_lr": s.lr, "exponent": s.poly_exponent,
                     "max_epochs": s.epochs},
        "rng": rng_state(),
        "train_state": {"epoch": run.state.epoch, "ema": run.state.ema, "best_ema": run.state.best_ema,
                        "epochs_since_best": run.state.epochs_since_best, "history": run.state.history,
                        "budget_elapsed": run.state.budget_elapsed, "budget_plan": run.state.budget_plan},
        "settings": s.to_dict(),
        **run.meta,
    }


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    Weights holding NaN or inf are refused (:class:`NonFiniteWeightsError`), so a diverged run can never
    leave them behind as ``checkpoint_best.pt`` or ``checkpoint_final.pt``."""
    bad = nonfinite_tensors(checkpoint.get("model") or {})
    if bad:
        raise NonFiniteWeightsError(f"{path}: not written: {len(bad)} weight tensor(s) hold NaN or infinite values "
                                    f"(e.g. {bad[0]}); training diverged, the checkpoints already there are kept")
    return atomic_write_with(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read and validate a checkpoint (``torch.load(weights_only=True)``: tensors and primitives only).

    ``mmap``: map the file instead of reading it; tensors are read from it when first used, so a
    caller that needs only the weights never reads the optimiser state (prediction: 5 folds load in
    0.2 s instead of 0.5-0.65 s). Safe because checkpoints are only ever replaced by renaming."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        if mmap:  # a file system that cannot map files, or a damaged file: read it plainly (says which)
            return load_checkpoint(path, map_location)
        raise CheckpointError(f"{path}: cannot be read as an autoseg checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); it may be truncated or foreign") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an autoseg checkpoint (no format '{FORMAT}'); "
                              "nnU-Net .pth files cannot be loaded directly")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ckpt.get('format_version')}, this autoseg "
                              f"({__version__}) reads version {FORMAT_VERSION}; use the autoseg version that "
                              f"wrote it ({ckpt.get('autoseg_version')}) or retrain")
    return ckpt


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
