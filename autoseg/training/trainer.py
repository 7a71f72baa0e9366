"""The training loop: SGD + poly learning rate over epochs of random patches, pseudo-Dice validation.

Read :func:`fit` top to bottom: per epoch, set the learning rate, run ``iters_per_epoch`` training
steps, run ``val_iters`` validation batches, update the moving average (EMA) of the pseudo Dice, hand
the epoch record to the callbacks. Behaviour varies through :class:`TrainSettings` and
:class:`Callback` hooks (logging, plots, checkpoints, progress bar), never through subclasses.

Batches ``(image (B, C, *patch) float, target (B, 1, *patch) int labels)`` come from two factories:
``train_batches(start_iteration)`` returns an endless iterator whose batches are a pure function of
(seed, rank, batch index), so a resumed run asks for the stream from where it stopped and sees the
batches it would have seen; ``val_batches(epoch)`` returns the epoch's validation batches (at least
``val_iters`` of them; the data loader gives the same fixed set every epoch).
Defaults follow nnU-Net v2 (``nnUNetTrainer.__init__``, nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoseg.core.checkpoint import ModelRecord
from autoseg.core.runtime import AMP_CHOICES, DEVICE_CHOICES, autocast
from autoseg.training import ddp
from autoseg.training.losses import labels_to_regions, one_hot
from autoseg.training.schedule import poly_lr
from autoseg.training.stopping import NEVER, StopSignals, TrainingStopped, pending_stop

EMA_OLD = 0.9  # nnU-Net logger: ema = 0.9 * old + 0.1 * new
OPTIMIZER_CHOICES = ("sgd", "adamw", "auto")  # auto: a --time-budget run picks one (training.budget)
Batch = tuple[torch.Tensor, torch.Tensor]
BatchFactory = Callable[[int], Iterator[Batch]]
ValFactory = Callable[[int], Iterable[Batch]]


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run's numbers depend on besides the plan (stored in every checkpoint)."""

    epochs: int = 1000  # nnU-Net: 1000 epochs
    iters_per_epoch: int = 250  # nnU-Net: 250 training iterations per epoch
    val_iters: int = 50  # nnU-Net: 50 validation batches per epoch for the pseudo Dice
    optimizer: str = "sgd"  # sgd (nnU-Net) | adamw; an architecture may start from another (Architecture.training);
    # auto (budget runs only, until their first epoch): training.budget picks sgd or adamw from the fitted length
    lr: float = 1e-2  # nnU-Net's SGD defaults from here on (momentum and nesterov: SGD only)
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    grad_clip: float = 12.0  # gradient norm clip
    poly_exponent: float = 0.9
    early_stop: int | None = None  # stop after this many epochs without a better EMA pseudo Dice
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 12345
    amp: str = "auto"  # auto: fp16 + GradScaler on CUDA, bf16 on CPUs with bf16 support, else fp32
    compile: bool = False  # torch.compile the network
    num_workers: int | None = None  # augmentation workers per rank; None: one per spare CPU core, at most 8
    save_probabilities: bool = False  # final validation also writes .npz probabilities
    batch_size: int | None = None  # None: the plan's (global, split over ranks)
    oversample_foreground: float = 0.33  # share of each batch forced to hold foreground
    deep_supervision: bool = True
    val_mirroring: bool = True  # mirroring test-time augmentation in the final validation
    time_budget: float | None = None  # seconds for training + final validation; epochs is then fitted to it

    def __post_init__(self):
        problems = []  # named as `autoseg train` options, where the values come from
        for name in ("epochs", "iters_per_epoch", "val_iters"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.early_stop is not None and self.early_stop < 1:
            problems.append(f"--early-stop (patience in epochs) must be at least 1, got {self.early_stop}")
        if self.device not in DEVICE_CHOICES:
            problems.append(f"--device '{self.device}' is not one of {', '.join(DEVICE_CHOICES)}")
        if self.optimizer not in OPTIMIZER_CHOICES:
            problems.append(f"--optimizer '{self.optimizer}' is not one of {', '.join(OPTIMIZER_CHOICES)}")
        if not 0 <= self.lr < math.inf:  # 0 is allowed: nothing learns (tests, frozen runs)
            problems.append(f"--lr must be a non-negative number, got {self.lr}")
        if self.amp not in AMP_CHOICES:
            problems.append(f"--amp '{self.amp}' is not one of {', '.join(AMP_CHOICES)}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append("batch_size must be at least 1")
        if self.time_budget is not None and not self.time_budget > 0:
            problems.append("time_budget must be a positive number of seconds")
        if not 0 <= self.oversample_foreground <= 1:
            problems.append("oversample_foreground must be within 0..1")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainState:
    """What changes from epoch to epoch besides weights and optimiser (all primitives)."""

    epoch: int = 0  # completed epochs
    ema: float | None = None
    best_ema: float | None = None
    epochs_since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    budget_elapsed: float = 0.0  # --time-budget: seconds used by the run so far (all sessions)
    budget_plan: dict[str, Any] | None = None  # --time-budget: the fitted plan (training.budget.BudgetPlan)


@dataclass
class Targets:
    """How labels map to network outputs: ``num_outputs`` softmax classes, or sigmoid ``regions``."""

    num_outputs: int
    regions: tuple[tuple[int, ...], ...] | None = None
    ignore_label: int | None = None

    @property
    def scored(self) -> int:
        """Number of scored channels: regions, or classes without background."""
        return self.num_outputs if self.regions else self.num_outputs - 1


@dataclass
class Run:
    """A training run in memory: what the loop updates and what callbacks read."""

    model: nn.Module  # the bare network (weights are saved from here)
    network: nn.Module  # what runs the batches: model, compiled and/or DistributedDataParallel
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    settings: TrainSettings
    targets: Targets
    device: torch.device
    amp_dtype: torch.dtype | None
    run_dir: Path
    dist: ddp.DistContext = ddp.SINGLE
    state: TrainState = field(default_factory=TrainState)
    record: ModelRecord | None = None  # what the model is (plans, dataset, fold...), for checkpoints
    stop_requested: bool = False  # ends training after this epoch (callbacks run on rank 0 only, so
    # a callback may set it in single-process runs; early stopping sets it on every rank alike)
    budget: Any = None  # training.budget.TimeBudget: fits settings.epochs to --time-budget as the run goes
    stop: StopSignals = NEVER  # SIGTERM/SIGINT recorded while training (autoseg.training.stopping)


class Callback:
    """No-op hooks; subclass and override what you need. Called on rank 0 only."""

    def on_train_start(self, run: Run) -> None: ...

    def on_epoch_start(self, run: Run, epoch: int) -> None: ...

    def on_batch_end(self, run: Run, epoch: int, step: int, loss: torch.Tensor) -> None: ...

    def on_validation_end(self, run: Run, epoch: int, pseudo_dice: list[float]) -> None: ...

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None: ...

    def on_train_end(self, run: Run) -> None: ...


def fit(run: Run, train_batches: BatchFactory, val_batches: ValFactory,
        callbacks: Sequence[Callback] = ()) -> Run:
    """Train from ``run.state.epoch`` to ``settings.epochs`` (or an early stop). With a time budget
    (``run.budget``) the number of epochs is fitted before and after the first epochs, so
    ``run.settings`` is read afresh every epoch."""
    hooks = list(callbacks) if run.dist.is_main else []
    if run.budget is not None:
        run.budget.start(run, val_batches)
    for cb in hooks:
        cb.on_train_start(run)
    train_iter = train_batches(run.state.epoch * run.settings.iters_per_epoch)
    run.stop.deferred = True  # SIGTERM/SIGINT now only stop the loop at its next check_stop
    try:
        while run.state.epoch < run.settings.epochs and not run.stop_requested:
            check_stop(run)  # the finished epochs are saved: stop here rather than start another
            s = run.settings
            epoch = run.state.epoch
            started = time.perf_counter()
            for group in run.optimizer.param_groups:
                group["lr"] = poly_lr(epoch, s.epochs, s.lr, s.poly_exponent)
            for cb in hooks:
                cb.on_epoch_start(run, epoch)
            lr = run.optimizer.param_groups[0]["lr"]  # as trained: a callback may have set its own schedule
            train_loss, wait_fraction = train_epoch(run, train_iter, epoch, hooks)
            check_finite_loss(train_loss, "training", epoch)
            val_started = time.perf_counter()
            val_loss, dice = validate_epoch(run, val_batches(epoch))
            val_time = time.perf_counter() - val_started
            check_finite_loss(val_loss, "validation", epoch)
            for cb in hooks:
                cb.on_validation_end(run, epoch, dice)
            record = finish_epoch(run.state, epoch, train_loss, val_loss, dice, lr,
                                  time.perf_counter() - started, wait_fraction)
            record["val_time"] = val_time
            if s.early_stop is not None and run.state.epochs_since_best >= s.early_stop:
                run.stop_requested = True
                record["early_stopped"] = True
            if run.budget is not None:
                run.budget.after_epoch(run, record)
            for cb in hooks:
                cb.on_epoch_end(run, record)
        check_stop(run)
    finally:
        run.stop.deferred = False
        close = getattr(train_iter, "close", None)
        if close is not None:
            close()
    for cb in hooks:
        cb.on_train_end(run)
    return run


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before saving anything of that epoch."""

    def __init__(self, which: str, epoch: int, loss: float):
        self.which, self.epoch, self.loss = which, epoch, loss
        super().__init__(f"the {which} loss of epoch {epoch} is {loss} (not a finite number), so training stopped "
                         "and nothing of this epoch was saved")


def check_finite_loss(loss: float, which: str, epoch: int) -> None:
    """Raise :class:`NonFiniteLossError` for a NaN/inf epoch loss. Checked once per epoch on the mean over
    all steps and ranks (one NaN step makes it NaN; every rank sees the same all-reduced value, so all
    stop together), before the epoch's checkpoint is written: the weights of a diverged epoch are
    never saved, the previous epoch's checkpoint stays the latest."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(which, epoch, loss)


def train_epoch(run: Run, batches: Iterator[Batch], epoch: int, hooks: Sequence[Callback]) -> tuple[float, float]:
    """``iters_per_epoch`` SGD steps. Returns the mean loss (over ranks) and the fraction of the
    epoch's time this rank spent waiting for batches."""
    run.network.train()
    loss_sum = torch.zeros((), device=run.device)
    wait = 0.0
    started = time.perf_counter()
    for step in range(run.settings.iters_per_epoch):
        t0 = time.perf_counter()
        image, target = next(batches)
        wait += time.perf_counter() - t0
        image = image.to(run.device, non_blocking=True)
        target = target.to(run.device, non_blocking=True)
        loss = train_step(run, image, target)
        loss_sum += loss
        for cb in hooks:
            cb.on_batch_end(run, epoch, step, loss)
        check_stop(run)  # a step is never cut in half; the unfinished epoch is dropped
    elapsed = time.perf_counter() - started
    totals = ddp.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(run.settings.iters_per_epoch),
                                                                    device=run.device)]), run.dist)
    return float(totals[0] / totals[1]), wait / max(elapsed, 1e-9)


def check_stop(run: Run) -> None:
    """Raise :class:`~autoseg.training.stopping.TrainingStopped` on every rank alike when a rank got
    SIGTERM/SIGINT; the checkpoint of the last finished epoch is the one to resume from."""
    signum = pending_stop(run.stop, run.dist, run.device)
    if signum is not None:
        raise TrainingStopped(signum, run.state.epoch, run.run_dir)


def train_step(run: Run, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One optimiser step (mixed precision and gradient clipping as the run says); the detached loss."""
    run.optimizer.zero_grad(set_to_none=True)
    with autocast(run.device, run.amp_dtype):
        loss = run.loss_fn(run.network(image), target)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip)
        run.optimizer.step()
    return loss.detach()


@torch.no_grad()
def validate_epoch(run: Run, batches: Iterable[Batch]) -> tuple[float, list[float]]:
    """``val_iters`` batches in eval mode: mean loss and the pseudo Dice per scored channel
    (TP/FP/FN summed over all batches and ranks before dividing; NaN where a class never occurs)."""
    run.network.eval()
    counts = torch.zeros((3, run.targets.scored), device=run.device, dtype=torch.float64)
    loss_sum = torch.zeros((), device=run.device)
    batches = iter(batches)
    for _ in range(run.settings.val_iters):
        image, target = next(batches)
        image = image.to(run.device, non_blocking=True)
        target = target.to(run.device, non_blocking=True)
        with autocast(run.device, run.amp_dtype):
            logits = run.network(image)
            loss_sum += run.loss_fn(logits, target).float()
        counts += confusion_counts(logits.float(), target, run.targets)
        check_stop(run)
    ddp.all_reduce_sum(counts, run.dist)
    n = torch.tensor(float(run.settings.val_iters), device=run.device)
    mean_loss = ddp.all_reduce_sum(torch.stack([loss_sum, n]), run.dist)
    tp, fp, fn = counts.cpu().tolist()
    dice = [2 * a / (2 * a + b + c) if (2 * a + b + c) > 0 else math.nan for a, b, c in zip(tp, fp, fn)]
    return float(mean_loss[0] / mean_loss[1]), dice


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, targets: Targets) -> torch.Tensor:
    """``(3, scored)`` TP, FP, FN per scored channel of one batch (ignore-label voxels left out)."""
    if targets.regions:
        pred = (logits > 0).float()
        truth = labels_to_regions(target, targets.regions)
    else:
        pred = one_hot(logits.argmax(1, keepdim=True), targets.num_outputs)[:, 1:]
        truth = one_hot(target, targets.num_outputs)[:, 1:]
    if targets.ignore_label is not None:
        keep = (target != targets.ignore_label).float()
        pred, truth = pred * keep, truth * keep
    axes = [0] + list(range(2, pred.ndim))
    tp = (pred * truth).sum(axes)
    return torch.stack([tp, pred.sum(axes) - tp, truth.sum(axes) - tp]).double()


def finish_epoch(state: TrainState, epoch: int, train_loss: float, val_loss: float, dice: list[float],
                 lr: float, epoch_time: float, wait_fraction: float) -> dict[str, Any]:
    """Update the EMA pseudo Dice and the best-so-far; append and return the epoch's record."""
    present = [d for d in dice if not math.isnan(d)]
    mean_dice = sum(present) / len(present) if present else math.nan
    if not math.isnan(mean_dice):
        state.ema = mean_dice if state.ema is None else EMA_OLD * state.ema + (1 - EMA_OLD) * mean_dice
    improved = state.ema is not None and (state.best_ema is None or state.ema > state.best_ema)
    if improved:
        state.best_ema = state.ema
        state.epochs_since_best = 0
    else:
        state.epochs_since_best += 1
    record = {
        "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": dice,
        "mean_pseudo_dice": mean_dice, "ema_pseudo_dice": state.ema, "lr": lr, "epoch_time": epoch_time,
        "data_wait_fraction": wait_fraction, "improved": improved, "time": time.time(),
    }
    state.history.append(record)
    state.epoch = epoch + 1
    return record


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """The run's optimiser; ``auto`` builds SGD, which a time budget replaces before the first step
    when it picks AdamW (:meth:`autoseg.training.budget.TimeBudget.start`)."""
    if s.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,
                           weight_decay=s.weight_decay)
