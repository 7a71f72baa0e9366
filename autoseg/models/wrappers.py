"""Small adapters that give MONAI networks autoseg's output convention (:mod:`autoseg.models.architecture`)."""

from __future__ import annotations

import torch
from torch import nn


class FirstOutput(nn.Module):
    """A network that returns a list or tuple of outputs (MONAI ``BasicUNetPlusPlus``), reduced to the
    first one, the full-resolution logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (list, tuple)) else out


class WithoutLowestOutput(nn.Module):
    """A network whose deep supervision returns ``(full, 1/2, ..., lowest)`` in training (MONAI
    ``MedNeXt``), without the lowest-resolution output, whose loss weight is 0 (nnU-Net's rule): a list
    ``[full, 1/2, ...]``, or the tensor when only the full-resolution output is left. The caller freezes
    that head, so no trainable parameter goes unused."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        if not isinstance(out, (list, tuple)):
            return out
        return list(out[:-1]) if len(out) > 2 else out[0]
