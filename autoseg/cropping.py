"""Crop a case to the non-zero region of its channels (holes filled), and undo the crop."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BBox = tuple[tuple[int, int], ...]


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Boolean (X, Y, Z) mask: voxels where any channel of ``data`` (C, X, Y, Z) is non-zero,
    with enclosed holes filled."""
    mask = np.any(data != 0, axis=0)
    if mask.all():  # no zero voxel (CT, images normalised before export): no hole, skip the fill's passes
        return mask
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> BBox:
    """Half-open bounding box ``((x0, x1), (y0, y1), (z0, z1))`` of ``mask``; the whole array when empty."""
    if not mask.any():
        return tuple((0, int(s)) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def crop(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """Crop the last ``len(bbox)`` axes of ``array`` to ``bbox``."""
    lead = (slice(None),) * (array.ndim - len(bbox))
    return array[lead + tuple(slice(a, b) for a, b in bbox)]


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None):
    """Crop ``data`` (C, X, Y, Z) and optional ``seg`` (X, Y, Z or 1, X, Y, Z) to the non-zero box.

    Returns ``(data_c, seg_c, bbox, mask_c)``; ``mask_c`` is the cropped non-zero mask (used for
    masked normalisation)."""
    mask = nonzero_mask(data)
    bbox = bounding_box(mask)
    seg_c = crop(seg, bbox) if seg is not None else None
    return crop(data, bbox), seg_c, bbox, crop(mask, bbox)


def uncrop(array: np.ndarray, bbox: BBox, full_shape: tuple[int, ...], fill=0) -> np.ndarray:
    """Paste ``array`` (..., X', Y', Z') back into an array of spatial shape ``full_shape``."""
    lead = array.shape[: array.ndim - len(bbox)]
    out = np.full(lead + tuple(full_shape), fill, dtype=array.dtype)
    out[(slice(None),) * len(lead) + tuple(slice(a, b) for a, b in bbox)] = array
    return out
