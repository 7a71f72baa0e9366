"""End-of-training validation: predict the fold's validation cases whole, in their original geometry.

Per case: sliding-window probabilities on the preprocessed volume (Gaussian weighting, mirroring),
taken back to the input's geometry exactly as ``autoseg predict`` does
(:func:`autoseg.inference.restore.to_input_geometry`: resampled to the cropped shape, labelled,
transposed back, pasted into the crop box) and written with the raw image's exact geometry to
``fold_k/validation/{case}{file_ending}`` (``{case}.npz`` probabilities too when asked). Dice per class (or region) against the raw label, ignore
label left out, NaN when both are empty; ``validation/summary.json`` holds per-case and mean Dice
(nnU-Net's case-averaged final Dice, which is typically below the training pseudo Dice).

Cascade (:mod:`autoseg.cascade`): a cascade stage's network gets each case's previous-stage
segmentation as one-hot channels after the image; a stage with next stages (``3d_lowres``) also writes
each case's segmentation on each next stage's preprocessed grid (its probabilities resampled there with
this configuration's resampling, then labelled: nnU-Net v2 ``perform_actual_validation``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.cascade import PreviousStage, read_previous_stage, with_previous_stage, write_previous_stage
from autoseg.core.fileops import atomic_write_json
from autoseg.dataset import DatasetSpec
from autoseg.evaluation.metrics import case_metrics, evaluation_targets
from autoseg.inference import probabilities as probability_files
from autoseg.inference.probabilities import SavedProbabilities, regions_order
from autoseg.inference.restore import labels_on_grid, to_input_geometry
from autoseg.inference.sliding import predict_probabilities
from autoseg.io import read_volume, write_like
from autoseg.planning.plans import ConfigurationPlan, Plans
from autoseg.storage import CaseProperties, open_case

SUMMARY = "summary.json"


@dataclass(frozen=True)
class NextStage:
    """A cascade stage fed by this configuration's validation: its preprocessed cases (whose grid the
    segmentations are resampled to) and where the segmentations go (``predicted_next_stage/<config>``)."""

    config: str
    data_folder: Path
    out_folder: Path


@dataclass(frozen=True)
class ValidationJob:
    """What to validate: the cases, where their data lie and where results go."""

    plans: Plans
    config: ConfigurationPlan
    spec: DatasetSpec
    data_folder: Path  # preprocessed cases of the configuration
    raw_folder: Path  # raw dataset (imagesTr / labelsTr)
    out_folder: Path  # fold_k/validation
    case_ids: tuple[str, ...]
    previous: PreviousStage | None = None  # a cascade stage: the previous stage's segmentations
    next_stages: tuple[NextStage, ...] = ()  # stages that take this one's segmentations


def predict_case(networks: Sequence[nn.Module], job: ValidationJob, case_id: str, device: torch.device,
                 amp_dtype: torch.dtype | None, mirror_axes: Sequence[int],
                 keep_probabilities: bool = False) -> tuple[np.ndarray, SavedProbabilities | None]:
    """The label map in the raw file's shape for one preprocessed case, back in the input's geometry
    the way ``autoseg predict`` maps it (:func:`~autoseg.inference.restore.to_input_geometry`), and
    with ``keep_probabilities`` its probabilities over the crop box."""
    case = open_case(job.data_folder, case_id)
    image = np.array(case.data, dtype=np.float32)  # a copy: the memory map is read-only
    if job.previous is not None:
        previous = read_previous_stage(job.previous.folder, case_id, image.shape[1:], mmap=False)[0]
        image = with_previous_stage(image, previous, job.previous.labels)
    probs = predict_probabilities(networks, torch.from_numpy(image), job.config.patch_size,
                                  regions=job.spec.has_regions, mirror_axes=mirror_axes, device=device,
                                  amp_dtype=amp_dtype).numpy()
    for stage in job.next_stages:
        export_next_stage(probs, case.props, stage, job)
    return to_input_geometry(probs, case.props, job.config.resampling, job.plans.transpose_backward,
                             regions_order(job.spec), keep_probabilities=keep_probabilities)


def export_next_stage(probs: np.ndarray, props: CaseProperties, stage: NextStage, job: ValidationJob) -> Path:
    """Write a case's segmentation on ``stage``'s preprocessed grid (its ``{case}.json`` says the shape and
    spacing) for the cascade stage to train on (:func:`autoseg.cascade.write_previous_stage`)."""
    path = stage.data_folder / f"{props.case_id}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the preprocessed case of '{stage.config}' is missing, so the "
                                f"segmentation for that stage cannot be made; rerun `autoseg plan` to preprocess it")
    target = CaseProperties.load(path)
    labels = labels_on_grid(probs, props.spacing, target.spacing, target.shape_after_resample, job.config.resampling,
                            regions_order(job.spec))
    return write_previous_stage(stage.out_folder, props.case_id, labels)


def _clean(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def validate(networks: Sequence[nn.Module], job: ValidationJob, device: torch.device,
             amp_dtype: torch.dtype | None = None, mirror_axes: Sequence[int] = (0, 1, 2),
             save_probabilities: bool = False, progress=None) -> Path:
    """Predict, write and score every validation case; returns the path of ``summary.json``."""
    ending = job.spec.file_ending
    targets = evaluation_targets(job.spec.labels)
    per_case: list[dict[str, Any]] = []
    job.out_folder.mkdir(parents=True, exist_ok=True)
    for case_id in job.case_ids:
        labels, saved = predict_case(networks, job, case_id, device, amp_dtype, mirror_axes, save_probabilities)
        label_path = job.raw_folder / "labelsTr" / f"{case_id}{ending}"
        reference = label_path if label_path.is_file() else job.raw_folder / "imagesTr" / f"{case_id}_0000{ending}"
        write_like(labels, reference, job.out_folder / f"{case_id}{ending}", force_itk=job.spec.force_itk)
        if saved is not None:
            probability_files.save_probabilities(job.out_folder / f"{case_id}.npz", saved)
        row: dict[str, Any] = {"case": case_id, "prediction": f"{case_id}{ending}", "dice": {}}
        if label_path.is_file():
            ref, geometry = read_volume(label_path, force_itk=job.spec.force_itk)
            metrics = case_metrics(np.rint(np.asarray(ref)).astype(np.int32), labels, geometry.spacing, targets,
                                   ignore_label=job.spec.ignore_label, distances=False)
            row["dice"] = {name: _clean(m.dice) for name, m in metrics.items()}
        per_case.append(row)
        if progress is not None:
            progress(1)
    summary = summarise(per_case, list(targets))
    path = job.out_folder / SUMMARY
    atomic_write_json(path, summary)
    return path


def summarise(per_case: list[dict[str, Any]], target_names: list[str]) -> dict[str, Any]:
    """Mean Dice per target over the cases where it is defined, and their foreground mean."""
    mean = {}
    for name in target_names:
        values = [row["dice"].get(name) for row in per_case]
        values = [v for v in values if v is not None]
        mean[name] = float(np.mean(values)) if values else None
    defined = [v for v in mean.values() if v is not None]
    return {"metric": "dice", "note": "per case: Dice per class vs the raw label (null: both empty); "
                                      "mean: over cases with a defined Dice",
            "mean": mean, "foreground_mean": float(np.mean(defined)) if defined else None,
            "n_cases": len(per_case), "per_case": per_case}
