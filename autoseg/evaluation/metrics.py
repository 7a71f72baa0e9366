"""Segmentation metrics of one case: overlap (Dice, IoU), distances (HD95, surface Dice) and volumes.

Masks are boolean ``(X, Y, Z)`` arrays in the package axis order; ``spacing`` is mm per axis in the
same order, so every distance is in mm and every volume in mm^3.

Conventions (the evaluation summary repeats them):

* **Surface** of a mask: its voxels with at least one 6-neighbour outside the mask (binary erosion,
  everything outside the image counts as background) -- the same surface MONAI's ``get_mask_edges``
  uses without sub-voxel areas.
* **Surface distance** from a surface voxel of one mask to the other mask's surface: exact Euclidean
  distance between voxel centres in mm (a k-d tree over the surface points, as MONAI does on CPU).
* **HD95**: the larger of the two directed 95th percentiles (MONAI ``compute_hausdorff_distance``
  with ``percentile=95``).
* **NSD** (normalised surface Dice at tolerance tau mm): surface voxels of both masks lying within
  tau of the other surface, divided by all surface voxels of both masks (MONAI ``compute_surface_dice``
  without sub-voxel areas; distances equal to tau count as within).
* **Both masks empty**: Dice, IoU, HD95 and NSD are undefined (NaN, written as ``null``) and left out
  of the means, as in nnU-Net.
* **One mask empty, the other not**: Dice 0, IoU 0, NSD 0 and HD95 = the image diagonal in mm, the
  largest distance possible inside the image (the worst finite value, so means stay finite and a
  missed structure is penalised instead of silently dropped).
* **Ignore label**: voxels whose reference value is the ignore label are removed from the prediction
  mask before anything is counted (the reference masks never contain them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.cropping import bounding_box, crop

# Surface Dice tolerance when the user gives none. 2 mm is about two voxels of a typical CT/MR
# target spacing; the nnU-Net Revisited benchmark and the Medical Segmentation Decathlon NSD
# analyses use tolerances of 1-4 mm depending on the structure.
DEFAULT_TOLERANCE_MM = 2.0
HD_PERCENTILE = 95.0


@dataclass(frozen=True)
class LabelMetrics:
    """Metrics of one class (or region) in one case. ``None`` marks an undefined value."""

    dice: float | None
    iou: float | None
    hd95_mm: float | None
    nsd: float | None
    tp: int
    fp: int
    fn: int
    n_ref: int  # reference voxels
    n_pred: int  # predicted voxels
    ref_volume_mm3: float
    pred_volume_mm3: float


def evaluation_targets(labels: dict[str, object]) -> dict[str, tuple[int, ...]]:
    """What to evaluate, from ``dataset.json`` labels: name -> label values forming the mask.

    A class gives ``(value,)``; a region gives all its values (the mask is their union). Background
    and the ignore label are left out."""
    out: dict[str, tuple[int, ...]] = {}
    for name, v in labels.items():
        if name in ("background", "ignore"):
            continue
        out[name] = tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),)
    return out


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels of ``mask`` that touch the background along an axis."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``a`` to the surface of ``b``, and from ``b`` to ``a``.

    Both masks must be non-empty. Work is limited to the bounding box of ``a | b``."""
    from scipy.spatial import cKDTree  # here: the CLI imports this module for every command (0.15-0.3 s)

    box = bounding_box(a | b)
    a, b = crop(a, box), crop(b, box)
    scale = np.asarray(spacing, dtype=np.float64)
    pa = np.argwhere(surface_voxels(a)) * scale
    pb = np.argwhere(surface_voxels(b)) * scale
    d_ab = cKDTree(pb).query(pa, k=1)[0]
    d_ba = cKDTree(pa).query(pb, k=1)[0]
    return d_ab, d_ba


def hd95_from_distances(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
    return float(max(np.percentile(d_ab, HD_PERCENTILE), np.percentile(d_ba, HD_PERCENTILE)))


def nsd_from_distances(d_ab: np.ndarray, d_ba: np.ndarray, tolerance_mm: float) -> float:
    within = int(np.count_nonzero(d_ab <= tolerance_mm)) + int(np.count_nonzero(d_ba <= tolerance_mm))
    return within / (d_ab.size + d_ba.size)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Distance in mm between the centres of two opposite corner voxels."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def label_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                  tolerance_mm: float = DEFAULT_TOLERANCE_MM, distances: bool = True) -> LabelMetrics:
    """All metrics of one boolean reference/prediction pair (see the module docstring).

    ``distances=False`` skips HD95 and NSD (``None``), for quick overlap-only evaluation."""
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} and prediction shape {pred.shape} differ")
    tp = int(np.count_nonzero(ref & pred))
    n_ref, n_pred = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    fp, fn = n_pred - tp, n_ref - tp
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    dice = iou = hd95 = nsd = None
    if n_ref + n_pred > 0:
        dice = 2 * tp / (n_ref + n_pred)
        iou = tp / (tp + fp + fn)
        if distances and (n_ref == 0 or n_pred == 0):
            hd95, nsd = image_diagonal_mm(ref.shape, spacing), 0.0
        elif distances:
            d_pr, d_rp = surface_distances(pred, ref, spacing)
            hd95, nsd = hd95_from_distances(d_pr, d_rp), nsd_from_distances(d_pr, d_rp, tolerance_mm)
    return LabelMetrics(dice=dice, iou=iou, hd95_mm=hd95, nsd=nsd, tp=tp, fp=fp, fn=fn, n_ref=n_ref,
                        n_pred=n_pred, ref_volume_mm3=n_ref * voxel_mm3, pred_volume_mm3=n_pred * voxel_mm3)


def case_metrics(ref_seg: np.ndarray, pred_seg: np.ndarray, spacing: Sequence[float],
                 targets: dict[str, tuple[int, ...]], tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                 ignore_label: int | None = None, distances: bool = True) -> dict[str, LabelMetrics]:
    """Metrics of every target (name -> label values, see :func:`evaluation_targets`) in one case.

    ``ref_seg`` and ``pred_seg`` are integer label maps ``(X, Y, Z)`` of equal shape."""
    if ref_seg.shape != pred_seg.shape:
        raise ValueError(f"reference shape {ref_seg.shape} and prediction shape {pred_seg.shape} differ")
    valid = None if ignore_label is None else ref_seg != ignore_label
    out = {}
    for name, values in targets.items():
        ref = np.isin(ref_seg, values) if len(values) > 1 else ref_seg == values[0]
        pred = np.isin(pred_seg, values) if len(values) > 1 else pred_seg == values[0]
        if valid is not None:
            pred &= valid
        out[name] = label_metrics(ref, pred, spacing, tolerance_mm, distances)
    return out


@dataclass(frozen=True)
class MeanMetrics:
    """Means over cases of one target (or over targets for the foreground mean).

    NaN/undefined values are left out; ``n_cases`` counts cases with a defined Dice."""

    dice: float | None
    iou: float | None
    hd95_mm: float | None
    nsd: float | None
    n_cases: int


METRIC_NAMES = ("dice", "iou", "hd95_mm", "nsd")


def _nanmean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def mean_metrics(per_case: list[LabelMetrics]) -> MeanMetrics:
    """Mean of each metric over the cases where it is defined (nnU-Net's nanmean)."""
    means = {m: _nanmean([getattr(c, m) for c in per_case]) for m in METRIC_NAMES}
    return MeanMetrics(**means, n_cases=sum(c.dice is not None for c in per_case))


def foreground_mean(per_target: dict[str, MeanMetrics]) -> MeanMetrics:
    """Mean of the per-target means (nnU-Net's ``foreground_mean``); ``n_cases`` is the largest count."""
    targets = list(per_target.values())
    means = {m: _nanmean([getattr(t, m) for t in targets]) for m in METRIC_NAMES}
    return MeanMetrics(**means, n_cases=max((t.n_cases for t in targets), default=0))
