"""Whether a configuration plan can be built and trained: the networks' and the trainer's constraints
as pure rules on the plan's numbers (no torch).

The planner leaves out a configuration that breaks them (and refuses to plan when it is the default
one, saying what to do), so whatever ``autoseg plan`` writes trains; the model registry checks a
plan (perhaps edited by hand) the same way before building, so ``autoseg train`` refuses it before
it makes a run folder.

Per-axis tuples in the plan's (transposed) order; patch sizes in voxels.
"""

from __future__ import annotations

import math

from autoseg.planning.plans import ConfigurationPlan
from autoseg.planning.settings import SWIN_DOWNSAMPLINGS

# A U-Net needs one downsampling: an input block and a strided bottleneck with one upsampling block
# back. nnU-Net plans such 2-stage networks for small images (get_pool_and_conv_props gives one pool
# for a 12x16 patch) and its PlainConvUNet trains them; with no pool at all (1 stage) it fails.
# MONAI's DynUNet asks for 3 stages in check_kernel_stride, but builds and trains 2 (see
# autoseg.models.registry._dynunet_class).
MIN_STAGES = 2
SWIN_DIVISOR = 2 ** SWIN_DOWNSAMPLINGS  # SwinUNETR: every patch edge divisible by 32 (MONAI raises otherwise)
DYNUNET_ARCHITECTURES = ("unet", "resenc_unet")


def bottleneck_shape(patch_size, strides) -> tuple[int, ...]:
    """Patch edges after every stride (``ceil`` per stage, as a same-padded strided convolution)."""
    shape = [int(p) for p in patch_size]
    for stride in strides:
        shape = [math.ceil(s / st) for s, st in zip(shape, stride)]
    return tuple(shape)


def _layout_problems(cfg: ConfigurationPlan) -> list[str]:
    dims, n = cfg.spatial_dims, len(cfg.strides)
    if dims not in (2, 3):
        return [f"{dims} spatial dimensions (a network is 2D or 3D)"]
    problems = []
    if len(cfg.patch_size) != dims or any(p < 1 for p in cfg.patch_size):
        problems.append(f"patch {tuple(cfg.patch_size)} is not {dims} positive sizes")
    if len(cfg.kernel_sizes) != n or len(cfg.features) < n:
        problems.append(f"{len(cfg.kernel_sizes)} kernel sizes, {n} strides and {len(cfg.features)} feature counts "
                        "do not describe one network")
    if any(len(t) != dims for t in (*cfg.kernel_sizes, *cfg.strides)):
        problems.append(f"kernel sizes and strides need {dims} entries each")
    elif any(k < 1 or k % 2 == 0 for t in cfg.kernel_sizes for k in t) or any(s < 1 for t in cfg.strides for s in t):
        problems.append("kernel sizes must be odd and strides at least 1 (same-padded convolutions)")
    if any(f < 1 for f in cfg.features):
        problems.append(f"feature counts {tuple(cfg.features)} must be at least 1")
    if cfg.batch_size < 1:
        problems.append(f"batch size {cfg.batch_size} must be at least 1")
    return problems


def _dynunet_problems(cfg: ConfigurationPlan) -> list[str]:
    n, patch = len(cfg.strides), tuple(cfg.patch_size)
    if n < MIN_STAGES:
        return [f"a U-Net needs at least {MIN_STAGES} stages (one downsampling), the plan has {n}: its patch "
                f"{patch} is too small to downsample"]
    problems = []
    steps = tuple(math.prod(s[a] for s in cfg.strides) for a in range(cfg.spatial_dims))
    if any(p % d for p, d in zip(patch, steps)):
        problems.append(f"patch {patch} is not divisible by {steps} (the product of the strides per axis), so the "
                        "decoder cannot match the encoder's feature maps")
    elif math.prod(bottleneck_shape(patch, cfg.strides)) < 2:
        problems.append(f"patch {patch} leaves a single-voxel bottleneck, which instance norm cannot normalise")
    return problems


def _swin_problems(cfg: ConfigurationPlan) -> list[str]:
    patch = tuple(cfg.patch_size)
    if any(p % SWIN_DIVISOR for p in patch):
        return [f"swin_unetr needs every patch edge divisible by {SWIN_DIVISOR}, the patch is {patch}"]
    if all(p == SWIN_DIVISOR for p in patch):
        return [f"swin_unetr cannot train on patch {patch}: its bottleneck would be a single voxel, which "
                f"instance norm rejects; it needs an edge of {2 * SWIN_DIVISOR} or more"]
    return []


def configuration_problems(cfg: ConfigurationPlan, architecture: str | None = None) -> list[str]:
    """What keeps ``cfg`` from being built as ``architecture`` (default: the plan's) and trained;
    empty when it can be. Each problem is one sentence without the fix (callers add theirs)."""
    problems = _layout_problems(cfg)
    if problems:
        return problems
    arch = architecture or cfg.architecture
    if arch in DYNUNET_ARCHITECTURES:
        return _dynunet_problems(cfg)
    if arch == "swin_unetr":
        return _swin_problems(cfg)
    return []
