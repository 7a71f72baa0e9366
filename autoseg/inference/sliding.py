"""Sliding-window prediction of a whole preprocessed volume with Gaussian weighting and mirroring.

Shared by the end-of-training validation and ``autoseg predict``. Input: one preprocessed case
``(C, X, Y, Z)`` (transposed axes of the plans). Patches of ``patch_size`` overlap by half a patch
(``step=0.5``); each patch's prediction is weighted by a Gaussian with sigma = patch/8 (MONAI
``sliding_window_inference``, mode "gaussian", sigma_scale 0.125, as nnU-Net). Test-time mirroring
flips every patch along each combination of ``mirror_axes`` (3 axes: 8 passes) and flips the
prediction back. Several networks (folds) are averaged. 2D configurations predict slice by slice
along axis 0 with a 2D window over axes 1 and 2.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

GAUSSIAN_SIGMA_SCALE = 0.125  # nnU-Net: sigma = patch size / 8
# Voxels per slab of the in-place softmax: its temporary is (K, slab) instead of the whole (K, *S).
ACTIVATION_SLAB_VOXELS = 4_000_000


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): 3 axes -> 8 flips."""
    axes = tuple(axes)
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


class _Ensemble:
    """Predictor for ``sliding_window_inference``: mean over networks and mirrorings of the logits
    of a batch of patches ``(B, C, *patch)``."""

    def __init__(self, networks: Sequence[nn.Module], mirror_axes: Sequence[int], device: torch.device,
                 amp_dtype: torch.dtype | None):
        self.networks = list(networks)
        self.flips = mirror_combinations(mirror_axes)
        self.device, self.amp_dtype = device, amp_dtype

    def __call__(self, patch: torch.Tensor) -> torch.Tensor:
        total = None
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            for net in self.networks:
                for flip in self.flips:
                    dims = [2 + a for a in flip]
                    x = torch.flip(patch, dims) if dims else patch
                    y = net(x).float()
                    y = torch.flip(y, dims) if dims else y
                    total = y if total is None else total + y
        return total / (len(self.networks) * len(self.flips))


@torch.no_grad()
def predict_logits(networks: Sequence[nn.Module], image: torch.Tensor, patch_size: Sequence[int],
                   step: float = 0.5, mirror_axes: Sequence[int] = (0, 1, 2), device: torch.device | str = "cpu",
                   amp_dtype: torch.dtype | None = None, sw_batch_size: int = 1) -> torch.Tensor:
    """Mean logits ``(K, *spatial)`` (float32, on CPU) of ``networks`` over a whole ``image`` (C, *spatial).

    ``patch_size`` has 3 entries for 3D networks or 2 for 2D ones (then ``image`` is predicted slice
    by slice along axis 0 and ``mirror_axes`` index the 2 in-plane axes). ``mirror_axes`` are spatial
    axes of the patch (0-based); ``()`` disables mirroring. Images smaller than the patch are padded.
    """
    from monai.inferers import sliding_window_inference

    if not networks:
        raise ValueError("predict_logits needs at least one network")
    device = torch.device(device)
    spatial = image.shape[1:]
    if len(spatial) != 3 or len(patch_size) not in (2, 3):
        raise ValueError(f"expected a (C, X, Y, Z) image and a 2- or 3-axis patch, got {tuple(image.shape)} "
                         f"and {tuple(patch_size)}")
    if any(a >= len(patch_size) or a < 0 for a in mirror_axes):
        raise ValueError(f"mirror_axes {tuple(mirror_axes)} must index the {len(patch_size)} patch axes")
    for net in networks:
        net.eval()
    predictor = _Ensemble(networks, mirror_axes, device, amp_dtype)
    kwargs = dict(roi_size=tuple(patch_size), sw_batch_size=sw_batch_size, predictor=predictor,
                  overlap=1 - step, mode="gaussian", sigma_scale=GAUSSIAN_SIGMA_SCALE, padding_mode="constant",
                  cval=0.0, sw_device=device, device=torch.device("cpu"))
    if len(patch_size) == 3:
        return sliding_window_inference(image[None].float(), **kwargs)[0]
    slices = []
    for x in range(spatial[0]):  # 2D: one (1, C, Y, Z) image per slice of axis 0
        slices.append(sliding_window_inference(image[None, :, x].float(), **kwargs)[0])
    return torch.stack(slices, dim=1)


def logits_to_probabilities(logits: torch.Tensor, regions: bool,
                            slab_voxels: int = ACTIVATION_SLAB_VOXELS) -> torch.Tensor:
    """Softmax over channel 0 (classes), or a per-channel sigmoid for region outputs, computed **in
    place** (``logits`` is overwritten and returned): the softmax runs on slabs of about
    ``slab_voxels`` voxels along the first spatial axis, so no second ``(K, *S)`` tensor is made."""
    if regions:
        return logits.sigmoid_()
    rows = max(1, slab_voxels // max(1, logits[:, :1].numel()))
    for i in range(0, logits.shape[1], rows):
        slab = logits[:, i:i + rows]
        slab.copy_(torch.softmax(slab, dim=0))
    return logits


@torch.no_grad()
def predict_probabilities(networks: Sequence[nn.Module], image: torch.Tensor, patch_size: Sequence[int],
                          regions: bool = False, **kwargs) -> torch.Tensor:
    """Class (softmax) or region (sigmoid) probabilities ``(K, *spatial)`` from :func:`predict_logits`
    (logits averaged over windows, mirrorings and networks, then activated, as nnU-Net)."""
    return logits_to_probabilities(predict_logits(networks, image, patch_size, **kwargs), regions)
