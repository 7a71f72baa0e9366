"""Augmentation of a cascade stage's previous-stage channels: spoil the low-res segmentation a little, so
the network learns to correct it rather than copy it.

The one-hot channels (:func:`autoseg.cascade.one_hot`) first go through the same spatial augmentation as
image and label (the loader stacks the previous-stage label map with the label; no intensity
transform touches them). Then, as nnU-Net v2 configures them for ``is_cascaded``
(``nnUNetTrainer.get_training_transforms``, nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py; the
transforms are batchgeneratorsv2's ``ApplyRandomBinaryOperatorTransform`` and
``RemoveRandomConnectedComponentFromOneHotEncodingTransform``):

1. random binary operator, p 0.4 per patch: the channels in random order, each with p 0.5, get one of
   dilation, erosion, opening or closing with a ball of radius U(1, 8) voxels (a disk for 2D patches);
   voxels a channel gains are removed from the other channels, so the channels stay disjoint;
2. remove a random connected component, p 0.2 per patch: the channels in random order, each with p 0.5,
   lose one connected component (full connectivity) drawn uniformly among those smaller than 15% of
   the patch (nnU-Net ``dont_do_if_covers_more_than_x_percent=0.15``, ``fill_with_other_class_p=0``).

Randomness is drawn apart from applying it (:func:`draw_cascade_augmentation` -> :class:`CascadeParams`);
the component to remove is a uniform number in [0, 1) drawn up front, mapped to one of the eligible
components when they are known. The ball of radius r holds the integer offsets within distance r (the
radius need not be an integer, as nnU-Net's ``sample_scalar`` draws it). Erosion treats the outside of
the patch as foreground (nnU-Net's erosion is the complement of a zero-padded dilation), so a structure
is not eaten away from the patch border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Range = tuple[float, float]
OPERATORS = ("dilation", "erosion", "opening", "closing")  # nnU-Net's any_of_these


@dataclass(frozen=True)
class CascadeAugmentSettings:
    """Probabilities and ranges; defaults are nnU-Net v2's (``get_training_transforms`` with ``is_cascaded``)."""

    p_binary_operator: float = 0.4     # RandomTransform(ApplyRandomBinaryOperatorTransform, apply_probability=0.4)
    p_operator_per_label: float = 0.5  # its p_per_label
    strel_radius: Range = (1.0, 8.0)   # its strel_size
    p_remove_component: float = 0.2    # RandomTransform(RemoveRandomConnectedComponent..., apply_probability=0.2)
    p_remove_per_label: float = 0.5    # its p_per_label
    max_component_fraction: float = 0.15  # dont_do_if_covers_more_than_x_percent

    def __post_init__(self):
        for name in ("p_binary_operator", "p_operator_per_label", "p_remove_component", "p_remove_per_label",
                     "max_component_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CascadeAugmentSettings.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.strel_radius[0] <= self.strel_radius[1]:
            raise ValueError(f"CascadeAugmentSettings.strel_radius must be a positive (low, high) range, "
                             f"got {self.strel_radius}")


@dataclass(frozen=True)
class CascadeParams:
    """The drawn augmentation of one patch's previous-stage channels, in the order it is applied.

    ``operators``: ``(channel, operator name, ball radius)``; ``removals``: ``(channel, u)`` with
    ``u`` in [0, 1) choosing the component among the eligible ones."""

    operators: tuple[tuple[int, str, float], ...] = ()
    removals: tuple[tuple[int, float], ...] = ()


def draw_cascade_augmentation(rng: np.random.Generator, settings: CascadeAugmentSettings,
                              num_channels: int) -> CascadeParams:
    """Every random choice for the ``num_channels`` previous-stage channels of one patch."""
    s = settings
    operators, removals = [], []
    if rng.random() < s.p_binary_operator:
        for c in rng.permutation(num_channels):
            if rng.random() < s.p_operator_per_label:
                operators.append((int(c), OPERATORS[int(rng.integers(len(OPERATORS)))],
                                  float(rng.uniform(*s.strel_radius))))
    if rng.random() < s.p_remove_component:
        for c in rng.permutation(num_channels):
            if rng.random() < s.p_remove_per_label:
                removals.append((int(c), float(rng.random())))
    return CascadeParams(tuple(operators), tuple(removals))


def ball(radius: float, dims: int) -> np.ndarray:
    """Boolean structuring element: the integer offsets within ``radius`` of the centre (a disk for 2 dims)."""
    r = int(math.floor(radius))
    grid = np.indices((2 * r + 1,) * dims) - r
    return (grid ** 2).sum(0) <= radius ** 2


def binary_operator(mask: np.ndarray, operator: str, radius: float) -> np.ndarray:
    """``mask`` after one of :data:`OPERATORS` with a ball of ``radius`` (outside the patch: background for
    dilation, foreground for erosion; see the module docstring)."""
    strel = ball(radius, mask.ndim)

    def dilate(m):
        return ndimage.binary_dilation(m, strel, border_value=0)

    def erode(m):
        return ndimage.binary_erosion(m, strel, border_value=1)

    ops = {"dilation": dilate, "erosion": erode, "opening": lambda m: dilate(erode(m)),
           "closing": lambda m: erode(dilate(m))}
    if operator not in ops:
        raise ValueError(f"unknown binary operator '{operator}'; choices: {', '.join(OPERATORS)}")
    return ops[operator](mask)


def apply_binary_operators(channels: np.ndarray, operators) -> np.ndarray:
    """Apply ``(channel, operator, radius)`` in order to one-hot ``channels`` ``(K, *S)``; what a channel
    gains is taken from the others. Returns a new array."""
    out = np.array(channels, dtype=np.float32)
    for c, operator, radius in operators:
        before = out[c] > 0
        after = binary_operator(before, operator, radius)
        gained = after & ~before
        for other in range(out.shape[0]):
            if other != c:
                out[other][gained] = 0.0
        out[c] = after
    return out


def remove_components(channels: np.ndarray, removals, max_fraction: float) -> np.ndarray:
    """For each ``(channel, u)`` in order: label the channel's connected components (full connectivity),
    keep those with fewer voxels than ``max_fraction`` of the patch, and clear the one ``u`` picks
    (``floor(u * n)``); a channel without such a component is left alone. Returns a new array."""
    out = np.array(channels, dtype=np.float32)
    limit = max_fraction * math.prod(out.shape[1:])
    for c, u in removals:
        mask = out[c] > 0
        if not mask.any():
            continue
        components, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        eligible = [i + 1 for i in range(n) if sizes[i] < limit]
        if eligible:
            chosen = eligible[min(int(u * len(eligible)), len(eligible) - 1)]
            out[c][components == chosen] = 0.0
    return out


def apply_cascade_augmentation(channels: np.ndarray, params: CascadeParams,
                               settings: CascadeAugmentSettings) -> np.ndarray:
    """Both transforms, in nnU-Net's order, on the previous-stage channels ``(K, *S)`` of one patch."""
    if params.operators:
        channels = apply_binary_operators(channels, params.operators)
    if params.removals:
        channels = remove_components(channels, params.removals, settings.max_component_fraction)
    return channels
