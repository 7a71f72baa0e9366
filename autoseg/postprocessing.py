"""Post-processing chosen on cross-validation: keep only the largest connected component.

The decision follows nnU-Net (``determine_postprocessing`` in
nnunetv2/postprocessing/remove_connected_components.py), judged on the mean per-case Dice of the merged
cross-validation predictions:

1. Keep the largest component of the union of all foreground labels (removing every other island of
   foreground). Accepted only if the foreground-mean Dice improves and no class (or region) gets worse.
2. Then, on top of that result, for each class (or region) separately: keep its largest component if
   that class's mean Dice improves.

Components use full (26-) connectivity, so voxels touching at an edge or corner are one component.
Removed voxels become background (0). The decision is saved as ``postprocessing.json`` next to the
run and applied by ``predict`` with :func:`apply_postprocessing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from autoseg.artifacts import Artifact
from autoseg.cropping import bounding_box
from autoseg.dataset import DatasetSpec
from autoseg.evaluation.evaluate import EvaluationError, check_geometry, match_cases, read_label_map, run_bounded
from autoseg.evaluation.metrics import evaluation_targets
from autoseg.io import write_like

POSTPROCESSING_FILE = "postprocessing.json"
_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-neighbourhood


@dataclass(frozen=True)
class PostprocessingDecision(Artifact):
    """What to remove from a prediction, and the cross-validation evidence for it.

    ``mean_dice_before``/``mean_dice_after`` are per-target mean Dice over the cross-validation cases
    without and with the chosen post-processing (targets judged independently: for overlapping regions
    the "after" values are estimates)."""

    KIND = "postprocessing"
    SCHEMA_VERSION = 1

    foreground_labels: tuple[int, ...]
    keep_largest_foreground: bool
    keep_largest_per_target: tuple[tuple[int, ...], ...]  # label groups whose largest component is kept
    mean_dice_before: dict[str, float | None]
    mean_dice_after: dict[str, float | None]
    num_cases: int

    @property
    def is_identity(self) -> bool:
        return not self.keep_largest_foreground and not self.keep_largest_per_target


def keep_largest_component(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Copy of the label map ``seg`` (X, Y, Z) where the voxels with a value in ``labels`` are reduced
    to the largest connected component of their union; the rest of those voxels become 0."""
    mask = np.isin(seg, list(labels))
    out = seg.copy()
    if not mask.any():
        return out
    box = tuple(slice(a, b) for a, b in bounding_box(mask))
    components, n = ndimage.label(mask[box], structure=_FULL_CONNECTIVITY)
    if n <= 1:
        return out
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    drop = (components != 0) & (components != int(np.argmax(sizes)))
    out[box][drop] = 0
    return out


def apply_postprocessing(seg: np.ndarray, decision: PostprocessingDecision) -> np.ndarray:
    """Apply a decision to one predicted label map; returns a new array."""
    out = seg
    if decision.keep_largest_foreground:
        out = keep_largest_component(out, decision.foreground_labels)
    for group in decision.keep_largest_per_target:
        out = keep_largest_component(out, group)
    return out if out is not seg else seg.copy()


def _dice(ref_seg: np.ndarray, pred_seg: np.ndarray, values: tuple[int, ...], valid: np.ndarray | None) -> float:
    ref, pred = np.isin(ref_seg, values), np.isin(pred_seg, values)
    if valid is not None:
        pred &= valid
    denom = int(np.count_nonzero(ref)) + int(np.count_nonzero(pred))
    return 2 * int(np.count_nonzero(ref & pred)) / denom if denom else math.nan


def case_dice_variants(ref_seg: np.ndarray, pred_seg: np.ndarray, targets: dict[str, tuple[int, ...]],
                       ignore_label: int | None = None) -> dict[str, dict[str, float]]:
    """Per-target Dice of one case under the four variants the decision compares:
    ``base``, ``fg`` (largest foreground component), ``base_lcc`` and ``fg_lcc`` (the target's own
    largest component, on top of ``base`` or ``fg``). NaN when the target is absent from both."""
    valid = None if ignore_label is None else ref_seg != ignore_label
    fg_labels = sorted({v for vals in targets.values() for v in vals})
    fg_seg = keep_largest_component(pred_seg, fg_labels)
    out: dict[str, dict[str, float]] = {"base": {}, "fg": {}, "base_lcc": {}, "fg_lcc": {}}
    for name, values in targets.items():
        out["base"][name] = _dice(ref_seg, pred_seg, values, valid)
        out["fg"][name] = _dice(ref_seg, fg_seg, values, valid)
        out["base_lcc"][name] = _dice(ref_seg, keep_largest_component(pred_seg, values), values, valid)
        out["fg_lcc"][name] = _dice(ref_seg, keep_largest_component(fg_seg, values), values, valid)
    return out


def _means(per_case: list[dict[str, dict[str, float]]], variant: str, names: list[str]) -> dict[str, float | None]:
    out = {}
    for name in names:
        vals = [c[variant][name] for c in per_case if not math.isnan(c[variant][name])]
        out[name] = float(np.mean(vals)) if vals else None
    return out


def _fg_mean(means: dict[str, float | None]) -> float:
    vals = [v for v in means.values() if v is not None]
    return float(np.mean(vals)) if vals else math.nan


def decide_postprocessing(per_case: list[dict[str, dict[str, float]]],
                          targets: dict[str, tuple[int, ...]]) -> PostprocessingDecision:
    """The decision from :func:`case_dice_variants` of every cross-validation case."""
    if not per_case:
        raise ValueError("no cases to determine post-processing from")
    names = list(targets)
    base, fg = _means(per_case, "base", names), _means(per_case, "fg", names)
    no_class_worse = all(fg[n] is None or base[n] is None or fg[n] >= base[n] for n in names)
    keep_fg = _fg_mean(fg) > _fg_mean(base) and no_class_worse
    start, start_lcc = (fg, _means(per_case, "fg_lcc", names)) if keep_fg else (base, _means(per_case, "base_lcc", names))
    after, groups = dict(start), []
    for n in names:
        if start_lcc[n] is not None and start[n] is not None and start_lcc[n] > start[n]:
            groups.append(targets[n])
            after[n] = start_lcc[n]
    return PostprocessingDecision(
        foreground_labels=tuple(sorted({v for vals in targets.values() for v in vals})),
        keep_largest_foreground=keep_fg, keep_largest_per_target=tuple(groups),
        mean_dice_before=base, mean_dice_after=after, num_cases=len(per_case),
    )


def determine_postprocessing(pairs: Iterable[tuple[np.ndarray, np.ndarray]], spec: DatasetSpec) -> PostprocessingDecision:
    """Decide on in-memory ``(reference, prediction)`` label-map pairs of the cross-validation cases."""
    targets = evaluation_targets(spec.labels)
    per_case = [case_dice_variants(ref, pred, targets, spec.ignore_label) for ref, pred in pairs]
    return decide_postprocessing(per_case, targets)


def _folder_case(ref: Path, pred: Path, targets: dict[str, tuple[int, ...]], ignore_label: int | None,
                 force_itk: bool, declared: tuple[int, ...] | None = None) -> dict[str, dict[str, float]]:
    ref_seg, _ = read_label_map(ref, force_itk, declared)
    pred_seg, _ = read_label_map(pred, force_itk, declared)
    return case_dice_variants(ref_seg, pred_seg, targets, ignore_label)


def determine_postprocessing_from_folders(gt_dir: Path, pred_dir: Path, spec: DatasetSpec, workers: int = 1,
                                          progress: bool = False) -> PostprocessingDecision:
    """Decide on the (merged cross-validation) predictions in ``pred_dir``; every reference case of
    ``gt_dir`` needs a prediction. The caller saves the result (``decision.save(run / POSTPROCESSING_FILE)``)."""
    pairs, missing = match_cases(Path(gt_dir), Path(pred_dir), spec.file_ending)
    if missing:
        raise EvaluationError(f"{pred_dir}: no prediction for reference case(s) {', '.join(missing[:20])}; "
                              "post-processing is decided on all cross-validation cases, finish every fold first")
    check_geometry(pairs, spec.force_itk)
    targets = evaluation_targets(spec.labels)
    jobs = [(r, p, targets, spec.ignore_label, spec.force_itk, tuple(spec.label_values)) for r, p in pairs.values()]
    per_case = list(run_bounded(_folder_case, jobs, workers, progress, "post-processing"))
    return decide_postprocessing(per_case, targets)


def _apply_file(src: Path, dst: Path, decision: PostprocessingDecision, force_itk: bool) -> Path:
    seg, _ = read_label_map(src, force_itk)
    return write_like(apply_postprocessing(seg, decision), src, dst, force_itk)


def apply_postprocessing_to_folder(in_dir: Path, out_dir: Path, decision: PostprocessingDecision,
                                   file_ending: str, workers: int = 1, progress: bool = False,
                                   force_itk: bool = False) -> list[Path]:
    """Post-process every ``*{file_ending}`` label map of ``in_dir`` into ``out_dir`` (same geometry)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = sorted(p for p in in_dir.iterdir() if p.name.lower().endswith(file_ending) and not p.name.startswith("."))
    jobs = [(p, out_dir / p.name, decision, force_itk) for p in files]
    return sorted(run_bounded(_apply_file, jobs, workers, progress, "post-processing"))
