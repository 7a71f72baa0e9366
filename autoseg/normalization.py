"""Intensity normalisation of one image channel, as decided by a :class:`NormalizationPlan`.

Schemes (nnU-Net v2, nnunetv2/preprocessing/normalization/default_normalization_schemes.py):

- ``ct``: clip to the dataset's foreground [p0.5, p99.5], then subtract the foreground mean and
  divide by the foreground standard deviation (all four numbers come from the fingerprint, so every
  image is mapped the same way).
- ``zscore``: subtract this image's mean and divide by its standard deviation; with ``use_mask``
  the statistics come from the non-zero mask only and voxels outside it are set to 0.
- ``rescale_0_1``: map this image's [min, max] to [0, 1].
- ``rgb_0_1``: divide 8-bit colour values by 255 (values must lie in [0, 255]).
- ``none``: leave intensities unchanged.

Arrays are float32 ``(X, Y, Z)`` per channel (any number of axes works); statistics are computed
in float64. A standard deviation (or range) below ``EPS`` is replaced by ``EPS`` so a constant image
becomes 0 instead of NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoseg.planning.plans import NormalizationPlan

EPS = 1e-8  # nnU-Net's floor for the divisor in every scheme


def _ct(image: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    missing = [k for k in ("clip_low", "clip_high", "mean", "std") if getattr(plan, k) is None]
    if missing:
        raise ValueError(f"CT normalisation of channel '{plan.channel_name}' needs {', '.join(missing)} in "
                         "plans.json; rerun `autoseg plan` to recompute them from the fingerprint")
    out = np.clip(image, plan.clip_low, plan.clip_high).astype(np.float32, copy=False)  # no second copy
    out -= np.float32(plan.mean)
    out /= np.float32(max(plan.std, EPS))
    return out


def _zscore(image: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    out = np.array(image, dtype=np.float32, copy=True)
    if plan.use_mask and mask is not None:
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
        inside = out[mask]
        if inside.size == 0:
            return np.zeros_like(out)
        mean, std = inside.mean(dtype=np.float64), inside.std(dtype=np.float64)
        out[mask] = (inside - mean) / max(std, EPS)
        out[~mask] = 0
        return out
    mean, std = out.mean(dtype=np.float64), out.std(dtype=np.float64)
    out -= np.float32(mean)
    out /= np.float32(max(std, EPS))
    return out


def _rescale_0_1(image: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    out = np.array(image, dtype=np.float32, copy=True)
    if out.size == 0:
        return out
    low, high = float(out.min()), float(out.max())
    out -= np.float32(low)
    out /= np.float32(max(high - low, EPS))
    return out


def _rgb_0_1(image: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    out = np.array(image, dtype=np.float32, copy=True)
    if out.size and (out.min() < 0 or out.max() > 255):
        raise ValueError(f"channel '{plan.channel_name}' is normalised as 8-bit colour (rgb_to_0_1) but holds values "
                         f"in [{out.min():g}, {out.max():g}], outside [0, 255]")
    out /= np.float32(255)
    return out


def _none(image: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    return np.array(image, dtype=np.float32, copy=True)


NORMALIZERS: dict[str, Callable[[np.ndarray, NormalizationPlan, np.ndarray | None], np.ndarray]] = {
    "ct": _ct,
    "zscore": _zscore,
    "rescale_0_1": _rescale_0_1,
    "rgb_0_1": _rgb_0_1,
    "none": _none,
}


def normalize_channel(image: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel; returns a new float32 array. ``mask`` (bool, same shape) is the
    non-zero region, used only by ``zscore`` with ``plan.use_mask``."""
    try:
        fn = NORMALIZERS[plan.scheme]
    except KeyError:
        raise ValueError(f"unknown normalisation scheme '{plan.scheme}' for channel '{plan.channel_name}' in "
                         f"plans.json; choices: {', '.join(NORMALIZERS)}") from None
    return fn(image, plan, mask)


def normalize(data: np.ndarray, plans: Sequence[NormalizationPlan], mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise every channel of ``data`` (C, X, Y, Z) with its plan; returns a new float32 array."""
    if len(plans) != data.shape[0]:
        raise ValueError(f"plans.json has {len(plans)} normalisation entr{'y' if len(plans) == 1 else 'ies'} but "
                         f"the image has {data.shape[0]} channel(s); rerun `autoseg plan`")
    out = np.empty(data.shape, dtype=np.float32)
    for c, plan in enumerate(plans):
        out[c] = normalize_channel(data[c], plan, mask)
    return out
