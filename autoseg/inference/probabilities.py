"""Saved class probabilities (``{case}.npz``) and turning probabilities into label maps.

File format (the same as the end-of-training validation writes, so cross-validation results can be
ensembled): ``probabilities`` float16 ``(K, X', Y', Z')`` in the raw file's axis order over the crop
box, ``bbox`` int64 ``(3, 2)`` half-open crop box in raw voxel indices, ``original_shape`` int64
``(3,)`` the raw file's shape, and optionally ``regions_class_order`` int64 ``(R,)`` (present and
non-empty for region models: channel r is a sigmoid region painted with value ``order[r]``).
Outside the crop box every voxel is background. The segmentation written next to the ``.npz``
(``{case}{file_ending}``) carries the geometry.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_write_bytes


class ProbabilitiesError(ValueError):
    """A probabilities file that is unreadable or does not match the others."""


@dataclass(frozen=True)
class SavedProbabilities:
    """Probabilities ``(K, X', Y', Z')`` float32 over ``bbox`` of a volume of ``original_shape``."""

    probabilities: np.ndarray
    bbox: tuple[tuple[int, int], ...]
    original_shape: tuple[int, int, int]
    regions_class_order: tuple[int, ...] | None = None


def save_probabilities(path: Path, saved: SavedProbabilities) -> Path:
    """Write ``saved`` as a compressed ``.npz`` (atomically)."""
    buf = io.BytesIO()
    arrays = dict(probabilities=saved.probabilities.astype(np.float16),
                  bbox=np.asarray(saved.bbox, dtype=np.int64),
                  original_shape=np.asarray(saved.original_shape, dtype=np.int64))
    if saved.regions_class_order:
        arrays["regions_class_order"] = np.asarray(saved.regions_class_order, dtype=np.int64)
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_probabilities(path: Path) -> SavedProbabilities:
    path = Path(path)
    try:
        with np.load(path) as f:
            probs = np.asarray(f["probabilities"], dtype=np.float32)
            bbox = tuple((int(a), int(b)) for a, b in np.asarray(f["bbox"]))
            shape = tuple(int(s) for s in np.asarray(f["original_shape"]))
            rco = tuple(int(v) for v in f["regions_class_order"]) if "regions_class_order" in f.files else ()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ProbabilitiesError(f"{path}: not a readable probabilities file ({type(e).__name__}: {e}); "
                                 "predict the case again with --save-probabilities") from None
    if probs.ndim != 4 or len(bbox) != 3 or len(shape) != 3 or \
            tuple(b - a for a, b in bbox) != probs.shape[1:]:
        raise ProbabilitiesError(f"{path}: probabilities {probs.shape}, crop box {bbox} and shape {shape} do not fit "
                                 "together; predict the case again")
    n_bad = int(probs.size - np.count_nonzero(np.isfinite(probs)))
    if n_bad:  # after the float32 cast: argmax would silently pick a class for NaN voxels
        raise ProbabilitiesError(f"{path}: {n_bad} probabilities are NaN or infinite; predict the case again with "
                                 "--save-probabilities")
    return SavedProbabilities(probs, bbox, shape, rco or None)


def regions_order(spec) -> tuple[int, ...] | None:
    """The ``regions_class_order`` of a :class:`~autoseg.dataset.DatasetSpec` with regions, else None."""
    return tuple(spec.regions_class_order) if spec.has_regions else None


def labels_from_probabilities(probs: np.ndarray, regions_class_order: tuple[int, ...] | None = None) -> np.ndarray:
    """``(K, *S)`` probabilities -> ``(*S)`` int16 label map: argmax over classes, or for regions each
    region above 0.5 painted with its ``regions_class_order`` value in order (later ones on top)."""
    if not regions_class_order:
        return probs.argmax(0).astype(np.int16)
    if len(regions_class_order) != probs.shape[0]:
        raise ProbabilitiesError(f"{probs.shape[0]} region channels but regions_class_order has "
                                 f"{len(regions_class_order)} entries")
    out = np.zeros(probs.shape[1:], dtype=np.int16)
    for r, value in enumerate(regions_class_order):
        out[probs[r] > 0.5] = value
    return out


def background(num_channels: int, regions: bool) -> np.ndarray:
    """The probability vector of a voxel outside the crop box: class 0 certain, or no region."""
    vec = np.zeros(num_channels, dtype=np.float32)
    if not regions:
        vec[0] = 1.0
    return vec


def place(saved: SavedProbabilities, bbox: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``saved``'s probabilities inside the (larger or equal) box ``bbox``, background elsewhere."""
    if tuple(saved.bbox) == tuple(bbox):
        return saved.probabilities
    k = saved.probabilities.shape[0]
    shape = tuple(b - a for a, b in bbox)
    out = np.empty((k, *shape), dtype=np.float32)
    out[:] = background(k, bool(saved.regions_class_order))[(...,) + (None,) * 3]
    inner = tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(saved.bbox, bbox))
    out[(slice(None),) + inner] = saved.probabilities
    return out
