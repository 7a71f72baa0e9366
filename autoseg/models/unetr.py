"""Architecture entry ``unetr``: MONAI UNETR (Hatamizadeh et al., WACV 2022), planned with nnU-Net's
memory rule.

A ViT on 16^3 patches (12 layers, 12 heads) with a convolutional decoder that upsamples 4 times, so
every patch edge is a multiple of 16 (:func:`~autoseg.models.architecture.uniform_topology`); the network
is built for the plan's patch (``img_size``). Its sizes scale with ``feature_size = plan.features[0]``:
hidden size ``48 * feature_size`` and MLP ``4 * hidden``, i.e. the published 768 / 3072 at the paper's
feature size 16 (the preset's). Memory (:func:`feature_map_size`): the decoder's convolution outputs
plus the transformer's activations per layer (norms, q/k/v, projection, MLP and GELU, ``16 * hidden``
per token, and the attention scores before and after the softmax, ``2 * heads * tokens^2``), against
nnU-Net's plain U-Net reference (``planners/unetr.toml``). No deep supervision.
"""

from __future__ import annotations

import math
from typing import Sequence

from autoseg.models.architecture import TRANSFORMER_TRAINING, Architecture, shrink_keeping_one_step, uniform_topology
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import Topology

VIT_PATCH = 16  # MONAI UNETR: 16^3 tokens, decoded by 4 upsamplings
DOWNSAMPLINGS = 4
LAYERS, HEADS = 12, 12  # MONAI UNETR / ViT-B
HIDDEN_PER_FEATURE = 48  # hidden 768 at feature_size 16


def layout(spacing, patch, settings: PlannerSettings) -> Topology:
    return uniform_topology(patch, DOWNSAMPLINGS, math.lcm(VIT_PATCH, settings.patch_divisible_by))


def features(n_stages: int, dims: int, settings: PlannerSettings) -> tuple[int, ...]:
    """Decoder channels per resolution (f, 2f, 4f, 8f) and the hidden size at 1/16."""
    f = settings.base_features
    return (f, 2 * f, 4 * f, 8 * f, HIDDEN_PER_FEATURE * f)


def conv_feature_map_size(patch: Sequence[int], features_: Sequence[int], n_classes: int) -> int:
    """Convolution outputs of UNETR for one sample: the patch embedding; encoder1 (residual block of 3
    convs at full resolution); encoder2-4 (a transposed conv from the tokens, then 2, 1, 0 blocks of a
    transposed conv and two convs, each doubling the resolution); decoder5-2 (a transposed conv and a
    residual block of 3 convs each); the 1x1 output conv."""
    s = [math.prod(p // 2 ** i for p in patch) for i in range(DOWNSAMPLINGS + 1)]
    f, hidden = features_[:4], features_[4]
    total = hidden * s[4] + 3 * f[0] * s[0]
    for level, ups in ((1, 2), (2, 1), (3, 0)):  # encoder2..4: channels f[level], `ups` upsampling blocks
        total += f[level] * s[3] + sum(3 * f[level] * s[3 - k] for k in range(1, ups + 1))
    total += sum(4 * f[level] * s[level] for level in range(4))  # decoder5..2
    return int(total + n_classes * s[0])


def transformer_activations(tokens: int, hidden: int) -> int:
    return LAYERS * (16 * hidden * tokens + 2 * HEADS * tokens * tokens) + hidden * tokens


def feature_map_size(patch: Sequence[int], features_: Sequence[int], n_classes: int) -> int:
    tokens = math.prod(p // VIT_PATCH for p in patch)
    return conv_feature_map_size(patch, features_, n_classes) + transformer_activations(tokens, features_[4])


def estimate(topology: Topology, features_, n_classes: int, encoder_blocks, decoder_blocks) -> int:
    return feature_map_size(topology.patch_size, features_, n_classes)


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    from monai.networks.nets import UNETR  # MONAI loads only when a network is made

    from autoseg.models.architecture import ModelError
    from autoseg.models.norms import instance_to_group_norm

    if any(p % VIT_PATCH for p in plan.patch_size):
        raise ModelError(f"unetr needs every patch edge divisible by {VIT_PATCH}, configuration '{plan.name}' has "
                         f"patch {tuple(plan.patch_size)}; re-plan with --planner unetr")
    f = int(plan.features[0])
    hidden = HIDDEN_PER_FEATURE * f
    net = UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(plan.patch_size), feature_size=f,
                hidden_size=hidden, mlp_dim=4 * hidden, num_heads=HEADS, proj_type="conv", norm_name="instance",
                res_block=True, spatial_dims=plan.spatial_dims)
    return instance_to_group_norm(net)


ARCHITECTURE = Architecture(
    name="unetr",
    summary="MONAI UNETR (ViT-B encoder on 16^3 tokens; patch edges multiples of 16)",
    preset="unetr",
    deep_supervision=False,
    head_names=("out",),
    layout=layout,
    features=features,
    estimate=estimate,
    can_shrink=shrink_keeping_one_step,
    build=build,
    training=TRANSFORMER_TRAINING,
)
