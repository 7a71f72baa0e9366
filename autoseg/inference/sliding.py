"""Sliding-window prediction of a whole preprocessed volume with Gaussian weighting and mirroring.

Shared by the end-of-training validation and ``autoseg predict``. Input: one preprocessed case
``(C, X, Y, Z)`` (transposed axes of the plans). Patches of ``patch_size`` overlap by half a patch
(``step=0.5``, window positions as MONAI's ``sliding_window_inference``); each patch's prediction
is weighted by the Gaussian importance map of MONAI's ``sliding_window_inference`` (sigma = patch/8,
sigma_scale 0.125 as nnU-Net; computed here, :func:`importance_map`, to spare MONAI's import) and
accumulated into one preallocated buffer, normalised row by row (no whole-volume weight map).
That buffer is float32, or float16 (as nnU-Net v2 accumulates its logits) when a float32 one would
exceed ``HALF_ACCUMULATION_BYTES``: a 900x512x512 CT with 3 classes then needs 1.4 GB instead of 2.8.
Test-time mirroring flips every patch along each combination of ``mirror_axes`` (3 axes: 8 passes)
and flips the prediction back. Several networks (folds) are averaged. 2D configurations predict slice by slice
along axis 0 with a 2D window over axes 1 and 2.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

GAUSSIAN_SIGMA_SCALE = 0.125  # nnU-Net: sigma = patch size / 8
# Voxels per slab of the in-place softmax: its temporary is (K, slab) instead of the whole (K, *S).
ACTIVATION_SLAB_VOXELS = 4_000_000
# Above this size (float32 bytes of the (K, *S) logits buffer) the buffer is float16 instead: half
# the memory for very large volumes; the mean logits differ by float16 rounding (about 1e-3 relative).
HALF_ACCUMULATION_BYTES = 1 << 30


def accumulation_dtype(shape: Sequence[int], limit: int | None = None) -> torch.dtype:
    """float32 for a ``(K, *S)`` logits buffer up to ``limit`` bytes (default
    ``HALF_ACCUMULATION_BYTES``) as float32, float16 beyond."""
    limit = HALF_ACCUMULATION_BYTES if limit is None else limit
    return torch.float32 if 4 * math.prod(int(d) for d in shape) <= limit else torch.float16


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): 3 axes -> 8 flips."""
    axes = tuple(axes)
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


class _Ensemble:
    """Predictor of :func:`_sliding`: mean over networks and mirrorings of the logits of a batch of
    patches ``(B, C, *patch)``."""

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


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Start index of each window along one axis: every ``int(patch * step)`` voxels (at least 1), the
    last one moved back to end at ``size`` (MONAI ``dense_patch_slices``); ``[0]`` when the axis is
    not larger than the patch (the image is padded to the patch)."""
    if size <= patch:
        return [0]
    interval = max(1, int(patch * step))
    count = next(i for i in range(size) if i * interval + patch >= size) + 1
    return [min(i * interval, size - patch) for i in range(count)]


def importance_map(patch: Sequence[int]) -> torch.Tensor:
    """Gaussian window weights: the map of MONAI's ``sliding_window_inference`` mode "gaussian"
    (``monai.data.utils.compute_importance_map`` with sigma_scale GAUSSIAN_SIGMA_SCALE), a product of
    per-axis Gaussians centred on the patch, clamped below at 1e-3.

    Computed here rather than imported: importing MONAI takes 2-4 s of every ``autoseg predict``
    start, and OpenVINO prediction needs nothing else from it. tests/inference/test_sliding.py checks
    that both maps are equal."""
    weight = None
    for p in (int(n) for n in patch):
        x = torch.arange(-(p - 1) / 2.0, (p - 1) / 2.0 + 1, dtype=torch.float)
        g = torch.exp(x**2 / (-2 * (p * GAUSSIAN_SIGMA_SCALE) ** 2))
        weight = g if weight is None else weight.unsqueeze(-1) * g
    return weight.clamp_(min=max(weight.min().item(), 1e-3))


def _weight_row(r: int, starts: list[list[int]], weight: torch.Tensor, plane: tuple[int, ...]) -> torch.Tensor:
    """Sum of the window weights over row ``r`` of axis 0 (shape ``plane``): the whole-volume weight
    map one row at a time."""
    total = torch.zeros(plane, dtype=torch.float32)
    p0 = weight.shape[0]
    for s0 in starts[0]:
        if s0 <= r < s0 + p0:
            for st in itertools.product(*starts[1:]):
                total[tuple(slice(s, s + p) for s, p in zip(st, weight.shape[1:]))] += weight[r - s0]
    return total


def _sliding(predictor, image: torch.Tensor, patch: Sequence[int], step: float, device: torch.device,
             batch: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian-weighted sliding window over ``image`` (C, *S) into ``out`` (K, *S) (allocated when
    None, float32 or float16 by :func:`accumulation_dtype`). The window grid is the product of
    per-axis starts and the Gaussian a product of per-axis ones, so the sum of weights at a voxel is
    a product of per-axis sums: the result is normalised one row of axis 0 at a time without a
    whole-volume weight map."""
    spatial = tuple(image.shape[1:])
    padded = tuple(max(n, p) for n, p in zip(spatial, patch))
    before = [(p - n) // 2 for n, p in zip(spatial, padded)]
    if padded != spatial:  # smaller than the patch: pad with zeros, centred (as MONAI)
        pads = [x for n, p, b in reversed(list(zip(spatial, padded, before))) for x in (b, p - n - b)]
        image = torch.nn.functional.pad(image, pads)
    starts = [window_starts(n, p, step) for n, p in zip(padded, patch)]
    weight = importance_map(patch)
    if out is None or padded == spatial:
        acc = out.zero_() if out is not None else None
    else:
        acc = torch.zeros((out.shape[0], *padded), dtype=torch.float32)
    windows = list(itertools.product(*starts))
    for i in range(0, len(windows), batch):
        group = windows[i:i + batch]
        boxes = [tuple(slice(s, s + p) for s, p in zip(w, patch)) for w in group]
        x = torch.stack([image[(slice(None),) + b] for b in boxes]).to(device)
        y = predictor(x).float().to("cpu")
        if acc is None:
            acc = torch.zeros((y.shape[1], *padded), dtype=accumulation_dtype((y.shape[1], *padded)))
        for b, yb in zip(boxes, y):
            acc[(slice(None),) + b] += yb * weight
    for r in range(padded[0]):  # one row of axis 0 at a time: no whole-volume weight map
        acc[:, r] /= _weight_row(r, starts, weight, padded[1:])
    if padded == spatial:
        return acc
    inner = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(before, spatial))
    if out is None:
        return acc[inner].clone()
    out.copy_(acc[inner])
    return out


@torch.no_grad()
def predict_logits(networks: Sequence[nn.Module], image: torch.Tensor, patch_size: Sequence[int],
                   step: float = 0.5, mirror_axes: Sequence[int] = (0, 1, 2), device: torch.device | str = "cpu",
                   amp_dtype: torch.dtype | None = None, sw_batch_size: int = 1) -> torch.Tensor:
    """Mean logits ``(K, *spatial)`` (on CPU; float32, or float16 for volumes whose float32 logits
    would exceed ``HALF_ACCUMULATION_BYTES``) of ``networks`` over a whole ``image`` (C, *spatial).

    ``patch_size`` has 3 entries for 3D networks or 2 for 2D ones (then ``image`` is predicted slice
    by slice along axis 0 and ``mirror_axes`` index the 2 in-plane axes). ``mirror_axes`` are spatial
    axes of the patch (0-based); ``()`` disables mirroring. Images smaller than the patch are padded.
    Windows are accumulated into one preallocated ``(K, *spatial)`` buffer, the only whole-volume
    tensor made besides the image (no weight map; 2D slices are written into it one by one).
    """
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
    image = image.float()
    patch = tuple(int(p) for p in patch_size)
    if len(patch) == 3:
        return _sliding(predictor, image, patch, step, device, sw_batch_size)
    out = None
    for x in range(spatial[0]):  # 2D: one (C, Y, Z) image per slice of axis 0
        first = _sliding(predictor, image[:, x], patch, step, device, sw_batch_size, None if out is None else out[:, x])
        if out is None:
            out = torch.empty((first.shape[0], *spatial), dtype=accumulation_dtype((first.shape[0], *spatial)))
            out[:, x] = first
    return out


def logits_to_probabilities(logits: torch.Tensor, regions: bool,
                            slab_voxels: int = ACTIVATION_SLAB_VOXELS) -> torch.Tensor:
    """Softmax over channel 0 (classes), or a per-channel sigmoid for region outputs, computed **in
    place** (``logits`` is overwritten and returned, in its dtype): the activation runs in float32 on
    slabs of about ``slab_voxels`` voxels along the first spatial axis, so no second ``(K, *S)``
    tensor is made."""
    rows = max(1, slab_voxels // max(1, logits[:, :1].numel()))
    for i in range(0, logits.shape[1], rows):
        slab = logits[:, i:i + rows]
        x = slab.float()
        slab.copy_(x.sigmoid_() if regions else torch.softmax(x, dim=0))
    return logits


@torch.no_grad()
def predict_probabilities(networks: Sequence[nn.Module], image: torch.Tensor, patch_size: Sequence[int],
                          regions: bool = False, **kwargs) -> torch.Tensor:
    """Class (softmax) or region (sigmoid) probabilities ``(K, *spatial)`` from :func:`predict_logits`
    (logits averaged over windows, mirrorings and networks, then activated, as nnU-Net)."""
    return logits_to_probabilities(predict_logits(networks, image, patch_size, **kwargs), regions)
