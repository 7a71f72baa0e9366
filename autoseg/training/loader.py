"""Batches of augmented training patches from preprocessed cases, computed in worker processes.

Every batch is a pure function of (seed, stream, rank, batch index) and the stored cases:
:func:`make_batch` seeds ``numpy.random.Generator`` s with exactly those numbers and draws the
cases (uniformly, with replacement, as nnU-Net), patch boxes and augmentation from them. Hence

- the stream is the same for 0, 1 or more workers (a torch ``DataLoader`` over batch indices
  returns results in index order, whichever worker finished first);
- resuming is exact: a stream started at ``start_iteration=k`` yields batches k, k+1, ... of the
  uninterrupted stream (the trainer passes ``epoch * iterations_per_epoch``);
- DDP ranks draw different batches (rank is part of the seed); ``batch_size`` is per rank.

Shapes: image float32 ``(B, C, *patch)``, target int64 ``(B, 1, *patch)`` with the stored label
values (the trainer converts to one-hot or regions). A cascade stage's batches (``previous`` given) add
one channel per foreground label to the image: the previous stage's segmentation, read with the patch,
stacked with the label through the spatial augmentation and mirroring (nearest, as the label; no
intensity transform), then one-hot encoded and spoilt by
:mod:`autoseg.training.cascade_augmentation` (training batches only). For ``2d`` configurations a slice along axis 0
of the ``(C, X, Y, Z)`` arrays is sampled and the patch spans axes 1, 2: image ``(B, C, h, w)``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from autoseg.cascade import PREVIOUS_STAGE_PAD_VALUE, PreviousStage, one_hot, read_previous_stage
from autoseg.planning.plans import ConfigurationPlan
from autoseg.storage import PreprocessedCase, is_case_done, open_case
from autoseg.training.augmentation import AugmentSettings, apply_augmentation, draw_augmentation, read_margin
from autoseg.training.cascade_augmentation import (CascadeAugmentSettings, apply_cascade_augmentation,
                                                   draw_cascade_augmentation)
from autoseg.sampling import draw_patch_box, forced_count, oversampling_classes, read_box, read_patch
from autoseg.training.stopping import ignore_in_workers

TRAIN_STREAM, VAL_STREAM = 0, 1    # separate random streams, so validation never repeats training batches
DEFAULT_PREFETCH = 2               # batches queued per worker (torch's default)
MAX_OPEN_CASES = 64                # memory-mapped cases kept open per process (bounds file handles)
MAX_DEFAULT_WORKERS = 8            # default cap per loader (judgement, matches TrainSettings.num_workers)


@dataclass(frozen=True)
class BatchSpec:
    """Everything that defines the batches of one stream (picklable; sent to the workers).

    ``patch_size`` is the network patch: 3 axes, or 2 for 2D configurations. ``classes`` are the
    label values forced-foreground samples may target (None: any stored class > 0).
    """

    patch_size: tuple[int, ...]
    batch_size: int
    oversample_foreground: float = 0.33
    classes: tuple[int, ...] | None = None
    augment: AugmentSettings | None = None
    seed: int = 0
    rank: int = 0
    stream: int = TRAIN_STREAM
    previous_labels: tuple[int, ...] | None = None  # cascade: label values of the previous-stage channels
    cascade_augment: CascadeAugmentSettings | None = None  # their augmentation (with ``augment`` only)

    @property
    def box_size(self) -> tuple[int, ...]:
        """The patch as a 3D box in the stored volume: ``(1, h, w)`` for 2D."""
        return self.patch_size if len(self.patch_size) == 3 else (1, *self.patch_size)


def batch_rngs(spec: BatchSpec, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Generators of batch ``index``: one places the patches, one draws their augmentation, so
    switching augmentation on or off does not change which patches are sampled."""
    key = [spec.seed, spec.stream, spec.rank, index]
    return np.random.default_rng(key + [0]), np.random.default_rng(key + [1])


def make_batch(spec: BatchSpec, case_ids: Sequence[str], open_fn, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``index`` of the stream ``spec``: image (B, C, *patch) float32, target (B, 1, *patch) int16.

    ``open_fn(case_id)`` returns a :class:`PreprocessedCase` (memory-mapped).
    """
    rng, aug_rng = batch_rngs(spec, index)
    first_forced = spec.batch_size - forced_count(spec.batch_size, spec.oversample_foreground)
    images, segs = [], []
    for i in range(spec.batch_size):
        case = open_fn(case_ids[int(rng.integers(len(case_ids)))])
        box = draw_patch_box(rng, case.data.shape[1:], spec.box_size, force_fg=i >= first_forced,
                             locations=case.locations, classes=spec.classes)
        params = (draw_augmentation(aug_rng, spec.augment, spec.patch_size, case.data.shape[0])
                  if spec.augment is not None else None)
        margin = read_margin(params, spec.patch_size)
        read = box.expanded(margin if len(margin) == 3 else (0, *margin))
        image, seg = read_patch(case, read)
        if spec.previous_labels is not None:  # the previous stage's labels travel with the label
            seg = np.concatenate([seg, read_previous_patch(case, read)])
        if len(spec.patch_size) == 2:
            image, seg = image[:, 0], seg[:, 0]
        image, seg = apply_augmentation(image, seg, params, spec.patch_size)
        if spec.previous_labels is not None:
            image, seg = _add_previous_stage(image, seg, spec, aug_rng if params is not None else None)
        images.append(image)
        segs.append(seg)
    return np.stack(images), np.stack(segs)


def read_previous_patch(case: PreprocessedCase, box) -> np.ndarray:
    """The previous-stage label map ``(1, *box.size)`` int16 of a cascade case, background outside the volume."""
    if case.previous is None:
        raise ValueError(f"case '{case.props.case_id}' was opened without its previous-stage segmentation")
    return read_box(case.previous, box, PREVIOUS_STAGE_PAD_VALUE).astype(np.int16, copy=False)


def _add_previous_stage(image: np.ndarray, seg: np.ndarray, spec: BatchSpec, rng: np.random.Generator | None):
    """Split the augmented previous-stage labels (``seg[1]``) off the label and append them to the image as
    one-hot channels, spoilt by the cascade augmentation when ``rng`` (training) and settings are given."""
    channels = one_hot(seg[1], spec.previous_labels)
    if rng is not None and spec.cascade_augment is not None:
        params = draw_cascade_augmentation(rng, spec.cascade_augment, len(spec.previous_labels))
        channels = apply_cascade_augmentation(channels, params, spec.cascade_augment)
    return np.ascontiguousarray(np.concatenate([image, channels])), np.ascontiguousarray(seg[:1])


class _CaseCache:
    """Opened cases of one process, least recently used closed first (with their previous-stage
    segmentation from ``previous_folder`` for a cascade stage)."""

    def __init__(self, folder: Path, max_open: int = MAX_OPEN_CASES, previous_folder: Path | None = None):
        self.folder, self.max_open, self.previous_folder = Path(folder), max_open, previous_folder
        self._open: OrderedDict[str, PreprocessedCase] = OrderedDict()

    def __call__(self, case_id: str) -> PreprocessedCase:
        case = self._open.pop(case_id, None) or self._load(case_id)
        self._open[case_id] = case
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return case

    def _load(self, case_id: str) -> PreprocessedCase:
        case = open_case(self.folder, case_id)
        if self.previous_folder is not None:
            case.previous = read_previous_stage(self.previous_folder, case_id, case.data.shape[1:])
        return case

    def __getstate__(self):  # workers open their own memory maps
        return {"folder": self.folder, "max_open": self.max_open, "previous_folder": self.previous_folder,
                "_open": OrderedDict()}


class PatchBatches(Dataset):
    """Map-style dataset: item ``i`` is batch ``i`` of the stream, as torch tensors."""

    def __init__(self, folder: Path, case_ids: Sequence[str], spec: BatchSpec, previous_folder: Path | None = None):
        self.case_ids, self.spec = list(case_ids), spec
        self._cases = _CaseCache(folder, previous_folder=previous_folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, seg = make_batch(self.spec, self.case_ids, self._cases, int(index))
        return torch.from_numpy(image), torch.from_numpy(seg.astype(np.int64))


class _CountFrom(Sampler[int]):
    """Batch indices ``start, start + 1, ...`` without end."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


class TimedIterator:
    """Wraps an iterator and adds up the seconds spent waiting in ``next()`` (data-wait time)."""

    def __init__(self, iterable: Iterable):
        self._it = iter(iterable)
        self.wait_seconds = 0.0
        self.batches = 0

    def __iter__(self) -> "TimedIterator":
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = next(self._it)
        self.wait_seconds += time.perf_counter() - t0
        self.batches += 1
        return item

    def take_wait_seconds(self) -> float:
        """Waiting time since the last call (e.g. per epoch), then reset."""
        seconds, self.wait_seconds = self.wait_seconds, 0.0
        return seconds

    def close(self) -> None:
        """Stop the worker processes now instead of at garbage collection."""
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._it = iter(())


def default_num_workers() -> int:
    """One worker per CPU this process may use, minus one for the training loop (0 to 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        cpus = os.cpu_count() or 1
    return max(0, min(cpus - 1, MAX_DEFAULT_WORKERS))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers run numpy/scipy per patch; threads would fight the trainer
    ignore_in_workers()  # SIGTERM/SIGINT to the process group: the trainer stops and closes us


def _check_cases(folder: Path, case_ids: Sequence[str]) -> None:
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: preprocessed folder not found; run `autoseg preprocess` first")
    if not case_ids:
        raise ValueError(f"no case ids given for {folder}; check the fold in splits.json")
    missing = [c for c in case_ids if not is_case_done(folder, c, labelled=True)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{folder}: {len(missing)} case(s) not preprocessed or without label: {shown}; "
                                "rerun `autoseg preprocess` for this configuration")


@dataclass(frozen=True)
class Sampling:
    """Which patches a loader draws: batch size, seed, foreground oversampling and the classes forced
    foreground samples target (see :func:`autoseg.sampling.oversampling_classes`)."""

    batch_size: int
    seed: int
    oversample_foreground: float = 0.33  # nnU-Net v2's oversample_foreground_percent
    foreground_classes: Sequence[int] | None = None
    ignore_label: int | None = None
    regions: Sequence[tuple[int, ...]] | None = None


@dataclass(frozen=True)
class Workers:
    """Where batches are made: this process's rank among ``world_size`` and its worker processes
    (``num_workers`` None: :func:`default_num_workers`; 0 computes batches in this process)."""

    rank: int = 0
    world_size: int = 1
    num_workers: int | None = None
    pin_memory: bool = False
    prefetch: int = DEFAULT_PREFETCH


def _spec(config: ConfigurationPlan, sampling: Sampling, augment, workers: Workers, stream: int,
          previous: PreviousStage | None = None) -> BatchSpec:
    batch_size, oversample, rank = sampling.batch_size, sampling.oversample_foreground, workers.rank
    if config.spatial_dims not in (2, 3) or len(config.patch_size) != config.spatial_dims:
        raise ValueError(f"configuration '{config.name}': patch_size {config.patch_size} does not match "
                         f"spatial_dims {config.spatial_dims}; re-create plans.json with `autoseg plan`")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= rank < workers.world_size:
        raise ValueError(f"rank {rank} is outside world size {workers.world_size}")
    forced_count(batch_size, oversample)  # validates the fraction
    classes = oversampling_classes(sampling.foreground_classes, sampling.ignore_label, sampling.regions)
    return BatchSpec(tuple(config.patch_size), batch_size, oversample, classes, augment, sampling.seed, rank, stream,
                     previous_labels=previous.labels if previous is not None else None,
                     cascade_augment=CascadeAugmentSettings() if previous is not None and augment is not None else None)


def _data_loader(folder, case_ids, spec, sampler, workers: Workers, previous: PreviousStage | None = None) -> DataLoader:
    n = default_num_workers() if workers.num_workers is None else workers.num_workers
    batches = PatchBatches(folder, case_ids, spec, previous.folder if previous is not None else None)
    return DataLoader(batches, batch_size=None, sampler=sampler,
                      num_workers=n, pin_memory=workers.pin_memory and torch.cuda.is_available(),
                      persistent_workers=n > 0, prefetch_factor=workers.prefetch if n > 0 else None,
                      worker_init_fn=_worker_init if n > 0 else None)


def make_train_loader(folder: Path, case_ids: Sequence[str], config: ConfigurationPlan, sampling: Sampling,
                      workers: Workers = Workers(), augment: AugmentSettings | None = AugmentSettings(),
                      start_iteration: int = 0, previous: PreviousStage | None = None) -> TimedIterator:
    """Endless training batches ``(image, target)`` from batch ``start_iteration`` on.

    ``folder`` holds the preprocessed cases of ``config``; ``case_ids`` the training cases of the
    fold; ``previous`` the previous-stage segmentations of a cascade stage. The returned iterator
    records its data-wait time; ``close()`` stops its workers.
    """
    _check_cases(folder, case_ids)
    spec = _spec(config, sampling, augment, workers, TRAIN_STREAM, previous)
    return TimedIterator(_data_loader(folder, case_ids, spec, _CountFrom(start_iteration), workers, previous))


def make_val_loader(folder: Path, case_ids: Sequence[str], config: ConfigurationPlan, sampling: Sampling,
                    num_batches: int, workers: Workers = Workers(), previous: PreviousStage | None = None) -> DataLoader:
    """The same ``num_batches`` validation batches (no augmentation) each time it is iterated.

    Same oversampling as training; drawn from a stream separate from training's.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    _check_cases(folder, case_ids)
    spec = _spec(config, sampling, None, workers, VAL_STREAM, previous)
    return _data_loader(folder, case_ids, spec, range(num_batches), workers, previous)
