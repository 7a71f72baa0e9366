"""Ending training cleanly on SIGTERM (what SLURM and other schedulers send before a kill, and on
preemption) and SIGINT (Ctrl-C).

:class:`StopSignals` is installed around ``autoseg train``. Inside the training loop the handler
only records the signal (``deferred``); the loop asks :func:`pending_stop` (``trainer.check_stop``) after every optimiser
step, every validation batch and every finished epoch and raises :class:`TrainingStopped` there, so
a step is never cut in half and the checkpoint of the last finished epoch (written atomically at
each epoch end) is the one a ``--resume`` continues from. The unfinished epoch is dropped: batches
are a pure function of (seed, rank, batch index), so the resumed run repeats it exactly and reaches
the weights of an uninterrupted run. Outside the loop (setup, final validation) the handler raises
at once; every file is written atomically, so nothing half-written is left. A second signal while
one is pending also raises at once (the user insists).

Under torchrun the ranks agree on the stop (an all-reduce of the pending signal at each of those
points), so every rank stops after the same step even when the signal reaches one rank only or the
ranks at different moments (torchrun forwards SIGTERM to every rank).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from autoseg.training import ddp

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """Training ended early because of ``signum``; ``epochs_done`` completed epochs are saved in
    ``run_dir`` (None: stopped outside the training loop)."""

    def __init__(self, signum: int, epochs_done: int | None = None, run_dir: Path | None = None):
        self.signum, self.epochs_done, self.run_dir = signum, epochs_done, run_dir
        where = f"after epoch {epochs_done}" if epochs_done is not None else "outside the training loop"
        super().__init__(f"stopped by {signal.Signals(signum).name} ({where})")


class StopSignals:
    """Records SIGTERM/SIGINT while installed (``with StopSignals() as stop:``). ``signum`` is the
    pending signal (None: none); while ``deferred`` is False (the trainer sets it during its loop) a
    signal raises :class:`TrainingStopped` at once."""

    def __init__(self):
        self.signum: int | None = None
        self.deferred = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        again = self.signum is not None
        self.signum = signum
        if again or not self.deferred:
            raise TrainingStopped(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


NEVER = StopSignals()  # not installed: nothing is ever pending


def pending_stop(stop: StopSignals, ctx: ddp.DistContext, device: torch.device) -> int | None:
    """The signal every rank must stop for now (the largest pending on any rank), or None. A
    collective under torchrun: every rank calls it at the same points."""
    signum = stop.signum or 0
    if ctx.is_distributed:
        flag = torch.tensor([signum], device=device)
        signum = int(ddp.all_reduce_max(flag, ctx).item())
    return signum or None


def ignore_in_workers() -> None:
    """For data-loader worker processes: leave SIGTERM and SIGINT to the trainer, which closes the
    workers itself (a scheduler signals the whole process group; a worker dying of it would fail the
    trainer's next batch instead of letting it stop cleanly)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
