"""Training logs in the run folder: ``log.jsonl``, ``training_log.txt``, ``progress.png``, a progress bar.

- ``log.jsonl``: one JSON object per epoch (train/val loss, pseudo Dice per class, its EMA, learning
  rate, epoch time, fraction of time waiting for data). On resume it is rewritten from the
  checkpoint's history, so epochs after the checkpoint (lost to the interruption) disappear.
- ``training_log.txt``: the same, for people, plus start/resume lines.
- ``progress.png``: loss and pseudo Dice (with EMA), learning rate, epoch time; redrawn atomically
  every epoch with matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

from autoseg.core.fileops import atomic_write_bytes
from autoseg.progress import _make_progress
from autoseg.training.budget import BudgetPlan
from autoseg.training.trainer import Callback, Run

LOG_JSONL, LOG_TXT, PROGRESS_PNG = "log.jsonl", "training_log.txt", "progress.png"


def _json_line(record: dict[str, Any]) -> str:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    clean["pseudo_dice"] = [None if isinstance(d, float) and math.isnan(d) else d for d in record["pseudo_dice"]]
    return json.dumps(clean) + "\n"


def _fmt(v: float | None, digits: int = 4) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def describe_epoch(record: dict[str, Any], epochs: int) -> str:
    """One human-readable line for an epoch record."""
    dice = ", ".join(_fmt(d) for d in record["pseudo_dice"])
    return (f"epoch {record['epoch'] + 1}/{epochs}: train loss {_fmt(record['train_loss'])}, "
            f"val loss {_fmt(record['val_loss'])}, pseudo Dice [{dice}], EMA {_fmt(record['ema_pseudo_dice'])}"
            f"{' (best)' if record.get('improved') else ''}, lr {record['lr']:.2e}, "
            f"{record['epoch_time']:.1f} s, data wait {100 * record['data_wait_fraction']:.0f}%")


def plot_progress(history: list[dict[str, Any]], path: Path) -> None:
    """Draw loss + pseudo Dice, learning rate and epoch time over epochs into ``path`` (PNG, atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] + 1 for r in history]
    fig = Figure(figsize=(10, 11))
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_time = fig.subplots(3, 1)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "b-", label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "r-", label="val loss")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    nan = float("nan")
    ax_dice.plot(epochs, [nan if r["mean_pseudo_dice"] is None else r["mean_pseudo_dice"] for r in history],
                 "g:", label="pseudo Dice")
    ax_dice.plot(epochs, [nan if r["ema_pseudo_dice"] is None else r["ema_pseudo_dice"] for r in history],
                 "g-", label="pseudo Dice (EMA)")
    ax_dice.set_ylabel("pseudo Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax_loss.get_legend_handles_labels()[0] + ax_dice.get_legend_handles_labels()[0]
    ax_loss.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax_lr.plot(epochs, [r["lr"] for r in history], "k-")
    ax_lr.set_ylabel("learning rate")
    ax_time.plot(epochs, [r["epoch_time"] for r in history], "k-", label="epoch")
    ax_time.plot(epochs, [r["epoch_time"] * r["data_wait_fraction"] for r in history], "k:",
                 label="waiting for data (train)")
    ax_time.set_ylabel("seconds")
    ax_time.set_xlabel("epoch")
    ax_time.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(Path(path), buf.getvalue())


def log_line(run_dir: Path, line: str) -> None:
    """Append a time-stamped line to the run's text log."""
    with open(run_dir / LOG_TXT, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")


class LogCallback(Callback):
    """Writes the three log files of the run folder (rank 0 only, like every callback)."""

    def __init__(self, plot: bool = True):
        self.plot = plot

    def _text(self, run: Run, line: str) -> None:
        log_line(run.run_dir, line)

    def on_train_start(self, run: Run) -> None:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        history = run.state.history
        atomic_write_bytes(run.run_dir / LOG_JSONL, "".join(_json_line(r) for r in history).encode())
        what = f"resuming after epoch {run.state.epoch}" if run.state.epoch else "starting"
        s = run.settings
        r = run.record
        self._text(run, f"{what}: {r.arch if r else None} {r.configuration if r else None} fold "
                        f"{r.fold if r else None} on {run.device}"
                        f"{f' ({run.amp_dtype})'.replace('torch.', '') if run.amp_dtype else ' (fp32)'}, "
                        f"{s.epochs} epochs x {s.iters_per_epoch} iterations, "
                        f"{run.dist.world_size} process(es)")
        if run.state.budget_plan:
            self._text(run, BudgetPlan(**run.state.budget_plan).describe())

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        with open(run.run_dir / LOG_JSONL, "a") as f:
            f.write(_json_line(record))
        self._text(run, describe_epoch(record, run.settings.epochs))
        if record.get("budget_plan"):
            self._text(run, BudgetPlan(**record["budget_plan"]).describe())
        if record.get("early_stopped"):
            self._text(run, f"early stop: no better EMA pseudo Dice for {run.settings.early_stop} epochs")
        if self.plot:
            plot_progress(run.state.history, run.run_dir / PROGRESS_PNG)

    def on_train_end(self, run: Run) -> None:
        self._text(run, f"training finished after {run.state.epoch} epochs; best EMA pseudo Dice "
                        f"{_fmt(run.state.best_ema)}")


class ProgressBarCallback(Callback):
    """A rich progress bar over the iterations of each epoch, with the last epoch's summary."""

    def __init__(self):
        self._progress = None
        self._task = None

    def on_train_start(self, run: Run) -> None:
        self._progress = _make_progress()
        self._progress.start()
        if run.state.budget_plan:
            self._progress.console.print(BudgetPlan(**run.state.budget_plan).describe())

    def on_epoch_start(self, run: Run, epoch: int) -> None:
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{run.settings.epochs}",
                                             total=run.settings.iters_per_epoch)

    def on_batch_end(self, run: Run, epoch: int, step: int, loss) -> None:
        self._progress.advance(self._task)

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        self._progress.remove_task(self._task)
        self._progress.console.print(describe_epoch(record, run.settings.epochs))
        if record.get("budget_plan"):
            self._progress.console.print(BudgetPlan(**record["budget_plan"]).describe())

    def on_train_end(self, run: Run) -> None:
        if self._progress is not None:
            self._progress.stop()
