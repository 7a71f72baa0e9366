"""Architecture entry ``resenc_unet``: nnU-Net's residual-encoder U-Net (:mod:`autoseg.models.resenc`).

Planned as nnU-Net v2's ``ResEncUNetPlanner`` plans its ``ResidualEncoderUNet``
(``nnunetv2/experiment_planning/experiment_planners/residual_unets/residual_encoder_unet_planners.py``):
the plain U-Net's layout and features; memory as the network's own
``compute_conv_feature_map_size`` (``dynamic_network_architectures``), which
:func:`~autoseg.planning.topology.estimate_feature_map_size` with ``residual=True`` reproduces (a test
checks the two agree): the stem, two convs per residual block plus the 1x1 projection of each stage's
first block, one conv per decoder stage (:data:`DECODER_CONVS`) and the transposed convs.
Presets: ``planners/resenc_m.toml``, ``resenc_l.toml`` (nnU-Net's recommended one), ``resenc_xl.toml``.
"""

from __future__ import annotations

from autoseg.models.architecture import Architecture
from autoseg.models.unet import nnunet_features, nnunet_layout
from autoseg.planning.topology import Topology, estimate_feature_map_size
from autoseg.planning.trainable import unet_problems

ARCHITECTURE_NAME = "resenc_unet"

# nnU-Net ResEncUNetPlanner: UNet_blocks_per_stage_decoder = 1; the network is built with it too
DECODER_CONVS = 1
# nnU-Net ResEncUNetPlanner: UNet_blocks_per_stage_encoder = (1, 3, 4, 6, 6, 6, ...); used for plans made
# for another architecture (`train --arch resenc_unet` on the default plans), whose blocks are plain convs
DEFAULT_BLOCKS = (1, 3, 4, 6)


def encoder_blocks(plan) -> tuple[int, ...]:
    """Residual blocks per encoder stage: the plan's when it was planned for this architecture, else
    nnU-Net's (1, 3, 4, 6, 6, ...)."""
    n = len(plan.strides)
    if plan.architecture == ARCHITECTURE_NAME:
        return tuple(plan.blocks_per_stage)
    return tuple(DEFAULT_BLOCKS[min(i, len(DEFAULT_BLOCKS) - 1)] for i in range(n))


def resenc_estimate(topology: Topology, features, n_classes: int, encoder_blocks, decoder_blocks) -> int:
    """Feature-map elements of the network :func:`build` makes (its decoder has one conv per stage,
    whatever ``decoder_blocks`` says)."""
    return estimate_feature_map_size(topology.patch_size, topology.strides, features, n_classes, encoder_blocks,
                                     (DECODER_CONVS,) * (topology.n_stages - 1), residual=True)


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    from autoseg.models.resenc import build_resenc  # torch loads only when a network is made

    return build_resenc(plan, in_channels, out_channels, deep_supervision, blocks=encoder_blocks(plan),
                        decoder_convs=DECODER_CONVS)


ARCHITECTURE = Architecture(
    name=ARCHITECTURE_NAME,
    summary="nnU-Net's residual-encoder U-Net (ResEnc M/L/XL; dynamic_network_architectures)",
    preset="resenc_l",
    deep_supervision=True,
    head_names=("seg_layers",),
    layout=nnunet_layout,
    features=nnunet_features,
    estimate=resenc_estimate,
    build=build,
    problems=unet_problems,
)
