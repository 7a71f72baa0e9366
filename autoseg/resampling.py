"""Resample images, label maps and class probabilities to a new voxel spacing or shape.

Arrays are ``(C, X, Y, Z)`` (images, probabilities) or ``(X, Y, Z)`` / ``(1, X, Y, Z)`` (labels);
spacings are mm per spatial axis in the same order. The new shape for a target spacing is
``round(shape * spacing / target_spacing)`` per axis (at least 1).

Interpolation follows the nnU-Net v2 rules (REFERENCE.md section 2, "Resampling"): spline order 3
for images, order 1 applied to each class's one-hot mask for labels, order 1 for probabilities;
pixel-centre ("grid mode") alignment with edge replication and no anti-aliasing, like skimage's
``resize(mode="edge", anti_aliasing=False)``; results of order >= 2 are clipped to the input range.
When one axis is much coarser than the others (max/min spacing above ``anisotropy_threshold``, in
the current or the target spacing) the volume is resampled in-plane with ``order`` slice by slice
and along the thick axis with ``order_z`` (0 = nearest), so thick slices are not blurred into each
other; this is skipped when two axes share the largest spacing. Work is done one channel (or one
class) at a time in float32 to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net ANISO_THRESHOLD: max/min spacing ratio for separate-z resampling


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """``round(shape * spacing / target_spacing)`` per axis, at least 1."""
    if len(shape) != len(spacing) or len(shape) != len(target_spacing):
        raise ValueError(f"shape {tuple(shape)}, spacing {tuple(spacing)} and target spacing "
                         f"{tuple(target_spacing)} must have the same number of axes")
    if min(spacing) <= 0 or min(target_spacing) <= 0:
        raise ValueError(f"spacings must be positive, got {tuple(spacing)} -> {tuple(target_spacing)}")
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def separate_z_axis(current_spacing: Sequence[float], target_spacing: Sequence[float],
                    anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The thick axis to resample separately, or None.

    The current spacing decides when it is anisotropic (max/min > threshold), else the target
    spacing; when the deciding spacing has two or more axes at its maximum, there is no single thick
    axis and the volume is resampled jointly (None)."""
    for spacing in (current_spacing, target_spacing):
        s = np.asarray(spacing, dtype=np.float64)
        if s.max() / s.min() > anisotropy_threshold:
            thick = np.flatnonzero(np.isclose(s, s.max(), rtol=1e-6))
            return int(thick[0]) if len(thick) == 1 else None
    return None


def _zoom(arr: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resize ``arr`` (any number of axes) to ``shape`` with pixel-centre alignment, float32 out."""
    shape = tuple(int(s) for s in shape)
    if arr.shape == shape:
        return np.array(arr, dtype=np.float32, copy=True)
    if order == 0:
        return _nearest(arr, shape)
    zoom = [n / o for n, o in zip(shape, arr.shape)]
    out = ndimage.zoom(arr, zoom, output=np.float32, order=order, mode="nearest", grid_mode=True,
                       prefilter=order > 1)
    if out.shape != shape:  # cannot happen with n / o factors; guards a scipy rounding change
        raise RuntimeError(f"internal resampling error: got shape {out.shape}, wanted {shape}")
    if order > 1 and arr.size:  # splines overshoot; keep values inside the input range (as skimage)
        np.clip(out, arr.min(), arr.max(), out=out)
    return out


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output voxel for nearest-neighbour resizing with pixel-centre alignment."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)  # source coordinate + 0.5
    return np.clip(np.floor(centres).astype(np.int64), 0, n_in - 1)


def _nearest(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    out = arr
    for axis, (n_in, n_out) in enumerate(zip(arr.shape, shape)):
        if n_in != n_out:
            out = np.take(out, _nearest_index(n_in, n_out), axis=axis)
    return np.array(out, dtype=np.float32 if arr.dtype.kind == "f" or arr.dtype == bool else arr.dtype, copy=True)


def _resample_volume(vol: np.ndarray, shape: Sequence[int], order: int, order_z: int, axis: int | None) -> np.ndarray:
    """Resample one 3D volume, separately along ``axis`` when it is not None."""
    if axis is None or vol.shape[axis] == 1 and shape[axis] == 1:
        return _zoom(vol, shape, order)
    inplane = [int(s) for s in shape]
    inplane[axis] = vol.shape[axis]
    slice_shape = [s for a, s in enumerate(inplane) if a != axis]
    tmp = np.empty(inplane, dtype=np.float32)
    for i in range(vol.shape[axis]):
        index = [slice(None)] * vol.ndim
        index[axis] = i
        tmp[tuple(index)] = _zoom(vol[tuple(index)], slice_shape, order)
    if shape[axis] == vol.shape[axis]:
        return tmp
    if order_z == 0:
        return np.take(tmp, _nearest_index(vol.shape[axis], int(shape[axis])), axis=axis)
    return _zoom(tmp, shape, order_z)


def _target_shape(spatial_shape, current_spacing, target_spacing, new_shape) -> tuple[int, ...]:
    if target_spacing is None and new_shape is None:
        raise ValueError("give target_spacing, new_shape or both")
    if new_shape is not None:
        new_shape = tuple(int(s) for s in new_shape)
        if len(new_shape) != len(spatial_shape) or min(new_shape) < 1:
            raise ValueError(f"new_shape {new_shape} must have {len(spatial_shape)} positive entries")
        return new_shape
    return compute_new_shape(spatial_shape, current_spacing, target_spacing)


def _axis_for(current_spacing, target_spacing, spatial_shape, new_shape, threshold) -> int | None:
    if target_spacing is None:  # shape given: the spacing the new grid would have
        target_spacing = [s * o / n for s, o, n in zip(current_spacing, spatial_shape, new_shape)]
    return separate_z_axis(current_spacing, target_spacing, threshold)


def resample_image(data: np.ndarray, current_spacing: Sequence[float], target_spacing: Sequence[float] | None = None,
                   new_shape: Sequence[int] | None = None, order: int = 3, order_z: int = 0,
                   anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Resample ``data`` (C, X, Y, Z) to ``target_spacing`` (mm) or to ``new_shape`` (X', Y', Z').

    With both, ``new_shape`` sets the shape and ``target_spacing`` only takes part in the
    separate-z decision (as when mapping a prediction back onto the exact original grid).
    Returns a new float32 array (C, X', Y', Z'); an unchanged shape returns a float32 copy."""
    if data.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) array, got shape {data.shape}")
    shape = _target_shape(data.shape[1:], current_spacing, target_spacing, new_shape)
    if tuple(data.shape[1:]) == shape:
        return np.array(data, dtype=np.float32, copy=True)
    axis = _axis_for(current_spacing, target_spacing, data.shape[1:], shape, anisotropy_threshold)
    out = np.empty((data.shape[0],) + shape, dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = _resample_volume(np.asarray(data[c], dtype=np.float32), shape, order, order_z, axis)
    return out


def resample_probabilities(probabilities: np.ndarray, current_spacing: Sequence[float],
                           target_spacing: Sequence[float] | None = None, new_shape: Sequence[int] | None = None,
                           order: int = 1, order_z: int = 0,
                           anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Resample class probabilities or logits (K, X, Y, Z) channel by channel (order 1 by default)."""
    return resample_image(probabilities, current_spacing, target_spacing, new_shape, order, order_z,
                          anisotropy_threshold)


def resample_label(seg: np.ndarray, current_spacing: Sequence[float], target_spacing: Sequence[float] | None = None,
                   new_shape: Sequence[int] | None = None, order: int = 1, order_z: int = 0,
                   anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Resample an integer label map (X, Y, Z) or (1, X, Y, Z); same dtype and leading axes out.

    Each label value's one-hot mask is interpolated with ``order`` (``order_z`` along a thick axis)
    and every output voxel takes the value whose interpolated mask is largest (on a tie the larger
    value wins, as with nnU-Net's per-label 0.5 threshold painted in increasing order). Only one
    float32 mask is alive at a time, so memory does not grow with the number of labels."""
    lead = seg.ndim == 4
    if lead and seg.shape[0] != 1 or seg.ndim not in (3, 4):
        raise ValueError(f"expected a label map (X, Y, Z) or (1, X, Y, Z), got shape {seg.shape}")
    vol = seg[0] if lead else seg
    shape = _target_shape(vol.shape, current_spacing, target_spacing, new_shape)
    if tuple(vol.shape) == shape:
        return np.array(seg, copy=True)
    axis = _axis_for(current_spacing, target_spacing, vol.shape, shape, anisotropy_threshold)
    values = np.unique(vol)
    if len(values) == 1 or (order == 0 and (axis is None or order_z == 0)):
        out = np.full(shape, values[0], dtype=seg.dtype) if len(values) == 1 else _nearest(vol, shape)
    else:
        out = np.zeros(shape, dtype=seg.dtype)
        best = np.full(shape, -np.inf, dtype=np.float32)
        for v in values:
            score = _resample_volume((vol == v).astype(np.float32), shape, order, order_z, axis)
            wins = score >= best
            out[wins] = v
            np.maximum(best, score, out=best)
    return out[None] if lead else out
