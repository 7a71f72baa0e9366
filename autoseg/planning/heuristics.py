"""Pure planning heuristics: target spacing, axis order, normalisation, resampling, patch and batch.

Functions of numbers and arrays only (no files). Spacings in mm; per-axis tuples are in the order
of their inputs (file order (X, Y, Z) for :func:`target_spacing`, transposed order afterwards).
Rules and constants follow nnU-Net v2 (nnunetv2/experiment_planning/experiment_planners/
default_experiment_planner.py, ``ExperimentPlanner``); the constants live in
:class:`~autoseg.planning.settings.PlannerSettings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autoseg.fingerprint import IntensityStats
from autoseg.planning.plans import NormalizationPlan, ResamplingPlan
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import ArchitectureRules, Topology


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                   anisotropy_threshold: float = 3.0, percentile: float = 10.0) -> tuple[float, ...]:
    """Per-axis median spacing, except for a thick, short axis.

    When the coarsest axis' median spacing is > ``anisotropy_threshold`` x the largest other median
    spacing AND its median size x ``anisotropy_threshold`` is < the smallest other median size, that
    axis gets the ``percentile``-th percentile of its spacings instead, but never less than the
    largest other spacing (+1e-5). Resampling every case to the thick median would otherwise throw
    away slices of the many finer-sliced cases.
    """
    sp = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(sp, 50, axis=0)
    sizes = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    max_other = max(target[a] for a in others)
    thick = target[worst] > anisotropy_threshold * max_other
    short = sizes[worst] * anisotropy_threshold < min(sizes[a] for a in others)
    if thick and short:
        value = float(np.percentile(sp[:, worst], percentile))
        target[worst] = value if value >= max_other else max_other + 1e-5
    return tuple(float(t) for t in target)


def transpose_order(spacing: Sequence[float], median_shape: Sequence[float] | None = None
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(forward, backward)`` with ``array.transpose(forward)`` for the spatial axes.

    Forward puts the coarsest axis first, then the other axes from last to first: the (Z, Y, X)
    order in which SimpleITK-based tools (nnU-Net) see NIfTI voxels, so plans agree with nnU-Net's
    axis by axis. On spacing ties the last file axis wins (Z for isotropic data: the ``2d``
    configuration then slices axially, as nnU-Net does). With ``median_shape``, an axis of median
    size 1 (2D data stored as (X, Y, 1)) goes first whatever its spacing. Backward undoes forward.
    """
    order = list(range(len(spacing)))[::-1]
    flat = [a for a in order if median_shape is not None and median_shape[a] == 1]
    first = flat[0] if flat else max(order, key=lambda a: (spacing[a], a))
    forward = (first,) + tuple(a for a in order if a != first)
    backward = tuple(forward.index(a) for a in range(len(spacing)))
    return forward, backward


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape after resampling from ``spacing`` to ``new_spacing`` (rounded per axis, halves to even)."""
    return tuple(int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape))


def median_resampled_shape(spacings, shapes, new_spacing) -> tuple[float, ...]:
    """Per-axis median of the case shapes after resampling (may be fractional, e.g. 35.5)."""
    new = [resampled_shape(sh, sp, new_spacing) for sp, sh in zip(spacings, shapes)]
    return tuple(float(m) for m in np.median(np.asarray(new, dtype=np.float64), axis=0))


NORMALIZATION_BY_NAME = {"ct": "ct", "nonorm": "none", "rescale_to_0_1": "rescale_0_1", "rgb_to_0_1": "rgb_0_1",
                         "zscore": "zscore"}


def normalization_plan(channel_names: Sequence[str], intensity_stats: Sequence[IntensityStats],
                       median_relative_size_after_crop: float,
                       mask_threshold: float = 0.75) -> tuple[NormalizationPlan, ...]:
    """One plan per channel, chosen by channel name (case-insensitive).

    "CT": clip to the dataset foreground [p0.5, p99.5], then subtract the foreground mean and divide
    by its std (global statistics). "noNorm": none. "rescale_to_0_1": per-image min-max. "rgb_to_0_1":
    divided by 255. Any other
    name: per-image z-score, computed inside the non-zero mask when the median relative size after
    cropping is below ``mask_threshold`` (cropping removed over a quarter of the typical image, so
    the zero background is large and would dominate the statistics).
    """
    if len(channel_names) != len(intensity_stats):
        raise ValueError(f"{len(channel_names)} channel names but {len(intensity_stats)} intensity statistics")
    plans = []
    for name, st in zip(channel_names, intensity_stats):
        scheme = NORMALIZATION_BY_NAME.get(name.casefold(), "zscore")
        if scheme == "ct":
            plans.append(NormalizationPlan(name, "ct", clip_low=st.percentile_00_5, clip_high=st.percentile_99_5,
                                           mean=st.mean, std=st.std))
        elif scheme == "zscore":
            plans.append(NormalizationPlan(name, "zscore",
                                           use_mask=median_relative_size_after_crop < mask_threshold))
        else:
            plans.append(NormalizationPlan(name, scheme))
    return tuple(plans)


def resampling_plan(anisotropy_threshold: float = 3.0) -> ResamplingPlan:
    """Interpolation orders: image 3, label 1 (per class), probabilities 1; nearest (order 0) along a
    thick axis when max/min spacing exceeds ``anisotropy_threshold`` (decided per case when
    resampling, from the current and target spacing)."""
    return ResamplingPlan(image_order=3, label_order=1, order_z_image=0, order_z_label=0,
                          anisotropy_threshold=anisotropy_threshold, probabilities_order=1)


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float], volume: float) -> tuple[float, ...]:
    """Patch with aspect ratio 1/spacing (equal extent in mm) scaled to ``volume`` voxels, rounded,
    then clipped to the median image shape (which may be fractional)."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    scale = (volume / np.prod(inv)) ** (1.0 / len(spacing))
    return tuple(float(min(round(i * scale), m)) for i, m in zip(inv, median_shape))


@dataclass(frozen=True)
class PatchPlan:
    """Result of :func:`patch_and_batch` for one configuration."""

    patch_size: tuple[int, ...]
    batch_size: int
    topology: Topology
    features: tuple[int, ...]
    encoder_blocks: tuple[int, ...]
    decoder_blocks: tuple[int, ...]
    estimate: int


def _estimate(topo: Topology, n_classes: int, settings: PlannerSettings, arch: ArchitectureRules):
    n = topo.n_stages
    features = arch.features(n, len(topo.patch_size), settings)
    enc, dec = settings.encoder_blocks(n), settings.decoder_blocks(n)
    return arch.estimate(topo, features, n_classes, enc, dec), features, enc, dec


def _axis_to_shrink(patch, median_shape, can_shrink) -> int | None:
    """Axis with the largest patch / median-shape ratio (the later axis on ties)."""
    axes = [a for a in range(len(patch)) if can_shrink[a]]
    if not axes:
        return None
    return max(axes, key=lambda a: (patch[a] / median_shape[a], a))


def patch_and_batch(spacing: Sequence[float], median_shape: Sequence[float], dataset_voxels: float,
                    n_classes: int, settings: PlannerSettings, arch: ArchitectureRules) -> PatchPlan:
    """Largest patch (then batch) that fits the memory budget.

    ``arch`` (the entry of ``settings.architecture``) lays the network out for a patch
    (``arch.layout``: pooling, kernels, divisibility), gives its features and its memory estimate, and
    says which axes may shrink. Start from :func:`initial_patch_size`; while ``estimate * b / ref_batch`` exceeds the budget
    (``settings.reference_estimate``; ``b`` = ``shrink_until_batch``), shrink the axis with the
    largest patch / median-shape ratio by its divisibility step (the step of the already reduced
    patch, so sizes such as 224 between multiples of 64 are not skipped) and recompute the topology.
    Batch = ``round(budget / estimate * ref_batch)``, capped so one batch covers at most
    ``max_dataset_coverage`` of ``dataset_voxels``, floored at ``min_batch_size``.
    """
    dims = len(spacing)
    budget = settings.reference_estimate(dims)
    ref_bs = settings.reference_batch(dims)
    topo = arch.layout(spacing, initial_patch_size(spacing, median_shape, settings.patch_volume(dims)), settings)
    est, features, enc, dec = _estimate(topo, n_classes, settings, arch)
    while est * settings.shrink_until_batch(dims) / ref_bs > budget:
        patch = list(topo.patch_size)
        can_shrink = [arch.can_shrink(patch, topo.divisible_by, a) for a in range(len(patch))]
        axis = _axis_to_shrink(patch, median_shape, can_shrink)
        if axis is None:
            break
        trial = list(patch)
        trial[axis] -= topo.divisible_by[axis]
        patch[axis] -= arch.layout(spacing, trial, settings).divisible_by[axis]
        topo = arch.layout(spacing, patch, settings)
        est, features, enc, dec = _estimate(topo, n_classes, settings, arch)
    batch = round(budget / est * ref_bs)
    cap = round(dataset_voxels * settings.max_dataset_coverage / float(np.prod(topo.patch_size, dtype=np.float64)))
    batch = max(min(batch, cap), settings.min_batch_size)
    return PatchPlan(topo.patch_size, int(batch), topo, features, enc, dec, int(est))


def needs_lowres(patch_size: Sequence[int], median_shape: Sequence[float], threshold: float = 0.25) -> bool:
    """True when the patch covers less than ``threshold`` of the median image's voxels."""
    return math.prod(patch_size) / math.prod(median_shape) < threshold


def next_lowres_spacing(spacing: Sequence[float], step: float = 1.03) -> tuple[float, ...]:
    """One step of the 3d_lowres spacing search: multiply by ``step`` the axes whose spacing is more
    than 2x finer than the coarsest (anisotropic data: the fine axes catch up first), or every axis
    when all are within a factor 2."""
    sp = np.asarray(spacing, dtype=np.float64)
    fine = sp.max() / sp > 2
    sp = np.where(fine, sp * step, sp) if fine.any() else sp * step
    return tuple(float(s) for s in sp)
