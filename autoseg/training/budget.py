"""Training to a wall-clock budget: fit the number of epochs so that training and the final validation
end within ``--time-budget``, and run the learning-rate schedule over that fitted length.

nnU-Net v2 answers "I have 8 hours" with one trainer subclass per epoch count
(``nnUNetTrainer_250epochs`` ...; nnunetv2/training/nnUNetTrainer/variants/training_length/); here the
run measures itself instead:

1. before the first epoch of a fresh run, a few training steps (forward and backward, no optimiser
   step, so the weights stay as they are) and validation batches are timed; a budget too small for
   one epoch and the final validation is refused with the minimum it needs;
2. after each of the first :data:`MEASURE_EPOCHS` epochs the number of epochs is fitted again from
   the last epoch's time (the first epoch also pays for start-up): ``epochs = done + floor((budget -
   elapsed - final validation - reserve) / epoch time)``, at most the run's ``--epochs``;
3. later epochs keep that plan unless the projected end passes the budget (a slower machine, a
   resumed run elsewhere): then it is fitted again, downwards; and when a plan cut back by a slow
   epoch (another job on the machine for a while) has room again at the median time of the recent
   epochs, it is fitted again upwards, so one slow epoch does not cost the run its last tenth.

A fresh run from scratch whose optimiser was left to the budget (``optimizer="auto"``: neither
``--optimizer`` nor ``--lr`` given, an architecture without its own recipe) picks it once, from the plan
fitted at the calibration: nnU-Net's SGD (1e-2, momentum 0.99), or AdamW at 1e-3 when that plan
holds fewer than :data:`SHORT_SCHEDULE_ITERATIONS` training iterations. nnU-Net's SGD is tuned for
its 250,000 iterations; in the first few hundred it leaves the all-background start late, and a
short budget has no iterations to spare for that (docs/benchmarks.md, "Short schedules": on the toy
CT data SGD had not found the low-contrast organ after 180 iterations, AdamW found it after 30; on
Hippocampus at batch 7 AdamW found both classes within 20 iterations).

The fitted number replaces ``TrainSettings.epochs``, so the poly learning rate, the logs, the
progress bar and the checkpoints all follow it; the plan and the time used so far are stored in each
checkpoint, so ``--resume`` keeps to what is left of the budget. The final validation's time is
estimated from the measured time per validation patch times the number of sliding-window patches
(times the mirrorings) of the fold's validation cases.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from autoseg.training import ddp
from autoseg.training.durations import BudgetError, format_duration
from autoseg.training.trainer import autocast, make_optimizer

MEASURE_EPOCHS = 3  # epochs after which the plan is fitted again from the last epoch's time
RESERVE = 0.03  # share of the budget kept back for what the estimates miss (checkpoints, start-up)
OVERRUN = 1.0  # later epochs refit when the projected end passes the budget by more than this factor
RECENT_EPOCHS = 5  # epochs whose median time says whether a plan cut back has room again
UPWARD_SLACK = 1.1  # ... fitted up at this multiple of that median, so ordinary jitter does not cut it again
CALIBRATION_STEPS = 2  # timed steps (after one untimed warm-up step) before a fresh run's first epoch
# The final validation also resamples, exports and scores each case, and runs its windows one at a
# time rather than in batches: its estimate is the windows' share of the measured validation time
# times this margin (an allowance, not a measured ratio: the log gives the estimate and the actual
# time of every budgeted run's final validation, so it can be checked).
FINAL_VALIDATION_FACTOR = 1.6
# optimizer "auto": a schedule shorter than this many training iterations trains with AdamW at
# SHORT_SCHEDULE_LR (poly decay as always), a longer one with nnU-Net's SGD; see the module docstring
SHORT_SCHEDULE_ITERATIONS = 1000
SHORT_SCHEDULE_LR = 1e-3

def fit_epochs(budget: float, elapsed: float, done: int, epoch_seconds: float, final_validation: float,
               cap: int) -> int:
    """Epochs (counting the ``done`` ones) that end, with the final validation, within ``budget``
    minus the reserve; at least ``done``, at most ``cap``."""
    available = budget * (1 - RESERVE) - elapsed - final_validation
    more = math.floor(available / max(epoch_seconds, 1e-9)) if available > 0 else 0
    return max(done, min(cap, done + more))


@dataclass(frozen=True)
class BudgetPlan:
    """The fitted plan, as stored in checkpoints and logs (seconds)."""

    budget: float
    epochs: int
    epoch_seconds: float
    final_validation: float
    elapsed: float
    fitted_after: int  # completed epochs when it was fitted (0: from the calibration)
    cap: int  # the most epochs the run may train (its --epochs)
    optimizer: str = ""  # what optimizer "auto" picked at the start, and why ("" when it was chosen otherwise)

    def describe(self) -> str:
        return (f"time budget {format_duration(self.budget)}: {self.epochs} epochs of "
                f"{format_duration(self.epoch_seconds)} + final validation ~{format_duration(self.final_validation)} "
                f"(fitted after {self.fitted_after} epoch(s), {format_duration(self.elapsed)} used)"
                + (f"; {self.optimizer}" if self.optimizer else ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TimeBudget:
    """Fits ``run.settings.epochs`` to the budget as the run goes (see the module docstring).

    ``final_windows``: network evaluations of the final validation (sliding-window patches of the
    validation cases times the mirrorings); ``cap``: the most epochs the run may train;
    ``batch_size``: patches per validation batch on each rank."""

    def __init__(self, seconds: float, final_windows: int, cap: int, batch_size: int, clock=time.monotonic):
        self.seconds = float(seconds)
        self.final_windows = int(final_windows)
        self.cap = int(cap)
        self.batch_size = max(1, int(batch_size))
        self.clock = clock
        self.session_start = clock()  # time before this session (an interrupted run's) is in state.elapsed
        self.elapsed_before = 0.0
        self.per_patch: float | None = None
        self.mark = self.session_start  # end of the last epoch (or the start): an epoch's time is the clock's step
        self.epoch_times: list[float] = []  # this session's epochs after its first (which pays for start-up)
        self.session_epochs = 0
        self.optimizer_choice = ""  # BudgetPlan.optimizer

    def elapsed(self) -> float:
        return self.elapsed_before + self.clock() - self.session_start

    def final_validation(self) -> float:
        return (self.per_patch or 0.0) * self.final_windows * FINAL_VALIDATION_FACTOR

    def start(self, run, val_batches) -> None:
        """Before the first epoch of this session: take the time used so far from the run's state,
        and on a fresh run time a few steps, refuse a budget too small, and fit a first plan."""
        self.elapsed_before = float(run.state.budget_elapsed or 0.0)
        self.optimizer_choice = (run.state.budget_plan or {}).get("optimizer", "")
        self.mark = self.clock()
        if run.state.history:
            last = run.state.history[-1]
            self._measure_patch(last.get("val_time"), run.settings.val_iters)
            (elapsed,) = _mean_over_ranks(run, self.elapsed())
            self._refit(run, float(last["epoch_time"]), run.state.epoch, elapsed)
            return
        step, val_batch = calibrate(run, val_batches)
        self._measure_patch(val_batch, 1)
        epoch = step * run.settings.iters_per_epoch + val_batch * run.settings.val_iters
        (elapsed,) = _mean_over_ranks(run, self.elapsed())
        needed = (elapsed + epoch + self.final_validation()) / (1 - RESERVE)
        if needed > self.seconds:
            raise BudgetError(
                f"--time-budget {format_duration(self.seconds)} is too small for this run: one epoch of "
                f"{run.settings.iters_per_epoch} iterations and {run.settings.val_iters} validation batches takes "
                f"about {format_duration(epoch)} here and the final validation about "
                f"{format_duration(self.final_validation())}; give at least --time-budget "
                f"{format_duration(math.ceil(needed * 1.1))}, or fewer --iters-per-epoch / --val-iters")
        self._refit(run, epoch, 0, elapsed)
        if run.settings.optimizer == "auto":
            self._choose_optimizer(run)
            self._refit(run, epoch, 0, elapsed)  # the plan again, now naming the choice

    def _choose_optimizer(self, run) -> None:
        """Settle ``optimizer="auto"`` from the fitted plan (module docstring); no step was taken yet,
        so the optimiser is simply built again."""
        iterations = run.settings.epochs * run.settings.iters_per_epoch
        if iterations < SHORT_SCHEDULE_ITERATIONS:
            run.settings = dataclasses.replace(run.settings, optimizer="adamw", lr=SHORT_SCHEDULE_LR)
            self.optimizer_choice = (f"AdamW lr {SHORT_SCHEDULE_LR:g}, picked for a short schedule (first plan: "
                                     f"{iterations} iterations < {SHORT_SCHEDULE_ITERATIONS})")
        else:
            run.settings = dataclasses.replace(run.settings, optimizer="sgd")
            self.optimizer_choice = f"SGD lr {run.settings.lr:g} (first plan: {iterations} iterations)"
        run.optimizer = make_optimizer(run.model, run.settings)

    def after_epoch(self, run, record: dict[str, Any]) -> None:
        """Store the time used; fit the plan again after the first epochs, or when it would overrun."""
        now = self.clock()
        # every rank fits the same plan from the ranks' mean times
        epoch_time, val_time, elapsed = _mean_over_ranks(run, now - self.mark, record.get("val_time", 0.0),
                                                         self.elapsed())
        self.mark = now
        run.state.budget_elapsed = elapsed
        record["budget_elapsed"] = elapsed
        self._measure_patch(val_time, run.settings.val_iters)
        done = run.state.epoch
        if self.session_epochs > 0:
            self.epoch_times.append(epoch_time)
        self.session_epochs += 1
        projected = elapsed + (run.settings.epochs - done) * epoch_time + self.final_validation()
        before = run.settings.epochs
        if done <= MEASURE_EPOCHS or projected > self.seconds * (1 - RESERVE) * OVERRUN:
            self._refit(run, epoch_time, done, elapsed)
        elif len(self.epoch_times) >= MEASURE_EPOCHS:
            typical = statistics.median(self.epoch_times[-RECENT_EPOCHS:]) * UPWARD_SLACK
            if fit_epochs(self.seconds, elapsed, done, typical, self.final_validation(), self.cap) > before:
                self._refit(run, typical, done, elapsed)  # room again after a slow epoch
        if run.settings.epochs != before or done <= 1:
            record["budget_plan"] = run.state.budget_plan

    def _measure_patch(self, val_seconds: float | None, batches: int) -> None:
        if val_seconds:
            self.per_patch = float(val_seconds) / (batches * self.batch_size)

    def _refit(self, run, epoch_seconds: float, done: int, elapsed: float) -> None:
        epochs = max(1, fit_epochs(self.seconds, elapsed, done, epoch_seconds, self.final_validation(), self.cap))
        plan = BudgetPlan(self.seconds, epochs, epoch_seconds, self.final_validation(), elapsed, done, self.cap,
                          self.optimizer_choice)
        run.state.budget_plan = plan.to_dict()
        run.settings = dataclasses.replace(run.settings, epochs=epochs)


def _mean_over_ranks(run, *values: float) -> list[float]:
    """The ranks' mean of each value, so every rank fits the same plan."""
    total = ddp.all_reduce_sum(torch.tensor([float(v) for v in values], dtype=torch.float64, device=run.device),
                               run.dist)
    return [float(v) / run.dist.world_size for v in total.cpu()]


def calibrate(run, val_batches) -> tuple[float, float]:
    """Seconds per training step and per validation batch, from :data:`CALIBRATION_STEPS` timed
    forward + backward passes (gradients dropped, no optimiser step: the weights do not change) and
    validation forwards on the first validation batch, after one untimed warm-up each."""
    image, target = next(iter(val_batches(0)))
    image, target = image.to(run.device), target.to(run.device)
    times = []
    run.network.train()
    for i in range(1 + CALIBRATION_STEPS):
        t0 = time.perf_counter()
        with autocast(run.device, run.amp_dtype):
            loss = run.loss_fn(run.network(image), target)
        loss.backward()
        _sync(run.device)
        times.append(time.perf_counter() - t0)
    run.optimizer.zero_grad(set_to_none=True)
    step = sum(times[1:]) / CALIBRATION_STEPS
    times = []
    run.network.eval()
    with torch.no_grad():
        for i in range(1 + CALIBRATION_STEPS):
            t0 = time.perf_counter()
            with autocast(run.device, run.amp_dtype):
                run.network(image)
            _sync(run.device)
            times.append(time.perf_counter() - t0)
    val = sum(times[1:]) / CALIBRATION_STEPS
    step, val = _mean_over_ranks(run, step, val)
    return step, val


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
