"""Training losses: soft Dice + cross-entropy (1:1), their region (sigmoid) variant, deep supervision.

Shapes: logits ``(B, K, *spatial)``; targets ``(B, 1, *spatial)`` integer label values as stored in
the preprocessed data (an ``ignore`` label value may appear). Constants follow nnU-Net v2
(nnunetv2/training/loss/compound_losses.py ``DC_and_CE_loss`` / ``DC_and_BCE_loss``, dice.py
``MemoryEfficientSoftDiceLoss``, deep_supervision.py): smooth 1e-5, Dice without background for softmax
training, Dice over every
region (no background channel exists) for sigmoid training, deep-supervision weights 1/2^i with
the lowest resolution at 0, normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1e-5  # nnU-Net MemoryEfficientSoftDiceLoss smooth (numerator and denominator)


def deep_supervision_weights(num_outputs: int) -> tuple[float, ...]:
    """nnU-Net's weights for ``num_outputs`` decoder outputs (highest resolution first): 1/2^i,
    the lowest resolution set to 0, normalised to sum 1. One output gets weight 1."""
    if num_outputs < 1:
        raise ValueError("need at least one output")
    if num_outputs == 1:
        return (1.0,)
    w = [1 / 2**i for i in range(num_outputs)]
    w[-1] = 0.0
    total = sum(w)
    return tuple(x / total for x in w)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, *S)`` integer labels -> ``(B, num_classes, *S)`` float one-hot (values >= num_classes give 0s)."""
    lab = labels[:, 0].long()
    out = torch.zeros((lab.shape[0], num_classes, *lab.shape[1:]), device=labels.device, dtype=torch.float32)
    valid = (lab >= 0) & (lab < num_classes)
    out.scatter_(1, torch.where(valid, lab, torch.zeros_like(lab)).unsqueeze(1), valid.unsqueeze(1).float())
    return out


def labels_to_regions(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, 1, *S)`` label values -> ``(B, R, *S)`` float masks, channel r = label in ``regions[r]``."""
    return torch.cat([torch.isin(labels, torch.as_tensor(list(r), device=labels.device)).float()
                      for r in regions], dim=1)


def valid_mask(labels: torch.Tensor, ignore_label: int | None) -> torch.Tensor | None:
    """``(B, 1, *S)`` float mask of voxels that count (not the ignore label), or None without one."""
    return None if ignore_label is None else (labels != ignore_label).float()


class DiceCELoss(nn.Module):
    """Softmax training: soft Dice over the foreground classes + cross-entropy, weights 1:1.

    ``batch_dice`` pools the Dice statistics over the batch (the plan decides); voxels with the
    ignore label are removed from both terms.
    """

    def __init__(self, num_classes: int, batch_dice: bool, ignore_label: int | None = None):
        from monai.losses import DiceLoss  # here, not at the top: importing MONAI takes seconds

        super().__init__()
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.dice = DiceLoss(include_background=False, batch=batch_dice, smooth_nr=SMOOTH, smooth_dr=SMOOTH)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        mask = valid_mask(target, self.ignore_label)
        probs = torch.softmax(logits, 1)
        onehot = one_hot(target, self.num_classes)
        if mask is not None:
            probs, onehot = probs * mask, onehot * mask
        dice = self.dice(probs, onehot)
        ce_target = target[:, 0].long()
        if self.ignore_label is not None:
            if bool((ce_target == self.ignore_label).all()):
                return dice + 0.0 * logits.sum()  # nothing labelled in this batch: no CE term
            ce = F.cross_entropy(logits, ce_target, ignore_index=self.ignore_label)
        else:
            ce = F.cross_entropy(logits, ce_target)
        return dice + ce


class RegionDiceBCELoss(nn.Module):
    """Sigmoid training on regions (label-value sets): soft Dice over every region + BCE, 1:1."""

    def __init__(self, regions: Sequence[Sequence[int]], batch_dice: bool, ignore_label: int | None = None):
        from monai.losses import DiceLoss

        super().__init__()
        self.regions = [tuple(r) for r in regions]
        self.ignore_label = ignore_label
        self.dice = DiceLoss(include_background=True, batch=batch_dice, smooth_nr=SMOOTH, smooth_dr=SMOOTH)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        mask = valid_mask(target, self.ignore_label)
        region_target = labels_to_regions(target, self.regions)
        probs = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, region_target, reduction="none")
        if mask is not None:
            probs, region_target = probs * mask, region_target * mask
            bce = (bce * mask).sum() / (mask.sum() * len(self.regions)).clamp_min(1.0)
        else:
            bce = bce.mean()
        return self.dice(probs, region_target) + bce


class DeepSupervisionLoss(nn.Module):
    """Apply ``base`` to every output of a deep-supervised network, target downsampled (nearest) to
    each output's size, weighted by :func:`deep_supervision_weights`.

    The networks (see :mod:`autoseg.models.registry`) do not build the weight-0 lowest-resolution
    head, so ``m`` returned outputs are weighted like the first ``m`` of ``m + 1`` decoder outputs.
    A single tensor (no deep supervision) goes straight to ``base``.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target)
        weights = deep_supervision_weights(len(outputs) + 1)[:-1]
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            t = target if out.shape[2:] == target.shape[2:] else downsample_labels(target, out.shape[2:])
            total = total + w * self.base(out, t)
        return total


def downsample_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, 1, *S)`` integer labels to spatial ``size``."""
    return F.interpolate(target.float(), size=tuple(size), mode="nearest").to(target.dtype)


def make_loss(num_outputs: int, batch_dice: bool, regions: Sequence[Sequence[int]] | None = None,
              ignore_label: int | None = None) -> nn.Module:
    """The training loss for a dataset: softmax Dice+CE over ``num_outputs`` classes, or sigmoid
    Dice+BCE when ``regions`` is given; wrapped for deep supervision."""
    if regions:
        if len(regions) != num_outputs:
            raise ValueError(f"{len(regions)} regions but the network has {num_outputs} outputs")
        base: nn.Module = RegionDiceBCELoss(regions, batch_dice, ignore_label)
    else:
        base = DiceCELoss(num_outputs, batch_dice, ignore_label)
    return DeepSupervisionLoss(base)
