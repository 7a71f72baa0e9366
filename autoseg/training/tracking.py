"""Experiment tracking (``train --logger tensorboard|mlflow``) and the long-schedule warning, as trainer
callbacks. ``mlflow``: see :class:`MLflowCallback` (needs the ``mlflow-skinny`` package: ``tracking`` extra).

``tensorboard``: event files in ``<run folder>/tensorboard/`` (``tensorboard --logdir <workdir>/results``):
the run settings as text at the start; per epoch every number of the epoch record (losses, pseudo Dice
per class, its mean and EMA, learning rate, epoch time, data-wait fraction) as scalars under
``train/``/``val/``/``time/``, and the ``progress.png`` plot as an image. Written through PyTorch's
``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package: the ``tracking`` extra).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.core.fileops import atomic_write_bytes
from autoseg.extras import require
from autoseg.training.logging import PROGRESS_PNG
from autoseg.training.trainer import Callback, Run

TENSORBOARD_DIR = "tensorboard"
_GROUPS = {"train_loss": "train/loss", "val_loss": "val/loss", "mean_pseudo_dice": "val/mean_pseudo_dice",
           "ema_pseudo_dice": "val/ema_pseudo_dice", "lr": "train/lr", "epoch_time": "time/epoch_s",
           "data_wait_fraction": "time/data_wait_fraction"}


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of an epoch record under their TensorBoard tags (pseudo Dice per class as
    ``val/pseudo_dice/{k}``, k counting the scored classes or regions from 1)."""
    out = {tag: float(record[key]) for key, tag in _GROUPS.items()
           if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)}
    for k, d in enumerate(record.get("pseudo_dice") or (), start=1):
        out[f"val/pseudo_dice/{k}"] = float(d)
    return {tag: v for tag, v in out.items() if math.isfinite(v)}


class TensorBoardCallback(Callback):
    """Writes settings, per-epoch scalars and the progress plot of a run (see the module docstring)."""

    def __init__(self):
        self.writer = None

    def on_train_start(self, run: Run) -> None:
        tensorboard = require("torch.utils.tensorboard", "tracking", "train --logger tensorboard")
        self.writer = tensorboard.SummaryWriter(log_dir=str(Path(run.run_dir) / TENSORBOARD_DIR))
        settings = json.dumps(run.settings.to_dict(), indent=2, default=str)
        self.writer.add_text("settings", f"```\n{settings}\n```", global_step=run.state.epoch)

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=epoch)
        plot = Path(run.run_dir) / PROGRESS_PNG
        if plot.is_file():
            import matplotlib.image

            image = matplotlib.image.imread(str(plot))[..., :3]
            self.writer.add_image("progress", np.ascontiguousarray(image), global_step=epoch, dataformats="HWC")
        self.writer.flush()

    def on_train_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()


MLFLOW_RUN_ID = "mlflow_run_id.txt"  # in the run folder: a resumed training continues the same MLflow run


class MLflowCallback(Callback):
    """Logs to MLflow's tracking store, which MLflow itself chooses (``MLFLOW_TRACKING_URI``, e.g. a
    tracking server ``http://host:5000``; see MLflow's documentation): experiment = the dataset name,
    run name = ``{arch}__{plans}__{config}/fold_{k}``; the settings and the plan's configuration as
    parameters, the epoch record's numbers as metrics (step = epoch), ``progress.png`` as an artifact
    (replaced every epoch). The MLflow run id is kept in the run folder, so ``--resume`` continues the
    same MLflow run."""

    def __init__(self):
        self.mlflow = None

    def on_train_start(self, run: Run) -> None:
        self.mlflow = require("mlflow", "tracking", "train --logger mlflow")
        run_dir = Path(run.run_dir)
        id_file = run_dir / MLFLOW_RUN_ID
        resumed = id_file.read_text().strip() if id_file.is_file() and run.state.epoch > 0 else None
        model = run.record  # None for a run assembled by hand
        dataset = str((model.dataset.name if model is not None else "") or run_dir.parent.parent.name)
        self.mlflow.set_experiment(dataset)
        active = self.mlflow.start_run(run_id=resumed, run_name=None if resumed else
                                       f"{run_dir.parent.name}/{run_dir.name}")
        if not resumed:
            atomic_write_bytes(id_file, active.info.run_id.encode())
            params = {k: str(v)[:500] for k, v in run.settings.to_dict().items()}
            params.update({"arch": str(model.arch if model else None),
                           "configuration": str(model.configuration if model else None),
                           "fold": str(model.fold if model else None)})
            self.mlflow.log_params(params)

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        self.mlflow.log_metrics(epoch_scalars(record), step=int(record["epoch"]))
        plot = Path(run.run_dir) / PROGRESS_PNG
        if plot.is_file():
            self.mlflow.log_artifact(str(plot))

    def on_train_end(self, run: Run) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()


LOGGERS = {"tensorboard": TensorBoardCallback, "mlflow": MLflowCallback}


def make_logger(name: str) -> Callback:
    """The tracking callback called ``name`` (an unknown name lists the choices)."""
    if name not in LOGGERS:
        raise ValueError(f"--logger {name}: unknown; choose one of {', '.join(LOGGERS)}")
    return LOGGERS[name]()


# --- the warning when a long schedule starts on a CPU ------------------------------------------------

LONG_SCHEDULE_EPOCHS = 100  # warn on the CPU from this many epochs (the default schedule is 1000)
TIMED_STEPS = 5  # steps timed (after the first, which includes start-up) for the estimate


def schedule_estimate(seconds_per_step: float, steps_left: int, val_share: float = 0.1) -> float:
    """Hours the remaining ``steps_left`` training steps take at ``seconds_per_step``, plus
    ``val_share`` for validation (50 validation batches against 250 training steps, forward only)."""
    return seconds_per_step * steps_left * (1 + val_share) / 3600


class CpuScheduleWarning(Callback):
    """On a CPU with a long schedule: after the first few steps, print how long the whole schedule
    would take at the measured step time, and the options that shorten it."""

    def __init__(self, stream=None):
        self.stream = stream
        self.started = None
        self._first = 0
        self.active = False

    def on_train_start(self, run: Run) -> None:
        self.active = (run.device.type == "cpu" and run.settings.time_budget is None  # a budget fits the schedule
                       and run.settings.epochs - run.state.epoch >= LONG_SCHEDULE_EPOCHS)

    def on_batch_end(self, run: Run, epoch: int, step: int, loss) -> None:
        if not self.active:
            return
        if self.started is None:  # the first step includes start-up (workers, allocation): time the next ones
            self.started = time.perf_counter()
            self._first = step
            return
        if step - self._first < TIMED_STEPS:
            return
        self.active = False
        per_step = (time.perf_counter() - self.started) / (step - self._first)
        s = run.settings
        left = (s.epochs - epoch) * s.iters_per_epoch - step
        hours = schedule_estimate(per_step, left)
        print(f"warning: training on the CPU: {per_step:.2f} s per step, so the {s.epochs}-epoch schedule "
              f"({s.iters_per_epoch} steps each) would take about {hours:.0f} h ({hours / 24:.1f} days). Give it the "
              "time you have with --time-budget (e.g. 8h), or shorten it with --epochs (e.g. 50), --iters-per-epoch, "
              "--early-stop PATIENCE, or train on a GPU "
              "(--device cuda); see docs/benchmarks.md", file=self.stream or sys.stderr, flush=True)
