"""nnU-Net v2 trainer for benchmarks/train_vs_nnunet.py (runs in nnU-Net's own virtual environment).

``benchmarks/train_vs_nnunet.py`` copies this file into the installed ``nnunetv2`` package as
``nnunetv2/training/nnUNetTrainer/nnUNetTrainer_Budget.py`` so that
``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainer_Budget -device cpu`` finds it. It imports
nothing beyond nnU-Net's base trainer (the shipped variants pull timm/torchvision, which do not import
in the benchmark's environment).

Everything that differs from ``nnUNetTrainer`` comes from environment variables, unset = nnU-Net's value:

- ``NNUNET_BUDGET_EPOCHS``, ``NNUNET_BUDGET_ITERS``, ``NNUNET_BUDGET_VAL_ITERS``: epochs, training
  iterations per epoch, validation batches per epoch (the poly learning rate decays over the epochs);
- ``NNUNET_BUDGET_BATCH``: batch size (replaces the plan's);
- ``NNUNET_BUDGET_THREADS``: ``torch.set_num_threads`` (nnUNetv2_train sets the CPU count on ``-device cpu``);
- ``NNUNET_BUDGET_MINUTES``: wall-clock training budget T. The learning rate follows nnU-Net's poly
  decay over time instead of epochs, ``1e-2 * (1 - t / T) ** 0.9`` set at each epoch start (t: seconds
  since training started), and training ends after the epoch at whose end ``t + epoch_time / 2 >= T``
  (the end closest to T); the final validation still runs. The same rule drives autoseg's side;
- ``NNUNET_BUDGET_TIMING``: JSON file receiving the ``time.perf_counter()`` after every training step
  (``step_times``) and the CPU seconds used so far by this process tree (``cpu_times``: user + system of
  the trainer and its augmentation workers, from ``/proc``), grouped per epoch, plus the training
  start/end times (rewritten after every epoch);
- ``NNUNET_BUDGET_SKIP_FINAL_VALIDATION=1``: skip the full-volume validation (throughput bursts);
- ``NNUNET_BUDGET_NO_MIRRORING=1``: final validation without mirroring test-time augmentation.
"""

import json
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _tree_cpu_seconds():
    """User + system CPU seconds of this process and its live descendants (and the children they
    reaped), from /proc; the same reading as benchmarks/proctree.py (this file must stand alone)."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            children.setdefault(int(fields[1]), []).append((int(name), sum(int(v) for v in fields[11:15])))
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        stat = f.read()
    total, todo = sum(int(v) for v in stat[stat.rfind(b")") + 2:].split()[11:15]), [os.getpid()]
    while todo:
        for pid, ticks in children.get(todo.pop(), ()):
            total += ticks
            todo.append(pid)
    return total / os.sysconf("SC_CLK_TCK")


class _TimePolyLR:
    """Poly learning-rate decay over the wall-clock budget (nnU-Net's schedule with time for epochs)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def step(self, current_step=None):
        t = self.trainer
        lr = t.initial_lr * (1 - t.budget_fraction()) ** 0.9
        for group in t.optimizer.param_groups:
            group["lr"] = lr


def _env_int(name):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


class nnUNetTrainer_Budget(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("NNUNET_BUDGET_EPOCHS") or self.num_epochs
        self.num_iterations_per_epoch = _env_int("NNUNET_BUDGET_ITERS") or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = _env_int("NNUNET_BUDGET_VAL_ITERS") or self.num_val_iterations_per_epoch
        minutes = os.environ.get("NNUNET_BUDGET_MINUTES")
        self.budget_seconds = float(minutes) * 60 if minutes else None
        self.timing_path = os.environ.get("NNUNET_BUDGET_TIMING") or None
        self.step_times = []  # per epoch: perf_counter after each training step
        self.cpu_times = []  # per epoch: process-tree CPU seconds after each training step
        self.epoch_lrs = []
        self.train_started = self.train_ended = self.epoch_started = None
        threads = _env_int("NNUNET_BUDGET_THREADS")
        if threads:
            torch.set_num_threads(threads)

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        batch = _env_int("NNUNET_BUDGET_BATCH")
        if batch:
            if self.is_ddp:
                raise RuntimeError("NNUNET_BUDGET_BATCH is for single-process runs only")
            self.batch_size = batch

    def budget_fraction(self):
        if self.budget_seconds is None or self.train_started is None:
            return 0.0
        return min((time.perf_counter() - self.train_started) / self.budget_seconds, 1.0)

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        return optimizer, (_TimePolyLR(self) if self.budget_seconds is not None else scheduler)

    def on_train_epoch_start(self):
        self.epoch_started = time.perf_counter()
        super().on_train_epoch_start()
        self.step_times.append([])
        self.cpu_times.append([])
        self.epoch_lrs.append(self.optimizer.param_groups[0]["lr"])

    def train_step(self, batch):
        out = super().train_step(batch)  # returns the loss as numpy: the step has finished
        self.step_times[-1].append(time.perf_counter())
        self.cpu_times[-1].append(_tree_cpu_seconds())
        return out

    def _write_timing(self):
        if self.timing_path:
            data = {"train_started": self.train_started, "train_ended": self.train_ended,
                    "epochs_done": self.current_epoch, "num_epochs": self.num_epochs,
                    "batch_size": self.batch_size, "iters_per_epoch": self.num_iterations_per_epoch,
                    "val_iters": self.num_val_iterations_per_epoch, "threads": torch.get_num_threads(),
                    "precision": "fp32" if self.device.type != "cuda" else "fp16 autocast",
                    "lrs": self.epoch_lrs, "step_times": self.step_times,
                    "cpu_times": self.cpu_times}
            tmp = self.timing_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.timing_path)

    def on_epoch_end(self):
        super().on_epoch_end()
        self._write_timing()

    def run_training(self):
        """nnUNetTrainer.run_training with a wall-clock stop between epochs."""
        self.on_train_start()
        self.train_started = time.perf_counter()
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
            now = time.perf_counter()
            if (self.budget_seconds is not None
                    and now - self.train_started + (now - self.epoch_started) / 2 >= self.budget_seconds):
                self.print_to_log_file(f"Wall-clock budget of {self.budget_seconds / 60:g} min spent after "
                                       f"{self.current_epoch} epochs; stopping")
                break
        self.train_ended = time.perf_counter()
        self._write_timing()
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities=False):
        if os.environ.get("NNUNET_BUDGET_SKIP_FINAL_VALIDATION") == "1":
            self.print_to_log_file("Final validation skipped (NNUNET_BUDGET_SKIP_FINAL_VALIDATION=1)")
            return
        if os.environ.get("NNUNET_BUDGET_NO_MIRRORING") == "1":
            self.inference_allowed_mirroring_axes = None  # the predictor mirrors only along allowed axes
        super().perform_actual_validation(save_probabilities)
