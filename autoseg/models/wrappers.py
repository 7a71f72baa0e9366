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
