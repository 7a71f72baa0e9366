"""What an architecture states about itself: the :class:`Architecture` record of a registry entry.

One module per architecture (``autoseg/models/<name>.py``) defines one :class:`Architecture`; the
registry (:mod:`autoseg.models.registry`) lists them. The planner asks the entry for the network
layout of a patch, the features per stage and the memory estimate; training asks whether the network
has deep supervision; fine-tuning asks which tensors are output heads; every stage builds the network
through ``build``. Nothing outside the entry names an architecture.

Entries import no torch, MONAI or network package at module level: ``build`` imports them when a
network is made, so ``autoseg plan`` and ``autoseg --help`` stay light.

Conventions (every ``build`` keeps them): a network maps ``(B, in_channels, *plan.patch_size)`` to
``(B, out_channels, *plan.patch_size)`` logits. With deep supervision, in training mode, it returns a
list instead, highest resolution first, each at its own decoder resolution (``[full, 1/2, 1/4, ...]``),
following nnU-Net: one output per decoder stage but the lowest-resolution one, whose loss weight is 0
(:func:`autoseg.training.losses.deep_supervision_weights`), so its head is never trained and
DistributedDataParallel sees no unused trainable parameter. In eval mode it returns the full-resolution
tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from autoseg.planning.plans import ConfigurationPlan
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import Topology


class ModelError(ValueError):
    """An architecture name or plan that cannot be built."""


# (spacing, requested patch, settings) -> topology with the patch padded to the network's divisibility
LayoutRule = Callable[[Sequence[float], Sequence[float], PlannerSettings], Topology]
# (number of stages, spatial dims, settings) -> channels per stage (or per resolution)
FeatureRule = Callable[[int, int, PlannerSettings], tuple]
# (topology, features, classes, encoder blocks, decoder blocks) -> feature-map elements for batch 1
EstimateRule = Callable[[Topology, Sequence[int], int, Sequence[int], Sequence[int]], int]
# (patch, divisibility steps, axis) -> whether the planner may take one step off that axis
ShrinkRule = Callable[[Sequence[int], Sequence[int], int], bool]
# (plan, input channels, output channels, deep supervision) -> torch.nn.Module
Builder = Callable[[ConfigurationPlan, int, int, bool], Any]
# plan -> what keeps this network from being built and trained on it (sentences; empty when it can be)
ProblemRule = Callable[[ConfigurationPlan], list]


def no_problems(plan: ConfigurationPlan) -> list:
    """The rule of a network that takes any plan its own layout rule makes."""
    return []


def shrink_while_positive(patch: Sequence[int], steps: Sequence[int], axis: int) -> bool:
    """The usual shrink rule (nnU-Net's VRAM loop): an axis may lose a step while it stays positive."""
    return patch[axis] - steps[axis] >= 1


def uniform_topology(patch_size: Sequence[float], downsamplings: int, divisor: int) -> Topology:
    """The fixed layout of a network that halves every axis ``downsamplings`` times (3-kernels): each
    patch edge rounded to the nearest multiple of ``divisor`` (a multiple of ``2**downsamplings``;
    halves round up), at least one ``divisor``.

    Rounding to the nearest multiple, not up, keeps e.g. a 35-voxel median edge at a 32 patch instead
    of a 64 patch that would be half padding. A patch of ``divisor`` on every axis would leave a
    single-voxel bottleneck when ``divisor == 2**downsamplings``, which instance norm rejects, so then
    the largest requested edge (the last one on ties) becomes ``2 * divisor``.
    """
    dims = len(patch_size)
    patch = [max(divisor, int(math.floor(p / divisor + 0.5)) * divisor) for p in patch_size]
    if all(p == divisor for p in patch):
        patch[max(range(dims), key=lambda a: (patch_size[a], a))] = 2 * divisor
    strides = ((1,) * dims,) + ((2,) * dims,) * downsamplings
    return Topology(((3,) * dims,) * (downsamplings + 1), strides, (downsamplings,) * dims, tuple(patch),
                    (divisor,) * dims)


# Architecture.training of the transformer networks (swin_unetr, unetr): AdamW at 1e-4, weight decay
# 1e-5, as their authors train them (Hatamizadeh et al. 2022, UNETR and Swin UNETR) and as MONAI
# Auto3DSeg's swinunetr template does; nnU-Net's SGD (1e-2, momentum 0.99) is tuned for convolutional
# U-Nets. `train --optimizer sgd` chooses nnU-Net's.
TRANSFORMER_TRAINING = (("optimizer", "adamw"), ("lr", 1e-4), ("weight_decay", 1e-5))


def shrink_keeping_one_step(patch: Sequence[int], steps: Sequence[int], axis: int) -> bool:
    """The shrink rule of :func:`uniform_topology` layouts: every edge stays at least one step and one
    edge stays above it."""
    trial = list(patch)
    trial[axis] -= steps[axis]
    return trial[axis] >= steps[axis] and any(q > d for q, d in zip(trial, steps))


@dataclass(frozen=True)
class Architecture:
    """A registry entry. ``layout``, ``features``, ``estimate`` and ``can_shrink`` are the planner's
    rules (:func:`autoseg.planning.heuristics.patch_and_batch` calls them); ``build`` makes the network
    of a configuration plan; ``head_names`` are the module names of the output heads (see :meth:`is_head`;
    fine-tuning on another number of classes keeps those fresh); ``preset`` is the planner preset in ``planners/`` that plans for it;
    ``problems`` says what keeps a plan from being built and trained as this network
    (:func:`autoseg.planning.trainable.configuration_problems`); ``training`` the training settings
    that differ from nnU-Net's for it (e.g. the transformers' AdamW)."""

    name: str
    summary: str
    preset: str
    deep_supervision: bool
    head_names: tuple[str, ...]
    layout: LayoutRule
    features: FeatureRule
    estimate: EstimateRule
    build: Builder
    can_shrink: ShrinkRule = shrink_while_positive
    problems: ProblemRule = no_problems  # checked by the planner (left out) and before training (refused)
    # Training settings (TrainSettings fields) a new run of this network starts from instead of nnU-Net's
    # defaults, where its authors train it otherwise; options given to `autoseg train` still win.
    training: tuple[tuple[str, Any], ...] = ()

    def is_head(self, key: str) -> bool:
        """Whether the state-dict ``key`` is a tensor of an output head: one of ``head_names`` (a module
        name, or a dotted path such as ``model.2``) is a run of its dotted parts."""
        return any(f".{name}." in f".{key}." for name in self.head_names)
