"""Where a training patch comes from: draw a box in a preprocessed case, then read it.

Drawing and reading are separate (as in torchio's ``RandomFlip`` -> ``Flip``): :func:`draw_patch_box`
uses only the generator it
is given and returns a :class:`PatchBox`; :func:`read_patch` slices that box out of the
memory-mapped arrays of :func:`autoseg.storage.open_case` (only the box is read, never the whole
case) and pads what lies outside the volume.

Boxes are in the voxel indices of the stored ``(C, X, Y, Z)`` arrays and always 3D. A ``2d``
configuration uses a box of size ``(1, h, w)``: one slice along axis 0 and a patch over axes 1, 2.

Placement (nnU-Net v2 data loader, ``nnUNetDataLoader.get_bbox`` in nnunetv2/training/dataloading/data_loader.py):

- random box: the start of the final patch is uniform in ``[0, extent - patch]`` per axis; where
  the volume is smaller than the patch, the volume is centred in the patch (as nnU-Net does).
- forced foreground: pick one of the wanted classes present in the case uniformly, then one of its
  stored voxel coordinates (``{case}_fg.npz``) uniformly, then a start so that this voxel lies at a
  uniformly random position inside the final patch (nnU-Net centres the patch on the voxel; a
  random offset gives more variety and still guarantees the voxel is inside), clipped to the
  allowed range above. A case without any wanted class falls back to a random box.
- per batch, the last ``batch_size - round(batch_size * (1 - oversample))`` samples are forced
  (:func:`forced_count`; batch 2, oversample 0.33 -> 1 of 2).

Enlarged patches: rotating or scaling a patch needs image content from outside the final patch,
otherwise zeros enter its corners. nnU-Net reads a patch enlarged to the worst case over the
augmentation ranges and crops the centre after the spatial transform. Here the augmentation
parameters are drawn first and the box is enlarged by the margin that the drawn rotation and scale
need (``augmentation.read_margin``, symmetric, 0 when no spatial transform was drawn); the spatial
transform then samples the centre ``patch_size`` back. The result equals the worst-case read, with
less data read.

Padding: outside the volume the image is 0 and the label 0 (background). nnU-Net pads the label
with -1 and turns -1 into 0 after augmentation, which gives the same labels. Stored label values
below 0 (nnU-Net's "outside the non-zero mask" marker) are likewise read as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autoseg.storage import PreprocessedCase

IMAGE_PAD_VALUE = 0.0   # nnU-Net pads image patches with 0
LABEL_PAD_VALUE = 0     # nnU-Net pads with -1, then maps -1 -> 0 (RemoveLabelTansform)


@dataclass(frozen=True)
class PatchBox:
    """A box ``[lower, lower + size)`` per axis in stored-voxel indices; may extend past the volume."""

    lower: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def upper(self) -> tuple[int, ...]:
        return tuple(a + s for a, s in zip(self.lower, self.size))

    def expanded(self, margin: Sequence[int]) -> "PatchBox":
        """The box grown by ``margin[d]`` voxels on both sides of axis ``d``."""
        if len(margin) != len(self.size):
            raise ValueError(f"margin {tuple(margin)} needs one entry per box axis ({len(self.size)})")
        return PatchBox(tuple(a - m for a, m in zip(self.lower, margin)),
                        tuple(s + 2 * m for s, m in zip(self.size, margin)))

    def contains(self, voxel: Sequence[int]) -> bool:
        return all(a <= v < b for a, v, b in zip(self.lower, voxel, self.upper))


def forced_count(batch_size: int, oversample: float) -> int:
    """How many samples (the last ones) of a batch must contain foreground (nnU-Net's rule)."""
    if not 0.0 <= oversample <= 1.0:
        raise ValueError(f"oversample_foreground must lie in [0, 1], got {oversample}")
    return batch_size - round(batch_size * (1.0 - oversample))


def oversampling_classes(foreground_classes: Sequence[int] | None = None, ignore_label: int | None = None,
                         regions: Sequence[Sequence[int]] | None = None) -> tuple[int, ...] | None:
    """Label values a forced-foreground sample may be centred on.

    Regions: every label value inside any region; otherwise ``foreground_classes``. Background (0),
    negative values and the ignore label are never chosen. ``None`` (nothing given) means every
    stored class except those.
    """
    if regions:
        values = {v for region in regions for v in region}
    elif foreground_classes is not None:
        values = set(foreground_classes)
    else:
        return None
    return tuple(sorted(v for v in values if v > 0 and v != ignore_label))


def _start_range(extent: int, patch: int) -> tuple[int, int]:
    """Inclusive range of the final patch's start along one axis."""
    if extent >= patch:
        return 0, extent - patch
    centred = -((patch - extent) // 2)
    return centred, centred


def choose_foreground_voxel(rng: np.random.Generator, locations: dict[int, np.ndarray],
                            classes: Sequence[int] | None) -> np.ndarray | None:
    """A stored voxel ``(3,)`` of a class drawn uniformly among the wanted classes present; None if none."""
    candidates = [c for c in sorted(locations)
                  if len(locations[c]) > 0 and (c in classes if classes is not None else c > 0)]
    if not candidates:
        return None
    cls = candidates[int(rng.integers(len(candidates)))]
    coords = locations[cls]
    return np.asarray(coords[int(rng.integers(len(coords)))], dtype=np.int64)


def draw_patch_box(rng: np.random.Generator, shape: Sequence[int], patch_size: Sequence[int],
                   force_fg: bool = False, locations: dict[int, np.ndarray] | None = None,
                   classes: Sequence[int] | None = None) -> PatchBox:
    """Draw the final patch box in a volume of spatial ``shape`` (X, Y, Z).

    ``patch_size`` has one entry per axis of ``shape`` (``(1, h, w)`` for 2D slices). With
    ``force_fg`` the box contains a stored voxel of one of ``classes`` (see module docstring).
    """
    if len(shape) != len(patch_size):
        raise ValueError(f"patch size {tuple(patch_size)} and volume shape {tuple(shape)} differ in dimensions")
    ranges = [_start_range(int(e), int(p)) for e, p in zip(shape, patch_size)]
    voxel = choose_foreground_voxel(rng, locations or {}, classes) if force_fg else None
    if voxel is None:
        lower = [int(rng.integers(lo, hi + 1)) for lo, hi in ranges]
    else:
        lower = []
        for (lo, hi), v, p in zip(ranges, voxel, patch_size):
            a, b = max(lo, int(v) - int(p) + 1), min(hi, int(v))
            lower.append(int(rng.integers(a, b + 1)))
    return PatchBox(tuple(lower), tuple(int(p) for p in patch_size))


def read_box(array: np.ndarray, box: PatchBox, fill) -> np.ndarray:
    """Copy ``box`` of the spatial axes (the last ``len(box.size)``) out of ``array``, padding with ``fill``.

    Only the part of ``array`` inside the box is touched, so a memory map reads just that region.
    """
    spatial = array.shape[array.ndim - len(box.size):]
    lead = array.shape[: array.ndim - len(box.size)]
    out = np.full(lead + box.size, fill, dtype=array.dtype)
    src, dst = [], []
    for a, b, n in zip(box.lower, box.upper, spatial):
        lo, hi = max(a, 0), min(b, n)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    keep = (slice(None),) * len(lead)
    out[keep + tuple(dst)] = array[keep + tuple(src)]
    return out


def read_patch(case: PreprocessedCase, box: PatchBox) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(C, *box.size)`` float32 and label ``(1, *box.size)`` int16 of ``box``.

    Padding outside the volume: image 0, label 0; stored negative labels become 0.
    """
    if case.seg is None:
        raise ValueError(f"case '{case.props.case_id}' has no stored label ({case.props.case_id}_seg.npy); "
                         "training needs labelled cases: rerun preprocessing with the labels present")
    image = read_box(case.data, box, IMAGE_PAD_VALUE).astype(np.float32, copy=False)
    seg = read_box(case.seg, box, LABEL_PAD_VALUE).astype(np.int16, copy=False)
    np.maximum(seg, LABEL_PAD_VALUE, out=seg)
    return image, seg
