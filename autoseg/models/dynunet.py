"""nnU-Net's plain U-Net as MONAI ``DynUNet``, with autoseg's deep-supervision outputs and a faster decoder.

Used by the ``unet`` entry (:mod:`autoseg.models.unet`). Deep-supervision outputs follow
:mod:`autoseg.models.architecture`: a 5-stage U-Net returns 3 outputs in training (weights 4/7, 2/7,
1/7, the same numbers as nnU-Net's (0.571, 0.286, 0.143, 0) over its 4 decoder outputs); a net with
fewer than 4 stages returns one output.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetUpBlock
from monai.networks.nets import DynUNet
from torch import nn

from autoseg.models.architecture import ModelError
from autoseg.models.norms import instance_to_group_norm
from autoseg.planning.plans import ConfigurationPlan
from autoseg.planning.trainable import configuration_problems, unet_problems


class DeepSupervisedDynUNet(nn.Module):
    """MONAI DynUNet whose deep-supervision outputs stay at their own resolution.

    MONAI's DynUNet upsamples every supervision head to full resolution and stacks them; nnU-Net
    instead downsamples the target, which is cheaper (the losses of the coarse outputs run on 1/8,
    1/64, ... of the voxels). This wrapper reads the heads directly and returns them as a list.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        if not (self.training and self.net.deep_supervision):
            return self.net(x)
        out = self.net.output_block(self.net.skip_layers(x))
        return [out, *self.net.heads]


_CONV_FUNCTIONS = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}


class ConcatFreeUpBlock(nn.Module):
    """MONAI ``UnetUpBlock`` (plain two-conv block) that, in training, never concatenates: its first
    convolution runs on the upsampled tensor and on the skip tensor separately, with the matching
    halves of the same weight, and the two results are summed -- ``conv(cat(u, s), W) = conv(u, W_u) +
    conv(s, W_s)``, the same function up to float rounding (~1e-5). On the CPU that is cheaper than
    one convolution over the concatenated copy (full-resolution 64->32 layer, forward + backward:
    0.77x the time; a whole Hippocampus training step ~5% less CPU time, in-process A/Bs from -7% to
    +2%; throughput against nnU-Net 1.14x -> 1.20x per CPU-second, docs/benchmarks.md). Same
    submodules and parameter names as the block it replaces, so checkpoints load either way; in eval
    mode it runs MONAI's own forward, so predictions and exported graphs are unchanged."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.transp_conv = block.transp_conv
        self.conv_block = block.conv_block

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.transp_conv(inp)
        block = self.conv_block
        if not self.training:
            return block(torch.cat((up, skip), dim=1))
        conv = block.conv1.conv
        c, conv_nd = up.shape[1], _CONV_FUNCTIONS[up.dim() - 2]
        out = (conv_nd(up, conv.weight[:, :c], None, conv.stride, conv.padding, conv.dilation, conv.groups)
               + conv_nd(skip, conv.weight[:, c:], conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups))
        out = block.lrelu(block.norm1(out))
        return block.lrelu(block.norm2(block.conv2(out)))


def concat_free_up_blocks(module: nn.Module, _done: dict | None = None) -> nn.Module:
    """Replace, in place, every MONAI ``UnetUpBlock`` of ``module`` whose conv block is a plain
    ``UnetBasicBlock`` with a plain first convolution (no dropout, one group) by a :class:`ConcatFreeUpBlock`
    (DynUNet's decoder is made of these).
    DynUNet holds each up block twice (``upsamples`` and the nested ``skip_layers`` that run them);
    both places get the same replacement."""
    done = {} if _done is None else _done
    for name, child in module.named_children():
        if id(child) in done:
            setattr(module, name, done[id(child)])
        elif (isinstance(child, UnetUpBlock) and isinstance(child.conv_block, UnetBasicBlock)
              and [n for n, _ in child.conv_block.conv1.named_children()] == ["conv"]
              and child.conv_block.conv1.conv.groups == 1):
            done[id(child)] = ConcatFreeUpBlock(child)
            setattr(module, name, done[id(child)])
        elif not isinstance(child, ConcatFreeUpBlock):
            concat_free_up_blocks(child, done)
    return module


class TwoStageDynUNet(DynUNet):
    """MONAI ``DynUNet`` that also accepts 2 stages (input block, strided bottleneck, one up block).

    MONAI's ``check_kernel_stride`` asks for at least 3 kernel sizes and strides, but its blocks
    compose into a working 1-pool U-Net with 2 (no middle downsampling block; the skip layer joins
    the input block and the bottleneck): the network nnU-Net plans for small images. MONAI's other
    checks are kept."""

    def check_kernel_stride(self):
        if not len(self.kernel_size) == len(self.strides) == 2:
            return super().check_kernel_stride()
        for value in (*self.kernel_size, *self.strides):  # MONAI's per-block check
            if not isinstance(value, int) and len(value) != self.spatial_dims:
                raise ValueError("length of kernel_size and strides in every block should be spatial_dims")


def _check_plan(plan: ConfigurationPlan) -> None:
    problems = configuration_problems(plan) or unet_problems(plan)
    if problems:
        raise ModelError(f"configuration '{plan.name}': {'; '.join(problems)}; rerun `autoseg plan` (it plans only "
                         "configurations that can be built)")


def build_dynunet(plan: ConfigurationPlan, in_channels: int, out_channels: int, deep_supervision: bool) -> nn.Module:
    """nnU-Net's plain U-Net: 2 convs per stage (encoder and decoder), instance norm, leaky ReLU,
    strided-conv downsampling, transposed-conv upsampling; kernels, strides and features from the plan."""
    _check_plan(plan)
    n_stages = len(plan.strides)
    heads = n_stages - 3  # decoder outputs below full resolution, minus the weight-0 lowest one
    net = TwoStageDynUNet(
        spatial_dims=plan.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[list(k) for k in plan.kernel_sizes],
        strides=[list(s) for s in plan.strides],
        upsample_kernel_size=[list(s) for s in plan.strides[1:]],
        filters=list(plan.features[:n_stages]),
        norm_name=("INSTANCE", {"affine": True, "eps": 1e-5}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision and heads >= 1,
        deep_supr_num=max(heads, 1),
    )
    return DeepSupervisedDynUNet(concat_free_up_blocks(instance_to_group_norm(net)))
