"""Network topology from spacing and patch size, and the feature-map memory estimate.

Pure functions of numbers. Per-axis tuples follow the patch's axis order (the transposed order of
the plans: coarsest axis first). Rules follow nnU-Net v2
(nnunetv2/experiment_planning/experiment_planners/network_topology.py, ``get_pool_and_conv_props``, and
the VRAM loop of ``ExperimentPlanner.get_plans_for_configuration`` in default_experiment_planner.py);
the code is written from those rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from autoseg.planning.settings import PlannerSettings


@dataclass(frozen=True)
class Topology:
    """A U-Net layout for one patch size.

    ``strides`` and ``kernel_sizes`` have one entry per stage; the first stride is all 1s and the
    last kernel belongs to the bottleneck. ``divisible_by`` is the per-axis step a patch edge must
    be a multiple of (2**pools, or more with an extra constraint); ``patch_size`` is already padded
    to it.
    """

    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    num_pools: tuple[int, ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


class ArchitectureRules(Protocol):
    """What the planner asks the architecture it plans for (an entry of ``autoseg.models.registry``,
    given to :func:`autoseg.planning.planner.plan_experiment` by the caller)."""

    name: str

    def layout(self, spacing: Sequence[float], patch: Sequence[float], settings: PlannerSettings) -> Topology:
        """The network layout for a requested patch, the patch padded to the network's divisibility."""

    def features(self, n_stages: int, dims: int, settings: PlannerSettings) -> tuple[int, ...]:
        """Channels per stage."""

    def estimate(self, topology: Topology, features: Sequence[int], n_classes: int, encoder_blocks: Sequence[int],
                 decoder_blocks: Sequence[int]) -> int:
        """Feature-map elements of the network for one sample (the quantity nnU-Net's budget is in)."""

    def can_shrink(self, patch: Sequence[int], steps: Sequence[int], axis: int) -> bool:
        """Whether the planner may take one divisibility step off ``patch[axis]``."""

    def problems(self, plan) -> list:
        """What keeps a configuration plan from being built and trained as this network (empty: nothing)."""


def pad_to_multiple(size: float, step: int) -> int:
    """Smallest multiple of ``step`` that is >= ``size`` (``size`` may be fractional)."""
    return int(math.ceil(size / step - 1e-9) * step)


def network_topology(spacing: Sequence[float], patch_size: Sequence[float], min_edge: int = 4,
                     single_axis_factor: int = 3, extra_divisor: int = 1) -> Topology:
    """Pooling and kernel layout for a patch (fractional sizes allowed; they are padded up).

    Each round pools (stride 2) every axis that (a) still has size >= 2 * ``min_edge`` and (b) whose
    current spacing is < 2x the smallest current spacing among the axes passing (a). When only one
    axis qualifies it must have size >= ``single_axis_factor`` * ``min_edge``. Kernel size of an axis
    becomes 3 (and stays 3) once its current spacing is < 2x the smallest current spacing of all
    axes, else 1; the bottleneck kernel is 3 on every axis. The patch is then padded to a multiple of
    ``lcm(2**pools, extra_divisor)`` per axis.
    """
    dims = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(p) for p in patch_size]
    num_pools = [0] * dims
    kernel = [1] * dims
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = []
    while True:
        valid = [a for a in range(dims) if cur_size[a] >= 2 * min_edge]
        if not valid:
            break
        min_valid = min(cur_spacing[a] for a in valid)
        valid = [a for a in valid if cur_spacing[a] / min_valid < 2]
        if len(valid) == 1 and cur_size[valid[0]] < single_axis_factor * min_edge:
            break
        min_all = min(cur_spacing)
        kernel = [3 if k == 3 or cur_spacing[a] / min_all < 2 else 1 for a, k in enumerate(kernel)]
        for a in valid:
            num_pools[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(tuple(2 if a in valid else 1 for a in range(dims)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dims)
    divisible = tuple(math.lcm(2 ** n, extra_divisor) for n in num_pools)
    padded = tuple(pad_to_multiple(p, d) for p, d in zip(patch_size, divisible))
    return Topology(tuple(kernels), tuple(strides), tuple(num_pools), padded, divisible)


def stage_features(n_stages: int, base: int, maximum: int) -> tuple[int, ...]:
    """Channels per stage: ``min(base * 2**i, maximum)`` (nnU-Net: 32 doubling, capped at 320 / 512)."""
    return tuple(min(base * 2 ** i, maximum) for i in range(n_stages))


def estimate_feature_map_size(patch_size: Sequence[int], strides: Sequence[Sequence[int]],
                              features: Sequence[int], n_classes: int, encoder_blocks: Sequence[int],
                              decoder_blocks: Sequence[int], residual: bool = False) -> int:
    """Number of elements in all convolution outputs of a U-Net for one sample (batch 1).

    With stage sizes ``o_s = o_{s-1} // stride_s`` (``o_-1`` = patch, integer division per axis),
    ``|o_s|`` their voxel counts and ``F_s`` the channels:

    - plain encoder: ``sum_s encoder_blocks[s] * F_s * |o_s|`` (one conv output per block);
    - residual encoder: a stem conv ``F_0 * |patch|``, then two conv outputs per residual block,
      ``2 * encoder_blocks[s] * F_s * |o_s|``, plus a 1x1 projection output ``F_s * |o_s|`` in the
      first block of a stage that strides or changes the channel count;
    - decoder, per stage ``s = n-2 .. 0``: the transposed conv output plus ``decoder_blocks`` conv
      outputs, ``(decoder_blocks[s] + 1) * F_s * |o_s|``;
    - the final 1x1 segmentation output ``n_classes * |o_0|`` (deep-supervision heads not counted).

    Kernel sizes do not enter: every conv is same-padded. This is the quantity nnU-Net v2 compares
    with its reference values (560e6 for its 3D reference network on 8 GB).
    """
    n = len(strides)
    if not (len(features) == n == len(encoder_blocks)) or len(decoder_blocks) != n - 1:
        raise ValueError(f"need one stride, feature count and encoder block count per stage ({n}) and "
                         f"{n - 1} decoder block counts")
    cur = [int(p) for p in patch_size]
    sizes = []
    for st in strides:
        cur = [c // s for c, s in zip(cur, st)]
        sizes.append(int(np.prod(cur, dtype=np.int64)))
    total = features[0] * int(np.prod(patch_size, dtype=np.int64)) if residual else 0
    in_channels = features[0]
    for s in range(n):
        if residual:
            projects = in_channels != features[s] or any(x > 1 for x in strides[s])
            total += (2 * encoder_blocks[s] + int(projects)) * features[s] * sizes[s]
        else:
            total += encoder_blocks[s] * features[s] * sizes[s]
        in_channels = features[s]
    for s in range(n - 1):
        total += (decoder_blocks[s] + 1) * features[s] * sizes[s]
    return int(total + n_classes * sizes[0])
