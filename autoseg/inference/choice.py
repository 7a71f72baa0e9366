"""What ``autoseg predict`` (and ``quantize``, ``export``) is asked: which trained model, and how to predict.

Plain frozen records, no heavy imports: the command line builds them, :mod:`autoseg.api` resolves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelChoice:
    """A trained model: ``model`` (a model folder, fold folder or exported ``.zip``), else the trained
    model of ``dataset`` that ``config``/``arch``/``plans`` pick (None: the only one there is)."""

    dataset: str | None = None  # trained dataset: name or number
    config: str | None = None
    arch: str | None = None
    plans: str | None = None  # plans name or planner preset (resenc_m)
    model: Path | None = None
    folds: Sequence[int | str] | None = None  # default: every fold whose training finished
    checkpoint: str = "final"  # final or best


@dataclass(frozen=True)
class PredictOptions:
    """How to predict a folder (defaults: those of ``autoseg predict``; see
    :func:`autoseg.inference.pipeline.predict_folder`, and :mod:`autoseg.inference.sources` for
    DICOM input, output type, statistics and sharding)."""

    step: float = 0.5  # sliding-window step as a fraction of the patch
    tta: bool = True  # mirroring test-time augmentation
    save_probabilities: bool = False  # also write {case}.npz
    device: str = "auto"  # auto, cpu, cuda, mps
    backend: str = "auto"  # auto, torch, openvino
    precision: str = "auto"  # auto, fp32, bf16, fp16, int8
    overwrite: bool = False  # predict cases whose outputs exist already
    progress: bool = True
    output_type: str | None = None  # None: the input's format (nifti for DICOM)
    series_channels: tuple[str, ...] = ()  # one pattern per model channel, for multi-series DICOM sources
    num_parts: int = 1  # predict every num_parts-th case, starting at part_id
    part_id: int = 0
    statistics: bool = False  # also write per-case label statistics
