"""Experiment planner: fingerprint + dataset spec + settings -> :class:`Plans`.

Configurations (nnU-Net v2 rules, ``ExperimentPlanner.plan_experiment`` in
nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py):

- ``3d_fullres`` at the target spacing, unless the data is 2D-like (median size 1 along the first,
  coarsest axis after transposition);
- ``2d`` always: slices along axis 0 of the transposed data, sharing the fullres data;
- ``3d_lowres`` + ``3d_cascade_fullres`` (``previous_stage="3d_lowres"``) when the fullres patch
  covers less than ``lowres_threshold`` of the median image: the spacing grows in steps of
  ``lowres_spacing_step`` until a patch covers enough; dropped again when the lowres median image
  is less than ``lowres_min_voxel_ratio`` times smaller than the fullres one.

Only configurations whose network can be built and trained are kept
(:mod:`autoseg.planning.trainable`); the others are named with their reason in
``settings["unplanned_configurations"]``, and a default configuration that cannot be built refuses
the plan (the images are too small for a U-Net).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from autoseg.dataset import DatasetSpec
from autoseg.fingerprint import Fingerprint
from autoseg.planning.heuristics import (PatchPlan, median_resampled_shape, needs_lowres, next_lowres_spacing,
                                         normalization_plan, patch_and_batch, resampling_plan, target_spacing,
                                         transpose_order)
from autoseg.planning.plans import ConfigurationPlan, Plans
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import ArchitectureRules
from autoseg.planning.trainable import configuration_problems

UNPLANNED_KEY = "unplanned_configurations"  # Plans.settings: {configuration: why it was left out}


class PlanningError(ValueError):
    """The fingerprint cannot be planned (no cases, channel mismatch)."""


def _configuration(name: str, spacing, median_shape, pp: PatchPlan, batch_dice: bool, data_identifier: str,
                   settings: PlannerSettings, anisotropy_threshold: float) -> ConfigurationPlan:
    return ConfigurationPlan(
        name=name,
        spatial_dims=len(spacing),
        spacing=tuple(float(s) for s in spacing),
        median_shape=tuple(int(round(m)) for m in median_shape),
        patch_size=tuple(int(p) for p in pp.patch_size),
        batch_size=pp.batch_size,
        kernel_sizes=pp.topology.kernel_sizes,
        strides=pp.topology.strides,
        features=tuple(int(f) for f in pp.features),
        batch_dice=batch_dice,
        data_identifier=data_identifier,
        architecture=settings.architecture,
        blocks_per_stage=pp.encoder_blocks,
        resampling=resampling_plan(anisotropy_threshold),
    )


def _lowres_search(spacing, median_shape, fullres: PatchPlan, n_cases: int, n_classes: int,
                   settings: PlannerSettings, arch: ArchitectureRules):
    """Coarsen the spacing until a patch covers ``lowres_threshold`` of the median image.

    Returns ``(spacing, median_shape, PatchPlan)`` or ``None`` (not needed, or too close to fullres).
    """
    base = np.asarray(spacing, dtype=np.float64)
    median = np.asarray(median_shape, dtype=np.float64)
    lowres = None
    low_spacing, low_median, patch = tuple(spacing), median, fullres.patch_size
    while needs_lowres(patch, low_median, settings.lowres_threshold):
        low_spacing = next_lowres_spacing(low_spacing, settings.lowres_spacing_step)
        low_median = base / np.asarray(low_spacing) * median
        shape = tuple(float(round(m)) for m in low_median)
        voxels = float(np.prod(low_median))
        pp = patch_and_batch(low_spacing, shape, voxels * n_cases, n_classes, settings, arch)
        lowres = (low_spacing, shape, pp)
        patch = pp.patch_size
    if lowres is not None and float(np.prod(median) / np.prod(low_median)) < settings.lowres_min_voxel_ratio:
        return None
    return lowres


def _check_intensity(fingerprint: Fingerprint) -> None:
    """Every channel's intensity statistics must be finite: CT normalisation uses them, and NaN or inf
    there means the images hold no usable voxel or values beyond float32 (plans would normalise to NaN)."""
    bad = []
    for name, st in zip(fingerprint.channel_names, fingerprint.intensity):
        values = {k: getattr(st, k) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")}
        if not all(math.isfinite(v) for v in values.values()):
            bad.append(f"channel '{name}' ({', '.join(f'{k} {v:g}' for k, v in values.items())})")
    if bad:
        raise PlanningError(f"the fingerprint of {fingerprint.dataset_name} has non-finite intensity statistics for "
                            f"{'; '.join(bad)}: the images hold no non-zero voxel or values beyond the float32 "
                            "range; fix the images (`autoseg plan --check-only` lists them), then rerun "
                            "`autoseg plan --fresh`")


def plan_experiment(fingerprint: Fingerprint, spec: DatasetSpec, settings: PlannerSettings,
                    plans_name: str = "autosegPlans", *, arch: ArchitectureRules) -> Plans:
    """Plan every configuration for a dataset. Pure: reads nothing from disk.

    ``arch`` is the registry entry of ``settings.architecture``
    (``autoseg.models.get_architecture(settings.architecture)``): its rules lay out the networks."""
    if arch.name != settings.architecture:
        raise PlanningError(f"planner preset '{settings.preset}' plans for architecture '{settings.architecture}' "
                            f"but the rules of '{arch.name}' were given")
    if not fingerprint.cases:
        raise PlanningError(f"the fingerprint of {fingerprint.dataset_name} holds no cases; "
                            f"rerun `autoseg fingerprint` on a dataset with training cases")
    if len(fingerprint.intensity) != spec.num_channels:
        raise PlanningError(f"the fingerprint has {len(fingerprint.intensity)} channel(s) but dataset.json of "
                            f"{spec.name} declares {spec.num_channels}; rerun `autoseg fingerprint`")
    _check_intensity(fingerprint)
    spacing_xyz = target_spacing(fingerprint.spacings, fingerprint.shapes_after_crop,
                                 settings.anisotropy_threshold, settings.anisotropic_spacing_percentile)
    median_xyz = median_resampled_shape(fingerprint.spacings, fingerprint.shapes_after_crop, spacing_xyz)
    forward, backward = transpose_order(spacing_xyz, median_xyz)
    spacing = tuple(spacing_xyz[a] for a in forward)
    median = tuple(median_xyz[a] for a in forward)
    n_cases = len(fingerprint.cases)
    n_classes = spec.num_outputs
    dataset_voxels = math.prod(median) * n_cases
    thr = settings.anisotropy_threshold
    configs: dict[str, ConfigurationPlan] = {}

    pp2d = patch_and_batch(spacing[1:], median[1:], dataset_voxels, n_classes, settings, arch)
    configs["2d"] = _configuration("2d", spacing[1:], median[1:], pp2d, True, "3d_fullres", settings, thr)
    is_3d = median[0] != 1
    if is_3d:
        full = patch_and_batch(spacing, median, dataset_voxels, n_classes, settings, arch)
        low = _lowres_search(spacing, median, full, n_cases, n_classes, settings, arch)
        fullres = _configuration("3d_fullres", spacing, median, full, low is not None, "3d_fullres", settings, thr)
        configs["3d_fullres"] = fullres
        if low is not None:
            low_spacing, low_median, low_pp = low
            configs["3d_lowres"] = _configuration("3d_lowres", low_spacing, low_median, low_pp, False,
                                                  "3d_lowres", settings, thr)
            configs["3d_cascade_fullres"] = replace(fullres, name="3d_cascade_fullres", previous_stage="3d_lowres")
    default = "3d_fullres" if is_3d else "2d"
    wanted = configs[default]
    configs, unplanned = _trainable_only(configs, arch)
    if default in unplanned:
        raise PlanningError(_too_small(spec.name, wanted, unplanned[default], settings))
    norm = normalization_plan(spec.channel_names, fingerprint.intensity, fingerprint.median_relative_size_after_crop,
                              settings.mask_for_norm_threshold)
    return Plans(
        dataset_name=spec.name,
        plans_name=plans_name,
        planner=settings.preset,
        transpose_forward=tuple(forward),
        transpose_backward=tuple(backward),
        channel_names=tuple(spec.channel_names),
        labels=dict(spec.labels),
        normalization=norm,
        configurations=configs,
        default_configuration=default,
        settings={**settings.to_dict(), "target_spacing_xyz": list(spacing_xyz),
                  "median_shape_xyz": list(median_xyz), **({UNPLANNED_KEY: unplanned} if unplanned else {})},
    )


def unplanned_configurations(plans: Plans) -> dict[str, str]:
    """The configurations the planner left out of ``plans`` because their network could not be built
    or trained, each with the reason (:mod:`autoseg.planning.trainable`)."""
    found = plans.settings.get(UNPLANNED_KEY)
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _trainable_only(configs: dict[str, ConfigurationPlan], architecture: ArchitectureRules
                    ) -> tuple[dict[str, ConfigurationPlan], dict[str, str]]:
    """The configurations whose network can be built and trained, and why each other one cannot
    (:func:`~autoseg.planning.trainable.configuration_problems`); the cascade goes with its lowres stage."""
    kept, unplanned = {}, {}
    for name, cfg in configs.items():
        problems = configuration_problems(cfg, architecture)
        if cfg.previous_stage is not None and cfg.previous_stage not in kept and not problems:
            problems = [f"its previous stage {cfg.previous_stage} is not planned"]
        if problems:
            unplanned[name] = "; ".join(problems)
        else:
            kept[name] = cfg
    return kept, unplanned


def _too_small(dataset: str, cfg: ConfigurationPlan, reason: str, settings: PlannerSettings) -> str:
    """The refusal when the default configuration cannot be built: what is wrong and what to do."""
    shape = "x".join(str(m) for m in cfg.median_shape)
    mm = "x".join(f"{s:.3g}" for s in cfg.spacing)
    edge = settings.min_feature_map_edge
    return (f"{dataset}: the images are too small for a {cfg.spatial_dims}D U-Net: the median image is {shape} "
            f"voxels at {mm} mm "
            f"after resampling, and {reason} (an axis needs at least {2 * edge} voxels to be downsampled, "
            f"{settings.single_axis_pool_factor * edge} when it is the only one). Pad or resample the images to "
            f"more voxels, or plan a smaller network with a planner preset that sets a smaller bottleneck edge: "
            f"a .toml file holding `min_feature_map_edge = {max(1, edge // 2)}`, given as `--planner FILE.toml`")
