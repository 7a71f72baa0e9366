"""nnU-Net's residual-encoder U-Net (ResEnc M/L/XL), built with nnU-Net's own network package.

``dynamic_network_architectures`` ``ResidualEncoderUNet`` with the arguments nnU-Net v2's
``ResEncUNetPlanner`` writes into its plans
(``nnunetv2/experiment_planning/experiment_planners/residual_unets/residual_encoder_unet_planners.py``):
a stem conv, then ``plan.blocks_per_stage`` residual blocks (ResNet-D ``BasicBlockD``) per encoder
stage, the first of each stage strided; one conv per decoder stage; conv bias, affine instance norm
(eps 1e-5), leaky ReLU (slope 0.01), no dropout; He initialisation with the last norm of every
residual block zeroed (``ResidualEncoderUNet.initialize``). Parameter names are the package's, so an
nnU-Net checkpoint of the same plan loads as it is (they are the same from version 0.3.1 to 0.4.x).

Deep supervision follows :mod:`autoseg.models.architecture`: the lowest-resolution decoder output
(loss weight 0 in nnU-Net) is neither computed nor trained, but its head stays in the state dict.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from autoseg.models.architecture import ModelError
from autoseg.models.norms import instance_to_group_norm
from autoseg.planning.plans import ConfigurationPlan
_CONVS = {2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class ResEncUNet(ResidualEncoderUNet):
    """``ResidualEncoderUNet`` returning autoseg's outputs: in training with deep supervision,
    ``[full, 1/2, ...]`` without the lowest-resolution output; otherwise the full-resolution logits.
    ``decoder.deep_supervision`` stays False, as in the network nnU-Net's planner measures with
    ``compute_conv_feature_map_size``."""

    def __init__(self, supervise: bool, **kwargs):
        super().__init__(deep_supervision=False, **kwargs)
        n_decoder = len(self.decoder.stages)
        # the lowest-resolution output is needed only when it is the only one (2 stages)
        self.supervise = supervise and n_decoder >= 3
        if n_decoder >= 2:
            self.decoder.seg_layers[0].requires_grad_(False)

    def forward(self, x: torch.Tensor):
        skips = self.encoder(x)
        dec = self.decoder
        supervised = self.training and self.supervise
        last = len(dec.stages) - 1
        outputs, low = [], skips[-1]
        for s in range(last + 1):  # dynamic_network_architectures UNetDecoder.forward, minus the weight-0 head
            low = dec.stages[s](torch.cat((dec.transpconvs[s](low), skips[-(s + 2)]), dim=1))
            if s == last or (supervised and s >= 1):
                outputs.append(dec.seg_layers[s](low))
        return outputs[::-1] if supervised else outputs[-1]


def build_resenc(plan: ConfigurationPlan, in_channels: int, out_channels: int, deep_supervision: bool, *,
                 blocks: tuple[int, ...], decoder_convs: int) -> nn.Module:
    """The ResEnc U-Net of ``plan`` (kernels, strides and features per stage) with ``blocks`` residual
    blocks per encoder stage and ``decoder_convs`` convs per decoder stage (what the architecture entry
    :mod:`autoseg.models.resenc_unet` decides: :func:`~autoseg.models.resenc_unet.encoder_blocks`)."""
    n = len(plan.strides)
    if len(plan.kernel_sizes) != n or len(plan.features) < n or len(blocks) < n:
        raise ModelError(f"configuration '{plan.name}': {len(plan.kernel_sizes)} kernel sizes, {n} strides, "
                         f"{len(plan.features)} feature counts and {len(blocks)} block counts do not "
                         "describe one residual-encoder U-Net; rerun `autoseg plan --planner resenc_l` (or _m, _xl)")
    if n < 2:
        raise ModelError(f"configuration '{plan.name}': a U-Net needs at least 2 stages, the plan has {n}")
    dims = plan.spatial_dims
    net = ResEncUNet(
        supervise=deep_supervision, input_channels=in_channels, n_stages=n,
        features_per_stage=tuple(plan.features[:n]), conv_op=_CONVS[dims],
        kernel_sizes=[list(k) for k in plan.kernel_sizes], strides=[list(s) for s in plan.strides],
        n_blocks_per_stage=blocks[:n], num_classes=out_channels,
        n_conv_per_stage_decoder=(decoder_convs,) * (n - 1), conv_bias=True, norm_op=_NORMS[dims],
        norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    net.apply(ResidualEncoderUNet.initialize)
    return instance_to_group_norm(net)
