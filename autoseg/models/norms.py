"""Per-channel normalisation layers swapped in for speed, with the same function and parameter names.

Shared by every architecture (training on the CPU: :func:`instance_to_group_norm`) and by the
OpenVINO conversion (:func:`spatial_instance_norms`). A module held at two places of a network (the
``dynamic_network_architectures`` conv blocks keep their norm both as ``norm`` and inside
``all_modules``) is replaced by one new module at both places.
"""

from __future__ import annotations

import torch
from torch import nn

INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _replace(module: nn.Module, make, done: dict) -> nn.Module:
    """Replace, in place, every child for which ``make(child)`` returns a module; recurse elsewhere.
    ``done`` maps ``id(child)`` to ``(child, replacement)``; holding the child keeps its id unique."""
    for name, child in module.named_children():
        if id(child) not in done:
            new = make(child)
            done[id(child)] = (child, child if new is None else new)
            if new is None:
                _replace(child, make, done)
        replacement = done[id(child)][1]
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def _group_norm(child: nn.Module) -> nn.Module | None:
    if isinstance(child, INSTANCE_NORMS) and child.affine and not child.track_running_stats:
        group = nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=True)
        group.weight, group.bias = child.weight, child.bias
        return group
    return None


def instance_to_group_norm(module: nn.Module) -> nn.Module:
    """Replace every affine ``InstanceNorm{1,2,3}d`` (no running statistics) in ``module``, in place,
    by ``GroupNorm`` with one group per channel: the same function (statistics per sample and channel
    over the spatial axes, the same eps and per-channel scale/shift) and the same parameter names, so
    checkpoints load either way. PyTorch's CPU instance norm runs batch norm on a reshaped copy; group
    norm does not, and a whole training step of the Hippocampus U-Net takes ~7% less CPU time
    (docs/benchmarks.md, Training)."""
    return _replace(module, _group_norm, {})


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


def _spatial(child: nn.Module) -> nn.Module | None:
    per_channel = ((isinstance(child, nn.GroupNorm) and child.num_groups == child.num_channels)
                   or (isinstance(child, INSTANCE_NORMS) and not child.track_running_stats))
    return SpatialInstanceNorm(child) if per_channel else None


def spatial_instance_norms(module: nn.Module) -> nn.Module:
    """Replace, in place, every per-channel norm of ``module`` -- ``GroupNorm`` with one group per
    channel, ``InstanceNorm{1,2,3}d`` without running statistics -- by :class:`SpatialInstanceNorm`
    (same function and parameters). Used on a copy of a network before OpenVINO converts it."""
    return _replace(module, _spatial, {})
