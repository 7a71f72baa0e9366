"""Architecture entry ``unet_plusplus``: MONAI BasicUNetPlusPlus (UNet++, Zhou et al. 2018), planned with
nnU-Net's memory rule.

Layout: 4 max-poolings by 2 on every axis, so every patch edge is a multiple of 16
(:func:`~autoseg.models.architecture.uniform_topology`). Channels ``(f, f, 2f, 4f, 8f, f)`` with
``f = plan.features[0]`` (32 in the preset: MONAI's default ``(32, 32, 64, 128, 256, 32)``); instance
norm, leaky ReLU, transposed-conv upsampling (MONAI's defaults). Memory: the number of convolution output
elements of the nested decoder (:func:`feature_map_size`) against nnU-Net's plain U-Net reference
(``planners/unet_plusplus.toml``). Its deep supervision (four full-resolution outputs) is not the
multi-resolution kind autoseg's loss expects, so it is off: the network returns ``x_0_4``'s logits, and
the three unused heads are frozen (no unused trainable parameter under DistributedDataParallel).
"""

from __future__ import annotations

import math
from typing import Sequence

from autoseg.models.architecture import Architecture, shrink_keeping_one_step, uniform_topology
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import Topology

DOWNSAMPLINGS = 4  # MONAI BasicUNetPlusPlus: conv_1_0 ... conv_4_0, each max-pooling by 2
DIVISOR = 2 ** DOWNSAMPLINGS
UNUSED_HEADS = ("final_conv_0_1", "final_conv_0_2", "final_conv_0_3")


def layout(spacing, patch, settings: PlannerSettings) -> Topology:
    return uniform_topology(patch, DOWNSAMPLINGS, math.lcm(DIVISOR, settings.patch_divisible_by))


def features(n_stages: int, dims: int, settings: PlannerSettings) -> tuple[int, ...]:
    f = settings.base_features
    return (f, f, 2 * f, 4 * f, 8 * f, f)


def feature_map_size(patch: Sequence[int], fea: Sequence[int], n_classes: int) -> int:
    """Convolution outputs of BasicUNetPlusPlus for one sample: two convs per encoder level; per nested
    node ``x_{i,j}`` the transposed conv from level ``i+1`` (``fea[i+1]`` channels at level 0, half of
    them below) and two convs (``fea[i]``; ``fea[5]`` for ``x_{0,4}``); the four 1x1 heads (MONAI computes
    all of them, whether or not their outputs are returned)."""
    sizes = [math.prod(p // 2 ** i for p in patch) for i in range(DOWNSAMPLINGS + 1)]
    total = sum(2 * fea[i] * sizes[i] for i in range(DOWNSAMPLINGS + 1))
    for j in range(1, DOWNSAMPLINGS + 1):
        for i in range(DOWNSAMPLINGS + 1 - j):
            up = fea[i + 1] if i == 0 else fea[i + 1] // 2
            out = fea[5] if (i, j) == (0, DOWNSAMPLINGS) else fea[i]
            total += (up + 2 * out) * sizes[i]
    return int(total + 4 * n_classes * sizes[0])


def estimate(topology: Topology, features_, n_classes: int, encoder_blocks, decoder_blocks) -> int:
    return feature_map_size(topology.patch_size, features_, n_classes)


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    from monai.networks.nets import BasicUNetPlusPlus  # MONAI and torch load only when a network is made

    from autoseg.models.norms import instance_to_group_norm
    from autoseg.models.wrappers import FirstOutput

    f = int(plan.features[0])
    net = BasicUNetPlusPlus(spatial_dims=plan.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                            features=(f, f, 2 * f, 4 * f, 8 * f, f), deep_supervision=False)
    for name in UNUSED_HEADS:
        getattr(net, name).requires_grad_(False)
    return FirstOutput(instance_to_group_norm(net))


ARCHITECTURE = Architecture(
    name="unet_plusplus",
    summary="MONAI BasicUNetPlusPlus (UNet++; patch edges multiples of 16)",
    preset="unet_plusplus",
    deep_supervision=False,
    head_names=("final_conv_0_1", "final_conv_0_2", "final_conv_0_3", "final_conv_0_4"),
    layout=layout,
    features=features,
    estimate=estimate,
    can_shrink=shrink_keeping_one_step,
    build=build,
)

