"""Architecture entry ``mednext``: MONAI MedNeXt (Roy et al., MICCAI 2023), size L with 3-kernels, the
best model of "nnU-Net Revisited" (Isensee et al., MICCAI 2024), planned with nnU-Net's memory rule.

Layout: 4 halvings on every axis (``blocks_down`` has 4 levels), so every patch edge is a multiple of
16 (:func:`~autoseg.models.architecture.uniform_topology`). MedNeXt-L as MONAI's ``create_mednext("L")``
builds it (blocks 3, 4, 8, 8 / 8 / 8, 8, 4, 3; expansion ratios 3, 4, 8, 8 / 8 / 8, 8, 4, 3; residual
connections; group norm), with ``init_filters = plan.features[0]`` (32 in the preset, as MONAI's).
Memory: the number of convolution output elements of the network (:func:`feature_map_size`) against
nnU-Net's plain U-Net reference (``planners/mednext.toml``). Deep supervision: MONAI's heads at 1/2,
1/4, 1/8 (the 1/16 one has loss weight 0 and is frozen; :class:`~autoseg.models.wrappers.WithoutLowestOutput`).
"""

from __future__ import annotations

import math
from typing import Sequence

from autoseg.models.architecture import Architecture, shrink_keeping_one_step, uniform_topology
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import Topology

# MONAI create_mednext("L"): MedNeXt-L
BLOCKS_DOWN, BLOCKS_BOTTLENECK, BLOCKS_UP = (3, 4, 8, 8), 8, (8, 8, 4, 3)
EXPANSION_DOWN, EXPANSION_BOTTLENECK, EXPANSION_UP = (3, 4, 8, 8), 8, (8, 8, 4, 3)
KERNEL_SIZE = 3
DOWNSAMPLINGS = len(BLOCKS_DOWN)
DIVISOR = 2 ** DOWNSAMPLINGS


def layout(spacing, patch, settings: PlannerSettings) -> Topology:
    return uniform_topology(patch, DOWNSAMPLINGS, math.lcm(DIVISOR, settings.patch_divisible_by))


def features(n_stages: int, dims: int, settings: PlannerSettings) -> tuple[int, ...]:
    return tuple(settings.base_features * 2 ** i for i in range(DOWNSAMPLINGS + 1))


def feature_map_size(patch: Sequence[int], features_: Sequence[int], n_classes: int) -> int:
    """Convolution outputs of MedNeXt for one sample (no deep-supervision heads): the 1x1 stem; per
    block a depthwise conv, a 1x1 expansion (ratio R) and a 1x1 compression, ``(2 + R) * C``; per down
    block the same on the halved grid plus its strided 1x1 residual conv (``2C``); per up block a
    transposed depthwise conv, expansion and compression plus its transposed residual conv, on a grid one
    voxel short per axis (MONAI pads it afterwards); the 1x1 output conv."""
    s = [math.prod(p // 2 ** i for p in patch) for i in range(DOWNSAMPLINGS + 1)]
    short = [math.prod(p // 2 ** i - 1 for p in patch) for i in range(DOWNSAMPLINGS + 1)]
    c = features_
    total = c[0] * s[0]
    for i, (n, r) in enumerate(zip(BLOCKS_DOWN, EXPANSION_DOWN)):
        total += n * (2 + r) * c[i] * s[i]
        total += (c[i] + r * c[i] + 2 * c[i + 1]) * s[i + 1]  # down block: dw, expand, compress, residual
    total += BLOCKS_BOTTLENECK * (2 + EXPANSION_BOTTLENECK) * c[-1] * s[-1]
    for k, (n, r) in enumerate(zip(BLOCKS_UP, EXPANSION_UP)):
        i = DOWNSAMPLINGS - 1 - k
        total += (c[i + 1] + r * c[i + 1] + 2 * c[i]) * short[i]  # up block: transposed dw, expand, compress, residual
        total += n * (2 + r) * c[i] * s[i]
    return int(total + n_classes * s[0])


def estimate(topology: Topology, features_, n_classes: int, encoder_blocks, decoder_blocks) -> int:
    return feature_map_size(topology.patch_size, features_, n_classes)


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    from monai.networks.nets import MedNeXt  # MONAI and torch load only when a network is made

    from autoseg.models.wrappers import WithoutLowestOutput

    net = MedNeXt(spatial_dims=plan.spatial_dims, init_filters=int(plan.features[0]), in_channels=in_channels,
                  out_channels=out_channels, encoder_expansion_ratio=EXPANSION_DOWN,
                  decoder_expansion_ratio=EXPANSION_UP, bottleneck_expansion_ratio=EXPANSION_BOTTLENECK,
                  kernel_size=KERNEL_SIZE, deep_supervision=deep_supervision, use_residual_connection=True,
                  blocks_down=BLOCKS_DOWN, blocks_bottleneck=BLOCKS_BOTTLENECK, blocks_up=BLOCKS_UP,
                  norm_type="group", global_resp_norm=False)
    if deep_supervision:
        net.out_blocks[0].requires_grad_(False)  # the bottleneck-level head: loss weight 0
    return WithoutLowestOutput(net)


ARCHITECTURE = Architecture(
    name="mednext",
    summary="MONAI MedNeXt-L, 3-kernels (patch edges multiples of 16)",
    preset="mednext",
    deep_supervision=True,
    head_names=("out_0", "out_blocks"),
    layout=layout,
    features=features,
    estimate=estimate,
    can_shrink=shrink_keeping_one_step,
    build=build,
)
