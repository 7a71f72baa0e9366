"""Architecture entry ``attention_unet``: MONAI AttentionUnet (Oktay et al. 2018), on nnU-Net's layout.

Layout, features and memory as the plain U-Net (``unet``): nnU-Net's adaptive pooling (anisotropic
strides for thick-slice data; the plan's strides are the network's), channels doubling from
``base_features`` up to the cap, and nnU-Net's plain-network feature-map count as the memory estimate
(the attention gates add a few feature maps of the skip's size per decoder stage, not counted). MONAI's
AttentionUnet takes one kernel size for every stage: 3 on every axis. Its blocks use MONAI's batch norm
(as published). No deep supervision. Preset: ``planners/attention_unet.toml``.
"""

from __future__ import annotations

from autoseg.models.architecture import Architecture
from autoseg.models.unet import nnunet_features, nnunet_layout, plain_estimate


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    from monai.networks.nets import AttentionUnet  # MONAI loads only when a network is made

    from autoseg.models.architecture import ModelError

    n = len(plan.strides)
    if n < 2 or len(plan.features) < n:
        raise ModelError(f"configuration '{plan.name}': attention_unet needs at least 2 stages and one feature "
                         f"count per stage; rerun `autoseg plan`")
    return AttentionUnet(spatial_dims=plan.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         channels=tuple(int(f) for f in plan.features[:n]),
                         strides=tuple(tuple(s) for s in plan.strides[1:]), kernel_size=3, up_kernel_size=3)


ARCHITECTURE = Architecture(
    name="attention_unet",
    summary="MONAI AttentionUnet (attention-gated skips) on nnU-Net's layout",
    preset="attention_unet",
    deep_supervision=False,
    head_names=("model.2",),  # MONAI AttentionUnet: input block, nested levels, then the 1x1 output conv
    layout=nnunet_layout,
    features=nnunet_features,
    estimate=plain_estimate,
    build=build,
)
