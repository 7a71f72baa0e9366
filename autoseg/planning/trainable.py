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

# A U-Net needs one downsampling: an input block and a strided bottleneck with one upsampling block
# back. nnU-Net plans such 2-stage networks for small images (get_pool_and_conv_props gives one pool
# for a 12x16 patch) and its PlainConvUNet trains them; with no pool at all (1 stage) it fails.
# MONAI's DynUNet asks for 3 stages in check_kernel_stride, but builds and trains 2 (see
# autoseg.models.dynunet.two_stage_dynunet).
MIN_STAGES = 2


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


def unet_problems(cfg: ConfigurationPlan) -> list[str]:
    """The rule of U-Nets laid out as nnU-Net lays them out (``unet``, ``resenc_unet``): at least one
    downsampling, a patch divisible by the strides' product per axis, more than one bottleneck voxel."""
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


def configuration_problems(cfg: ConfigurationPlan, architecture=None) -> list[str]:
    """What keeps ``cfg`` from being built and trained as ``architecture`` (a registry entry, whose
    ``problems`` rule states the network's own constraints; None: the layout checks alone); empty when
    it can be. Each problem is one sentence without the fix (callers add theirs)."""
    problems = _layout_problems(cfg)
    if problems or architecture is None:
        return problems
    return list(architecture.problems(cfg))
