"""Network registry: architecture name -> builder from a configuration plan (MONAI networks underneath).

Every builder has the signature ``builder(plan, in_channels, out_channels, deep_supervision)`` and
returns an ``nn.Module`` that maps ``(B, in_channels, *plan.patch_size)`` to
``(B, out_channels, *plan.patch_size)`` logits. With deep supervision, in training mode, a network
returns a list of logits instead, highest resolution first, each at its own decoder resolution
(``[full, 1/2, 1/4, ...]``); the loss downsamples the target to each. In eval mode it always returns
the full-resolution tensor.

Deep supervision follows nnU-Net: one output per decoder stage (all stages but the bottleneck),
weights 1/2^i with the lowest-resolution output at weight 0. An output with weight 0 never
contributes, so its head is not built at all: that keeps DistributedDataParallel free of unused
parameters and saves its compute. A 5-stage U-Net therefore returns 3 outputs (weights 4/7, 2/7, 1/7,
the same numbers as nnU-Net's (0.571, 0.286, 0.143, 0) over its 4 decoder outputs); a net with fewer
than 4 stages returns one output.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from autoseg.planning.plans import ConfigurationPlan
from autoseg.planning.trainable import SWIN_DIVISOR, configuration_problems
SWIN_FEATURE_STEP = 12  # SwinUNETR: feature_size must be a multiple of 12 (attention heads 3, 6, 12, 24)


INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class ModelError(ValueError):
    """An architecture name or plan that cannot be built."""


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


def instance_to_group_norm(module: nn.Module) -> nn.Module:
    """Replace every affine ``InstanceNorm{1,2,3}d`` (no running statistics) in ``module``, in place,
    by ``GroupNorm`` with one group per channel: the same function (statistics per sample and channel
    over the spatial axes, the same eps and per-channel scale/shift) and the same parameter names, so
    checkpoints load either way. PyTorch's CPU instance norm runs batch norm on a reshaped copy; group
    norm does not, and a whole training step of the Hippocampus U-Net takes ~7% less CPU time
    (docs/benchmarks.md, Training)."""
    for name, child in module.named_children():
        if isinstance(child, INSTANCE_NORMS) and child.affine and not child.track_running_stats:
            group = nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=True)
            group.weight, group.bias = child.weight, child.bias
            setattr(module, name, group)
        else:
            instance_to_group_norm(child)
    return module


class SpatialInstanceNorm(nn.Module):
    """Instance norm written out as mean and variance over the spatial axes, for conversion to
    OpenVINO (:func:`spatial_instance_norms`). The same function as ``GroupNorm(C, C)`` or
    ``InstanceNorm`` without running statistics (biased variance, eps under the root, optional
    per-channel scale and shift); it shares the source module's parameters.

    OpenVINO turns ``GroupNorm`` into reshape -> MVN -> reshape, and each reshape forces the CPU
    plugin to convert the channels-last tensor to the plain layout and back; this form becomes one
    MVN on the channels-last tensor. On the Hippocampus U-Net (40x56x40) that removes 24 layout
    conversions: 3-5% of an int8 forward pass, 4-9% of an f32 one (docs/benchmarks.md)."""

    def __init__(self, source: nn.Module):
        super().__init__()
        self.eps = source.eps
        self.weight, self.bias = source.weight, source.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        centred = x - x.mean(dim=dims, keepdim=True)
        y = centred / torch.sqrt((centred * centred).mean(dim=dims, keepdim=True) + self.eps)
        if self.weight is not None:
            shape = (1, -1) + (1,) * len(dims)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def spatial_instance_norms(module: nn.Module) -> nn.Module:
    """Replace, in place, every per-channel norm of ``module`` -- ``GroupNorm`` with one group per
    channel, ``InstanceNorm{1,2,3}d`` without running statistics -- by :class:`SpatialInstanceNorm`
    (same function and parameters). Used on a copy of a network before OpenVINO converts it."""
    for name, child in module.named_children():
        per_channel = ((isinstance(child, nn.GroupNorm) and child.num_groups == child.num_channels)
                       or (isinstance(child, INSTANCE_NORMS) and not child.track_running_stats))
        if per_channel:
            setattr(module, name, SpatialInstanceNorm(child))
        else:
            spatial_instance_norms(child)
    return module


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
    (DynUNet's decoder is made of these with ``res_block`` too: MONAI uses residual blocks in the encoder only).
    DynUNet holds each up block twice (``upsamples`` and the nested ``skip_layers`` that run them);
    both places get the same replacement."""
    from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetUpBlock

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


def check_buildable(name: str, plan: ConfigurationPlan) -> None:
    """Raise :class:`ModelError` when ``plan`` cannot be built as architecture ``name`` and trained
    (:func:`~autoseg.planning.trainable.configuration_problems`); builds nothing, so a caller can
    check before it makes a run folder."""
    get_builder(name)
    problems = configuration_problems(plan, name)
    if problems:
        fix = ("choose --arch unet or re-plan" if name == "swin_unetr" else
               "rerun `autoseg plan` (it plans only configurations that can be built)")
        raise ModelError(f"configuration '{plan.name}' cannot be built as {name}: {'; '.join(problems)}; {fix}")


@functools.cache
def _dynunet_class():
    """MONAI ``DynUNet`` that also accepts 2 stages (input block, strided bottleneck, one up block).

    MONAI's ``check_kernel_stride`` asks for at least 3 kernel sizes and strides, but its blocks
    compose into a working 1-pool U-Net with 2 (no middle downsampling block; the skip layer joins
    the input block and the bottleneck): the network nnU-Net plans for small images. MONAI's other
    checks are kept. (A class made here, not at import, because monai is imported lazily.)"""
    from monai.networks.nets import DynUNet

    class TwoStageDynUNet(DynUNet):
        def check_kernel_stride(self):
            if not len(self.kernel_size) == len(self.strides) == 2:
                return super().check_kernel_stride()
            for value in (*self.kernel_size, *self.strides):  # MONAI's per-block check
                if not isinstance(value, int) and len(value) != self.spatial_dims:
                    raise ValueError("length of kernel_size and strides in every block should be spatial_dims")

    return TwoStageDynUNet


def _dynunet(plan: ConfigurationPlan, in_channels: int, out_channels: int, deep_supervision: bool,
             res_block: bool) -> nn.Module:
    check_buildable("resenc_unet" if res_block else "unet", plan)
    n_stages = len(plan.strides)
    heads = n_stages - 3  # decoder outputs below full resolution, minus the weight-0 lowest one
    ds = deep_supervision and heads >= 1
    net = _dynunet_class()(
        spatial_dims=plan.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[list(k) for k in plan.kernel_sizes],
        strides=[list(s) for s in plan.strides],
        upsample_kernel_size=[list(s) for s in plan.strides[1:]],
        filters=list(plan.features[:n_stages]),
        norm_name=("INSTANCE", {"affine": True, "eps": 1e-5}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=ds,
        deep_supr_num=max(heads, 1),
        res_block=res_block,
    )
    return DeepSupervisedDynUNet(concat_free_up_blocks(instance_to_group_norm(net)))


def build_unet(plan: ConfigurationPlan, in_channels: int, out_channels: int, deep_supervision: bool) -> nn.Module:
    """nnU-Net's plain U-Net: 2 convs per stage (encoder and decoder), instance norm, leaky ReLU,
    strided-conv downsampling, transposed-conv upsampling; kernels, strides and features from the plan."""
    return _dynunet(plan, in_channels, out_channels, deep_supervision, res_block=False)


def build_resenc_unet(plan: ConfigurationPlan, in_channels: int, out_channels: int,
                      deep_supervision: bool) -> nn.Module:
    """Residual variant: DynUNet with ``res_block=True``, i.e. every stage (encoder and decoder) is one
    residual block of two convs. This is *not* nnU-Net's ResEnc preset (1, 3, 4, 6, 6, 6 residual blocks
    per encoder stage, one conv per decoder stage); ``plan.blocks_per_stage`` is not used."""
    return _dynunet(plan, in_channels, out_channels, deep_supervision, res_block=True)


def swin_feature_size(features0: int) -> int:
    """SwinUNETR ``feature_size``: the plan's first-stage features rounded up to a multiple of 12."""
    return max(SWIN_FEATURE_STEP, -(-int(features0) // SWIN_FEATURE_STEP) * SWIN_FEATURE_STEP)


def build_swin_unetr(plan: ConfigurationPlan, in_channels: int, out_channels: int,
                     deep_supervision: bool) -> nn.Module:
    """MONAI SwinUNETR; ``feature_size`` from ``plan.features[0]`` (see :func:`swin_feature_size`).
    It has no deep supervision: it always returns one tensor, whatever ``deep_supervision`` says."""
    from monai.networks.nets import SwinUNETR

    check_buildable("swin_unetr", plan)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels,
                     feature_size=swin_feature_size(plan.features[0]), spatial_dims=plan.spatial_dims)


Builder = Callable[[ConfigurationPlan, int, int, bool], nn.Module]

MODELS: dict[str, Builder] = {
    "unet": build_unet,
    "resenc_unet": build_resenc_unet,
    "swin_unetr": build_swin_unetr,
}


def get_builder(name: str) -> Builder:
    if name not in MODELS:
        raise ModelError(f"unknown architecture '{name}'; choices: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, plan: ConfigurationPlan, in_channels: int, out_channels: int,
                deep_supervision: bool = True) -> nn.Module:
    """Look ``name`` up in :data:`MODELS` and build it for ``plan``."""
    return get_builder(name)(plan, in_channels, out_channels, deep_supervision)
