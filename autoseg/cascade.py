"""The cascade: a ``3d_cascade_fullres`` network sees the ``3d_lowres`` stage's segmentation as extra input.

nnU-Net v2's two-stage cascade (nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py: ``is_cascaded``,
``perform_actual_validation``; batchgeneratorsv2 ``MoveSegAsOneHotToDataTransform``):

- the low-res stage's end-of-training validation leaves, for each validation case, its segmentation on
  the *next* stage's preprocessed grid (probabilities resampled to that grid, then labelled) in
  ``<lowres model folder>/predicted_next_stage/<next_config>/{case}.npy``
  (:func:`autoseg.workspace.next_stage_folder`); with the five folds trained, every training case has one
  that its model did not see in training;
- the cascade network's input is the image channels followed by one channel per *foreground label*
  of that segmentation (1 where the segmentation has the label, else 0): labels without background and
  without the ignore label. nnU-Net uses the labels for region-based datasets too (the previous stage's
  segmentation is a label map painted in ``regions_class_order``), and so does autoseg.

Stored file: ``{case}.npy``, int8/int16 ``(1, X, Y, Z)``: the label map on the next stage's preprocessed
grid (the shape of that stage's ``{case}.npy`` without its channel axis), written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_write_with
from autoseg.planning.plans import Plans
from autoseg.storage import label_dtype

PREVIOUS_STAGE_PAD_VALUE = 0  # outside the volume the previous stage saw background


class CascadeError(ValueError):
    """A previous-stage segmentation that is missing or does not fit its case (the message says what to do)."""


def foreground_labels(spec) -> tuple[int, ...]:
    """The label values that get a previous-stage channel, in order: every value a label file may hold
    but background (0) and the ignore label (nnU-Net ``LabelManager.foreground_labels``). ``spec``: a
    :class:`~autoseg.dataset.DatasetSpec`."""
    return tuple(v for v in spec.label_values if v != 0 and v != spec.ignore_label)


def input_channels(spec, cascaded: bool) -> int:
    """Network input channels: the image channels, plus one per foreground label for a cascade stage."""
    return spec.num_channels + (len(foreground_labels(spec)) if cascaded else 0)


def next_stages(plans: Plans, config: str) -> tuple[str, ...]:
    """The configurations of ``plans`` whose previous stage is ``config`` (``3d_lowres`` ->
    ``("3d_cascade_fullres",)``)."""
    return tuple(name for name, c in plans.configurations.items() if c.previous_stage == config)


def one_hot(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``(*S)`` label map -> ``(len(values), *S)`` float32, channel ``i`` is 1 where the map holds ``values[i]``."""
    out = np.zeros((len(values), *labels.shape), dtype=np.float32)
    for i, v in enumerate(values):
        out[i][labels == v] = 1.0
    return out


def with_previous_stage(image: np.ndarray, labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """The cascade network's input: ``image`` ``(C, *S)`` followed by :func:`one_hot` of ``labels`` ``(*S)``."""
    if tuple(labels.shape) != tuple(image.shape[1:]):
        raise CascadeError(f"previous-stage segmentation of shape {tuple(labels.shape)} does not fit the image "
                           f"of shape {tuple(image.shape[1:])}")
    return np.concatenate([np.asarray(image, dtype=np.float32), one_hot(labels, values)])


def previous_stage_file(folder: Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}.npy"


def write_previous_stage(folder: Path, case_id: str, labels: np.ndarray) -> Path:
    """Store a case's previous-stage label map ``(X, Y, Z)`` atomically (as ``(1, X, Y, Z)``)."""
    labels = np.asarray(labels)
    stored = labels[None].astype(label_dtype(int(labels.max(initial=0))))
    return atomic_write_with(previous_stage_file(folder, case_id), lambda f: np.save(f, stored))


def read_previous_stage(folder: Path, case_id: str, shape: Sequence[int], mmap: bool = True) -> np.ndarray:
    """A case's previous-stage label map ``(1, *shape)`` (memory-mapped), checked against the preprocessed
    case's spatial ``shape``."""
    path = previous_stage_file(folder, case_id)
    if not path.is_file():
        raise CascadeError(f"{path}: the previous stage's segmentation of case {case_id} is missing; train the "
                           "low-res stage's fold that validates it")
    try:
        labels = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise CascadeError(f"{path}: unreadable ({e}); delete it and rerun the low-res fold that validates "
                           f"{case_id} (`autoseg train ... --config 3d_lowres --fold K --resume`)") from None
    if labels.ndim != 4 or tuple(labels.shape[1:]) != tuple(shape):
        raise CascadeError(f"{path}: shape {tuple(labels.shape)} does not fit the preprocessed case {case_id} "
                           f"{(1, *tuple(shape))}; the data were planned again since: retrain the low-res stage")
    return labels


def missing_previous_stage(folder: Path, case_ids: Sequence[str]) -> list[str]:
    """The cases of ``case_ids`` without a previous-stage segmentation in ``folder``."""
    return [c for c in case_ids if not previous_stage_file(folder, c).is_file()]


@dataclass(frozen=True)
class PreviousStage:
    """Where a cascade stage's previous-stage segmentations lie and the label values it one-hot encodes."""

    folder: Path
    labels: tuple[int, ...]
