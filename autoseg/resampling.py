"""Resample images, label maps and class probabilities to a new voxel spacing or shape.

Arrays are ``(C, X, Y, Z)`` (images, probabilities) or ``(X, Y, Z)`` / ``(1, X, Y, Z)`` (labels);
spacings are mm per spatial axis in the same order. The new shape for a target spacing is
``round(shape * spacing / target_spacing)`` per axis (at least 1).

Interpolation follows the nnU-Net v2 rules (nnunetv2/preprocessing/resampling/default_resampling.py,
``resample_data_or_seg_to_shape``): spline order 3
for images, order 1 applied to each class's one-hot mask for labels, order 1 for probabilities;
pixel-centre ("grid mode") alignment with edge replication and no anti-aliasing, like skimage's
``resize(mode="edge", anti_aliasing=False)``; results of order >= 2 are clipped to the input range.
When one axis is much coarser than the others (max/min spacing above ``anisotropy_threshold``, in
the current or the target spacing) the volume is resampled in-plane with ``order`` slice by slice
and along the thick axis with ``order_z`` (0 = nearest), so thick slices are not blurred into each
other; this is skipped when two axes share the largest spacing. Work is done one channel (or one
class) at a time in float32, and in slabs of about ``SLAB_VOXELS`` output voxels along an axis that is
not resampled separately (each slab reads its input rows plus a margin, ``SPLINE_MARGIN`` for
splines), so temporaries stay bounded whatever the volume's size; results equal the whole-volume
computation up to float32 rounding (orders 0 and 1 exactly up to coordinate rounding).
For label maps (order <= 1) each class's mask is interpolated only inside the box its voxels can
reach, and the smallest value fills the rest: the same labels as interpolating every class over the
whole volume (a class's interpolated mask is exactly 0 outside its box), at a fraction of the time
for small structures in large volumes (``benchmarks/label_resampling.py``). Cubic splines (order 3)
are evaluated one axis at a time (4 taps per voxel and axis instead of 64), as scipy's
``affine_transform`` computes them up to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net ANISO_THRESHOLD: max/min spacing ratio for separate-z resampling
# Output voxels resampled per slab: bounds the temporaries (spline prefilter copy in float64, one
# class mask and score of a label map) to ~16 M voxels (64 MB float32) whatever the volume's size.
SLAB_VOXELS = 16_000_000
# Input rows read beyond a slab on each side for splines of order >= 2: the cubic prefilter's
# influence decays by |pole| = 0.268 per voxel, so 12 rows leave < 1e-6 of the value range (SciPy
# pads by 12 voxels for the same reason); orders 0 and 1 only touch their neighbours.
SPLINE_MARGIN = 12
SPLINE_PAD = 12  # edge rows added before the spline prefilter (scipy.ndimage pads mode="nearest" by 12 too)


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


class _Axis(NamedTuple):
    """How one axis of a block maps onto the whole grid: the whole input and output sizes, and the
    first output and input index of the block along this axis (0, 0 for a whole volume)."""

    n_in: int
    n_out: int
    o0: int = 0
    i0: int = 0

    def coords(self, n: int) -> np.ndarray:
        """Block-local source coordinates of ``n`` output voxels from ``o0`` (pixel-centre alignment)."""
        return (np.arange(self.o0, self.o0 + n) + 0.5) * (self.n_in / self.n_out) - 0.5 - self.i0

    def nearest(self, n: int, n_block_in: int) -> np.ndarray:
        """Block-local source index of ``n`` output voxels for nearest-neighbour resizing."""
        centres = (np.arange(self.o0, self.o0 + n) + 0.5) * (self.n_in / self.n_out)
        return np.clip(np.floor(centres).astype(np.int64) - self.i0, 0, n_block_in - 1)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output voxel for nearest-neighbour resizing with pixel-centre alignment."""
    return _Axis(n_in, n_out).nearest(n_out, n_in)


def _nearest(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    out = arr
    for axis, (n_in, n_out) in enumerate(zip(arr.shape, shape)):
        if n_in != n_out:
            out = np.take(out, _nearest_index(n_in, n_out), axis=axis)
    return np.array(out, dtype=np.float32 if arr.dtype.kind == "f" or arr.dtype == bool else arr.dtype, copy=True)


def _cubic_weights(frac: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights (4, n) of the taps at ``floor - 1 .. floor + 2`` for fractional offsets ``frac``."""
    t = frac
    return np.stack([(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
                     t**3 / 6])


def _cubic_separable(arr: np.ndarray, axes: Sequence[_Axis], shape: Sequence[int]) -> np.ndarray:
    """Cubic B-spline resizing of ``arr`` to ``shape`` (float32), one axis at a time.

    The same computation as ``scipy.ndimage.affine_transform(order=3, mode="nearest")`` with a
    diagonal matrix: edge padding by ``SPLINE_PAD`` rows, the spline prefilter in float64, and the
    tensor-product spline evaluated at the same coordinates. A tensor-product spline can be evaluated
    axis by axis (prefilter and evaluate along one axis, then the next), which reads 4 taps per
    output voxel and axis instead of 4**ndim; the float64 sums differ only in rounding, far below
    the float32 output's resolution (tests compare the two)."""
    out = np.pad(arr.astype(np.float64), SPLINE_PAD, mode="edge")
    for a, (ax, n) in enumerate(zip(axes, shape)):
        ndimage.spline_filter1d(out, 3, axis=a, output=out, mode="nearest")
        c = ax.coords(n) + SPLINE_PAD
        first = np.floor(c)
        weights = _cubic_weights(c - first)
        taps = first.astype(np.int64) - 1
        view = [1] * out.ndim
        view[a] = n
        acc = np.take(out, np.clip(taps, 0, out.shape[a] - 1), axis=a) * weights[0].reshape(view)
        for t in range(1, 4):
            acc += np.take(out, np.clip(taps + t, 0, out.shape[a] - 1), axis=a) * weights[t].reshape(view)
        out = acc
    return out.astype(np.float32)


def _interpolate(arr: np.ndarray, axes: Sequence[_Axis], shape: Sequence[int], order: int,
                 value_range: tuple[float, float] | None) -> np.ndarray:
    """Resize the block ``arr`` to ``shape`` (float32) with the whole-grid mapping ``axes``; results
    of order >= 2 are clipped to ``value_range`` (splines overshoot; skimage clips the same way)."""
    shape = tuple(int(s) for s in shape)
    if order == 0:
        out = arr
        for a, (ax, n) in enumerate(zip(axes, shape)):
            if not (ax.n_in == ax.n_out and ax.o0 == ax.i0 and out.shape[a] == n):
                out = np.take(out, ax.nearest(n, out.shape[a]), axis=a)
        return np.array(out, dtype=np.float32, copy=True)
    if order == 3:
        out = _cubic_separable(arr, axes, shape)
    else:
        scale = np.array([ax.n_in / ax.n_out for ax in axes])
        offset = np.array([ax.coords(1)[0] for ax in axes])  # source coordinate of the block's first voxel
        out = ndimage.affine_transform(arr, scale, offset=offset, output_shape=shape, output=np.float32,
                                       order=order, mode="nearest", prefilter=order > 1)
    if order > 1 and value_range is not None:
        np.clip(out, *value_range, out=out)
    return out


def _slab_axis(axis: int | None) -> int:
    """The axis a volume is cut into slabs along: never the one resampled separately."""
    return 1 if axis == 0 else 0


def _slabs(n_in: int, n_out: int, rows: int, margin: int):
    """``(o0, o1, i0, i1)``: output rows ``[o0, o1)`` need input rows ``[i0, i1)`` (``margin`` more on
    each side than the interpolation touches)."""
    for o0 in range(0, n_out, rows):
        o1 = min(n_out, o0 + rows)
        first, last = _Axis(n_in, n_out, o0).coords(o1 - o0)[[0, -1]]
        yield o0, o1, max(0, int(np.floor(first)) - margin), min(n_in, int(np.floor(last)) + 2 + margin)


def _blocks(in_shape: Sequence[int], shape: Sequence[int], axis: int | None, order: int, slab_voxels: int):
    """Slabs of the output along an axis other than ``axis``: ``(out_index, in_index, axes,
    block_shape)`` with the output and input slices, the block's mapping and its output shape."""
    s = _slab_axis(axis)
    rows = max(1, int(slab_voxels // max(1, math.prod(shape) // max(1, shape[s]))))
    for o0, o1, i0, i1 in _slabs(in_shape[s], shape[s], rows, _margin(order)):
        axes = [_Axis(in_shape[a], shape[a], o0 if a == s else 0, i0 if a == s else 0) for a in range(3)]
        block_shape = tuple(o1 - o0 if a == s else int(n) for a, n in enumerate(shape))
        yield (slice(None),) * s + (slice(o0, o1),), (slice(None),) * s + (slice(i0, i1),), axes, block_shape


def _resample_block(block: np.ndarray, axes: list[_Axis], shape: Sequence[int], order: int, order_z: int,
                    axis: int | None, ranges) -> np.ndarray:
    """Resample one block (a slab of a volume, or all of it) to ``shape``, separately along ``axis``
    when it is not None. ``ranges``: (lo, hi) of the whole volume, or per slice along ``axis``."""
    if axis is None or axis is not None and axes[axis].n_in == 1 and axes[axis].n_out == 1:
        return _interpolate(block, axes, shape, order, ranges)
    inplane = list(shape)
    inplane[axis] = block.shape[axis]
    plane_axes = [ax for a, ax in enumerate(axes) if a != axis]
    plane_shape = [s for a, s in enumerate(inplane) if a != axis]
    tmp = np.empty(inplane, dtype=np.float32)
    for i in range(block.shape[axis]):
        index = [slice(None)] * block.ndim
        index[axis] = i
        tmp[tuple(index)] = _interpolate(block[tuple(index)], plane_axes, plane_shape, order,
                                         None if ranges is None else (ranges[0][i], ranges[1][i]))
    ax = axes[axis]
    if ax.n_in == ax.n_out and ax.o0 == ax.i0 and shape[axis] == block.shape[axis]:  # not resampled along axis
        return tmp
    along = [_Axis(n, n) for n in tmp.shape]
    along[axis] = axes[axis]
    overall = None if ranges is None else (float(np.min(ranges[0])), float(np.max(ranges[1])))
    return _interpolate(tmp, along, shape, order_z, overall)


def _value_ranges(vol: np.ndarray, order: int, order_z: int, axis: int | None):
    """Clipping ranges for spline orders >= 2: the volume's, or each slice's along ``axis``."""
    if max(order, order_z) < 2 or not vol.size:
        return None
    if axis is None:
        return float(vol.min()), float(vol.max())
    others = tuple(a for a in range(vol.ndim) if a != axis)
    return vol.min(axis=others), vol.max(axis=others)


def _margin(order: int) -> int:
    return order + (SPLINE_MARGIN if order > 1 else 0)


def _resample_volume(vol: np.ndarray, shape: Sequence[int], order: int, order_z: int, axis: int | None,
                     slab_voxels: int = SLAB_VOXELS, out: np.ndarray | None = None) -> np.ndarray:
    """Resample one 3D volume (float32 out), separately along ``axis`` when it is not None, in slabs
    of about ``slab_voxels`` output voxels along an axis other than ``axis`` (into ``out`` if given)."""
    shape = tuple(int(s) for s in shape)
    out = np.empty(shape, dtype=np.float32) if out is None else out
    if vol.shape == shape:
        out[...] = vol
        return out
    if order == 0 and (axis is None or order_z == 0):
        out[...] = _nearest(vol, shape)
        return out
    ranges = _value_ranges(vol, order, order_z, axis)
    for out_index, in_index, axes, block_shape in _blocks(vol.shape, shape, axis, order, slab_voxels):
        block = vol[in_index]
        if block.dtype != np.float32:  # e.g. float16 probabilities, integer images: one slab at a time
            block = block.astype(np.float32)
        out[out_index] = _resample_block(block, axes, block_shape, order, order_z, axis, ranges)
    return out


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
                   anisotropy_threshold: float = ANISOTROPY_THRESHOLD, slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
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
        _resample_volume(data[c], shape, order, order_z, axis, slab_voxels, out[c])  # to float32 slab by slab
    return out


def resample_probabilities(probabilities: np.ndarray, current_spacing: Sequence[float],
                           target_spacing: Sequence[float] | None = None, new_shape: Sequence[int] | None = None,
                           order: int = 1, order_z: int = 0, anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
                           slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
    """Resample class probabilities or logits (K, X, Y, Z) channel by channel (order 1 by default)."""
    return resample_image(probabilities, current_spacing, target_spacing, new_shape, order, order_z,
                          anisotropy_threshold, slab_voxels)


def _label_block_dense(block, values, axes, shape, order, order_z, axis, dtype) -> np.ndarray:
    """Labels of one block: the value whose interpolated one-hot mask is largest (ties: larger value),
    each value's mask interpolated over the whole block."""
    out = np.zeros(shape, dtype=dtype)
    best = np.full(shape, -np.inf, dtype=np.float32)
    for v in values:
        score = _resample_block((block == v).astype(np.float32), axes, shape, order, order_z, axis, None)
        wins = score >= best
        out[wins] = v
        np.maximum(best, score, out=best)
    return out


class _Box(NamedTuple):
    """A box of a block's output (``out``, slices) and the input rows it reads (``inp``), with the
    whole-grid mapping of each axis (``axes``)."""

    out: tuple[slice, ...]
    inp: tuple[slice, ...]
    axes: list[_Axis]


def _output_box(found: tuple[slice, ...], axes: list[_Axis], shape: Sequence[int], n_in: Sequence[int]) -> tuple[slice, ...]:
    """Output slices of a block whose interpolation (order <= 1) can touch the input box ``found``.

    An output voxel reads the input rows next to its source coordinate (linear: floor and floor + 1;
    nearest: the rounded one), so outside ``coordinate in [start - 2, stop + 1]`` it reads none."""
    box = []
    for ax, n, n_block_in, sl in zip(axes, shape, n_in, found):
        if ax.n_in == ax.n_out and ax.o0 - ax.i0 == 0 and n == n_block_in:
            box.append(sl)  # identity axis: the output rows are the input rows
            continue
        c = ax.coords(n)
        lo = int(np.searchsorted(c, sl.start - 2, side="left"))
        hi = int(np.searchsorted(c, sl.stop + 1, side="right"))
        box.append(slice(lo, max(lo, hi)))
    return tuple(box)


def _union(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def _box_reads(box: tuple[slice, ...], axes: list[_Axis], n_in: Sequence[int], n_out: Sequence[int]) -> _Box:
    """The input rows an output box reads (one row of margin beyond the interpolation's), and the
    box's own whole-grid mapping."""
    inp, sub = [], []
    for ax, sl, n_block_in, n in zip(axes, box, n_in, n_out):
        if ax.n_in == ax.n_out and ax.o0 - ax.i0 == 0 and n == n_block_in:
            i0, i1 = sl.start, sl.stop  # identity axis: read exactly the output rows
        else:
            c = ax.coords(sl.stop)[sl.start:]  # source coordinates of the box's output rows
            i0 = max(0, int(np.floor(c[0])) - 1)
            i1 = min(n_block_in, int(np.floor(c[-1])) + 3)
        inp.append(slice(i0, i1))
        sub.append(_Axis(ax.n_in, ax.n_out, ax.o0 + sl.start, ax.i0 + i0))
    return _Box(box, tuple(inp), sub)


def _label_block(block, values, axes, shape, order, order_z, axis, dtype) -> np.ndarray:
    """Labels of one block, as :func:`_label_block_dense`, with each value's mask interpolated only
    inside the output box its voxels can reach (orders <= 1, whose support is local).

    Outside those boxes a value's interpolated mask is exactly 0, and some value's is positive at
    every voxel (the masks sum to 1 before and after linear interpolation), so a value can win only
    inside its box: the smallest present value fills the rest, and inside the union of the other
    values' boxes the values compete as in the dense computation, in increasing order."""
    if max(order, order_z) > 1:  # spline prefilters reach the whole block
        return _label_block_dense(block, values, axes, shape, order, order_z, axis, dtype)
    index = np.searchsorted(values, block).astype(np.int32) + 1
    found = ndimage.find_objects(index, max_label=len(values))
    present = [k for k, sl in enumerate(found) if sl is not None]
    out = np.full(shape, values[present[0]], dtype=dtype)
    boxes = {k: _output_box(found[k], axes, shape, block.shape) for k in present[1:]}
    boxes = {k: b for k, b in boxes.items() if all(s.stop > s.start for s in b)}
    if not boxes:
        return out
    region = _union(list(boxes.values()))
    region_shape = tuple(s.stop - s.start for s in region)
    best = np.full(region_shape, -np.inf, dtype=np.float32)
    for k in [present[0], *boxes]:
        reads = _box_reads(boxes.get(k, region), axes, block.shape, shape)
        mask = (index[reads.inp] == k + 1).astype(np.float32)
        out_shape = tuple(s.stop - s.start for s in reads.out)
        score = _resample_block(mask, reads.axes, out_shape, order, order_z, axis, None)
        local = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(reads.out, region))
        target, running = out[reads.out], best[local]  # views
        wins = score >= running
        target[wins] = values[k]
        np.maximum(running, score, out=running)
    return out


def resample_label(seg: np.ndarray, current_spacing: Sequence[float], target_spacing: Sequence[float] | None = None,
                   new_shape: Sequence[int] | None = None, order: int = 1, order_z: int = 0,
                   anisotropy_threshold: float = ANISOTROPY_THRESHOLD, slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
    """Resample an integer label map (X, Y, Z) or (1, X, Y, Z); same dtype and leading axes out.

    Each label value's one-hot mask is interpolated with ``order`` (``order_z`` along a thick axis)
    and every output voxel takes the value whose interpolated mask is largest (on a tie the larger
    value wins, as with nnU-Net's per-label 0.5 threshold painted in increasing order). The output is
    made slab by slab (``slab_voxels`` output voxels each) and only one class's float32 mask of a slab
    is alive at a time, so memory grows neither with the number of labels nor with the volume."""
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
        for out_index, in_index, axes, block_shape in _blocks(vol.shape, shape, axis, order, slab_voxels):
            out[out_index] = _label_block(vol[in_index], values, axes, block_shape, order, order_z, axis, seg.dtype)
    return out[None] if lead else out
