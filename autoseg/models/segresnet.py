"""Architecture entry ``segresnet``: MONAI SegResNet (Myronenko 2018), the network of MONAI Auto3DSeg's
default SegResNet template, planned with nnU-Net's memory rule.

Layout: 4 downsamplings by 2 on every axis (``blocks_down`` has 5 levels), so every patch edge is a
multiple of 16 (:func:`~autoseg.models.architecture.uniform_topology`). Channels ``init_filters * 2**i``
with ``init_filters = plan.features[0]`` (32 in the preset, as in Auto3DSeg); residual blocks per level
(1, 2, 2, 4, 4) down and one per level up, as Auto3DSeg's template; instance norm (swapped for the
equivalent group norm, :func:`~autoseg.models.norms.instance_to_group_norm`). Memory: the number of
convolution output elements of this network (:func:`feature_map_size`), against nnU-Net's reference for
its plain U-Net (``planners/segresnet.toml``), i.e. one activation element is assumed to cost what it
costs in nnU-Net's network. No deep supervision.
"""

from __future__ import annotations

import math
from typing import Sequence

from autoseg.models.architecture import Architecture, shrink_keeping_one_step, uniform_topology
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import Topology

BLOCKS_DOWN = (1, 2, 2, 4, 4)  # MONAI Auto3DSeg SegResNet template
BLOCKS_UP = (1, 1, 1, 1)
DOWNSAMPLINGS = len(BLOCKS_DOWN) - 1
DIVISOR = 2 ** DOWNSAMPLINGS


def layout(spacing, patch, settings: PlannerSettings) -> Topology:
    return uniform_topology(patch, DOWNSAMPLINGS, math.lcm(DIVISOR, settings.patch_divisible_by))


def features(n_stages: int, dims: int, settings: PlannerSettings) -> tuple[int, ...]:
    return tuple(settings.base_features * 2 ** i for i in range(DOWNSAMPLINGS + 1))


def feature_map_size(patch: Sequence[int], features_: Sequence[int], n_classes: int) -> int:
    """Convolution outputs of MONAI SegResNet for one sample: the initial conv; per level the strided
    down conv (below full resolution) and two convs per residual block; per decoder level a 1x1 conv
    (at the lower resolution) and two convs per block; the final 1x1 conv."""
    sizes, cur = [], list(patch)
    for level in range(len(features_)):
        sizes.append(math.prod(cur))
        cur = [c // 2 for c in cur]
    total = features_[0] * sizes[0]
    for level, (f, n) in enumerate(zip(features_, BLOCKS_DOWN)):
        total += (int(level > 0) + 2 * n) * f * sizes[level]
    for level in range(len(features_) - 2, -1, -1):
        total += features_[level] * sizes[level + 1] + 2 * BLOCKS_UP[level] * features_[level] * sizes[level]
    return int(total + n_classes * sizes[0])


def estimate(topology: Topology, features_, n_classes: int, encoder_blocks, decoder_blocks) -> int:
    return feature_map_size(topology.patch_size, features_, n_classes)


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    from monai.networks.nets import SegResNet  # MONAI loads only when a network is made

    from autoseg.models.norms import instance_to_group_norm

    net = SegResNet(spatial_dims=plan.spatial_dims, init_filters=int(plan.features[0]), in_channels=in_channels,
                    out_channels=out_channels, norm=("INSTANCE", {"affine": True}), blocks_down=BLOCKS_DOWN,
                    blocks_up=BLOCKS_UP)
    return instance_to_group_norm(net)


ARCHITECTURE = Architecture(
    name="segresnet",
    summary="MONAI SegResNet as in Auto3DSeg (residual blocks 1,2,2,4,4; patch edges multiples of 16)",
    preset="segresnet",
    deep_supervision=False,
    head_names=("conv_final",),
    layout=layout,
    features=features,
    estimate=estimate,
    can_shrink=shrink_keeping_one_step,
    build=build,
)
