"""Architecture entry ``swin_unetr``: MONAI SwinUNETR (Hatamizadeh et al. 2022), planned with nnU-Net's rules.

SwinUNETR downsamples 5 times on every axis (patch embedding /2, then 4 patch-merging stages), so
every patch edge must be a multiple of 2**5 = 32 (MONAI raises otherwise); its layout is fixed
(:func:`swin_topology`). ``feature_size`` is ``plan.features[0]`` rounded up to a multiple of 12
(attention heads 3, 6, 12, 24); channels per resolution are fs, fs, 2fs, 4fs, 8fs, 16fs
(:func:`swin_features`). Memory: the plain U-Net feature-map formula on those channels (a proxy;
attention maps are not counted), with references calibrated in ``planners/swin_unetr.toml``.
No deep supervision: the network always returns one tensor.
"""

from __future__ import annotations

import math
from typing import Sequence

from autoseg.models.architecture import (TRANSFORMER_TRAINING, Architecture, ModelError, shrink_keeping_one_step,
                                         uniform_topology)
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import Topology, estimate_feature_map_size

DOWNSAMPLINGS = 5  # MONAI SwinUNETR: patch embedding + 4 patch-merging stages, each /2 on every axis
DIVISOR = 2 ** DOWNSAMPLINGS
FEATURE_STEP = 12  # MONAI SwinUNETR: feature_size must be a multiple of 12


def swin_topology(patch_size: Sequence[float], divisor: int = DIVISOR) -> Topology:
    """SwinUNETR's fixed layout: 5 downsamplings on every axis, each edge a multiple of ``divisor``
    (see :func:`~autoseg.models.architecture.uniform_topology`)."""
    return uniform_topology(patch_size, DOWNSAMPLINGS, divisor)


def swin_features(feature_size: int) -> tuple[int, ...]:
    """Channels per resolution of MONAI SwinUNETR: full, /2, /4, /8, /16, /32 ->
    fs, fs, 2fs, 4fs, 8fs, 16fs."""
    return (feature_size,) + tuple(feature_size * 2 ** i for i in range(DOWNSAMPLINGS))


def swin_feature_size(features0: int) -> int:
    """SwinUNETR ``feature_size``: the plan's first-stage features rounded up to a multiple of 12."""
    return max(FEATURE_STEP, -(-int(features0) // FEATURE_STEP) * FEATURE_STEP)


def layout(spacing, patch, settings: PlannerSettings) -> Topology:
    return swin_topology(patch, math.lcm(DIVISOR, settings.patch_divisible_by))


def features(n_stages: int, dims: int, settings: PlannerSettings) -> tuple[int, ...]:
    return swin_features(settings.base_features)


def estimate(topology: Topology, features_, n_classes: int, encoder_blocks, decoder_blocks) -> int:
    """Proxy: a plain U-Net with SwinUNETR's channels per resolution (see ``planners/swin_unetr.toml``)."""
    return estimate_feature_map_size(topology.patch_size, topology.strides, features_, n_classes, encoder_blocks,
                                     decoder_blocks)


def swin_problems(plan) -> list[str]:
    """SwinUNETR's constraints on a plan: every patch edge a multiple of 32 (MONAI raises otherwise) and
    more than one bottleneck voxel (instance norm rejects a single one)."""
    patch = tuple(plan.patch_size)
    if any(p % DIVISOR for p in patch):
        return [f"swin_unetr needs every patch edge divisible by {DIVISOR}, the patch is {patch}"]
    if all(p == DIVISOR for p in patch):
        return [f"swin_unetr cannot train on patch {patch}: its bottleneck would be a single voxel, which instance "
                f"norm rejects; it needs an edge of {2 * DIVISOR} or more"]
    return []


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    """MONAI SwinUNETR; ``feature_size`` from ``plan.features[0]`` (see :func:`swin_feature_size`)."""
    from monai.networks.nets import SwinUNETR  # MONAI loads only when a network is made

    problems = swin_problems(plan)
    if problems:
        raise ModelError(f"configuration '{plan.name}': {'; '.join(problems)}; choose --arch unet or re-plan")
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels,
                     feature_size=swin_feature_size(plan.features[0]), spatial_dims=plan.spatial_dims)


ARCHITECTURE = Architecture(
    name="swin_unetr",
    summary="MONAI SwinUNETR (patch edges multiples of 32; no deep supervision)",
    preset="swin_unetr",
    deep_supervision=False,
    head_names=("out",),
    layout=layout,
    features=features,
    estimate=estimate,
    can_shrink=shrink_keeping_one_step,
    build=build,
    training=TRANSFORMER_TRAINING,
    problems=swin_problems,
)
