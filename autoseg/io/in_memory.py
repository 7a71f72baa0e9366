"""Images handed over in memory (nibabel, SimpleITK, NumPy) or by path, and label maps handed back
in the same kind, for the Python API (:class:`autoseg.segmenter.Segmenter`).

Each kind is converted at this edge to the package convention (voxels ``(X, Y, Z)``, spacing in mm,
4x4 voxel-to-RAS+ affine; :class:`~autoseg.io.Geometry`) exactly as the file readers of
:mod:`autoseg.io.images` do for the same data on disk: a nibabel image as :func:`read_volume` reads a
NIfTI file (voxels from ``dataobj``, spacing from the header's zooms, the image's affine), a
SimpleITK image as it reads an NRRD/MHA file (array axes reversed to (x, y, z), LPS geometry turned
into RAS). A NumPy array has no geometry: its axes are taken as they are and ``spacing`` (mm per
array axis) or ``affine`` says the voxel size, which is all the prediction depends on.

Label maps go back as the same kind: a nibabel ``Nifti1Image`` with the input's affine and header
(the header copied as :func:`~autoseg.io.write_like` copies a reference file's), a SimpleITK image
with the input's origin, spacing and direction, a NumPy array of the input's shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_path
from autoseg.io.images import (NIFTI_ENDINGS, Geometry, ImageReadError, _affine_geometry, _geometry_from_itk,
                               _geometry_from_nifti, _not_a_file, compact_labels, nifti_like, nifti_like_image,
                               nifti_with_affine)

KINDS = ("nibabel", "simpleitk", "numpy", "file", "dicom")
SPACING_RTOL = 1e-3  # spacing= and the voxel size of affine= must agree this closely (as NIfTI headers must)


class InputImageError(ValueError):
    """An image given to the Python API that cannot be predicted; the message says what to give instead."""


@dataclass(frozen=True)
class Channel:
    """One channel in the package convention: ``voxels`` (X, Y, Z) in their own dtype and ``geometry``;
    ``source`` names it in messages."""

    source: str
    voxels: np.ndarray
    geometry: Geometry


def kind_of(image) -> str:
    """Which of :data:`KINDS` ``image`` is: a nibabel image, a SimpleITK image, a NumPy array, a path
    to an image file, or a path to a folder or ``.zip`` of DICOM files."""
    if isinstance(image, np.ndarray):
        return "numpy"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return "dicom" if path.is_dir() or path.suffix.lower() == ".zip" else "file"
    module = type(image).__module__ or ""
    if module.startswith("nibabel") and hasattr(image, "dataobj") and hasattr(image, "affine"):
        return "nibabel"
    if module.startswith("SimpleITK") and hasattr(image, "GetSpacing"):
        return "simpleitk"
    raise InputImageError(f"cannot predict a {type(image).__module__}.{type(image).__name__}: give a nibabel image, "
                          "a SimpleITK image, a path to an image file (or a DICOM folder or .zip), or a NumPy array "
                          "with spacing=")


def _three_d(source: str, voxels: np.ndarray) -> None:
    if voxels.ndim != 3:
        hint = ("; for one slice add an axis (image[..., None]) and give its spacing too" if voxels.ndim == 2 else
                "; give one 3D volume per channel, as a list in the model's channel order" if voxels.ndim == 4 else "")
        raise InputImageError(f"{source}: expected a 3D volume (X, Y, Z), got shape {voxels.shape}{hint}")


def _valid(source: str, voxels: np.ndarray, geometry: Geometry) -> Channel:
    while voxels.ndim > 3 and voxels.shape[-1] == 1:  # as read_volume: trailing singleton axes dropped
        voxels = voxels[..., 0]
    _three_d(source, voxels)
    spacing = np.asarray(geometry.spacing[:3], dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputImageError(f"{source}: invalid voxel spacing {tuple(spacing.tolist())} (zero, negative or not a "
                              "number); give the voxel size in mm")
    return Channel(source, voxels, Geometry(shape=tuple(int(s) for s in voxels.shape), spacing=geometry.spacing,
                                            affine=geometry.affine))


def array_geometry(source: str, shape: tuple[int, ...], spacing=None, affine=None) -> Geometry:
    """The geometry of a NumPy array: ``spacing`` (mm per array axis) and/or ``affine`` (4x4
    voxel-to-world; its column lengths are the spacing). Without an affine, the identity direction and
    a zero origin are assumed (they do not change the prediction)."""
    if spacing is None and affine is None:
        raise InputImageError(f"{source}: a NumPy array (shape {shape}) has no voxel size; give spacing=(sx, sy, sz) "
                              "in mm per array axis (or affine=, a 4x4 voxel-to-world matrix)")
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputImageError(f"{source}: affine= must be a finite 4x4 voxel-to-world matrix, got shape "
                                  f"{affine.shape}")
        geometry = _affine_geometry(affine, shape)
        if spacing is not None and not np.allclose(_spacing(source, spacing), geometry.spacing, rtol=SPACING_RTOL):
            raise InputImageError(f"{source}: spacing={tuple(_spacing(source, spacing))} differs from the voxel size "
                                  f"of affine= {tuple(round(s, 6) for s in geometry.spacing)}; give one of them")
        return geometry
    s = _spacing(source, spacing)
    return _affine_geometry(np.diag([*s, 1.0]), shape)


def _spacing(source: str, spacing) -> tuple[float, float, float]:
    try:
        s = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputImageError(f"{source}: spacing={spacing!r} must be three numbers (mm per array axis)") from None
    if len(s) != 3:
        raise InputImageError(f"{source}: spacing={spacing!r} must be three numbers (mm per array axis), got {len(s)}")
    return s


def read_channel(image, kind: str, source: str, spacing=None, affine=None) -> Channel:
    """One channel of kind ``kind`` in the package convention (not a file: files are read by the
    folder pipeline's reader, :func:`autoseg.inference.pipeline.prepare_case`)."""
    if kind == "nibabel":
        try:
            voxels = np.asanyarray(image.dataobj)
        except Exception as e:  # a proxy whose file is gone or truncated
            raise InputImageError(f"{source}: voxel data cannot be read ({e})") from None
        return _valid(source, voxels, _geometry_from_nifti(image))
    if kind == "simpleitk":
        import SimpleITK as sitk

        if image.GetNumberOfComponentsPerPixel() > 1:
            raise InputImageError(f"{source}: has vector pixels; give one scalar image per channel")
        voxels = sitk.GetArrayFromImage(image)
        return _valid(source, np.ascontiguousarray(voxels.transpose(tuple(range(voxels.ndim))[::-1])),
                      _geometry_from_itk(image))
    if kind == "numpy":
        _three_d(source, image)  # kept as given (no axis dropped): the labels come back in the input's shape
        shape = tuple(int(s) for s in image.shape)
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
            raise InputImageError(f"{source}: a NumPy array of {image.dtype} is not an image; give numbers")
        return _valid(source, image, array_geometry(source, shape, spacing, affine))
    if kind == "dicom":
        from autoseg.io.dicom import read_dicom_volume

        voxels, geometry = read_dicom_volume(Path(image))
        return _valid(source, voxels, geometry)
    raise InputImageError(f"{source}: a {kind} input is not read here")


def check_files(paths) -> None:
    """Image files given by path must be files (a missing one is named, before any reader opens it)."""
    for path in paths:
        if not Path(path).is_file():
            raise ImageReadError(_not_a_file(Path(path)))


def labels_like(labels: np.ndarray, kind: str, reference, geometry: Geometry):
    """The label map ``(X, Y, Z)`` as the input's kind (the input ``reference``, or its first channel):
    nibabel -> ``Nifti1Image`` with the reference's affine and header; SimpleITK -> image with its origin,
    spacing and direction; NumPy -> array; file -> ``Nifti1Image`` placed like the file (its header when it
    is NIfTI); DICOM -> ``Nifti1Image`` with the series' ``geometry``. Labels as uint8 when they fit."""
    labels = compact_labels(labels)
    if kind == "numpy":
        return labels
    if kind == "simpleitk":
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
        img.CopyInformation(reference)
        return img
    if kind == "nibabel":
        import nibabel as nib

        if isinstance(reference, nib.Nifti1Image):  # NIfTI-2 too (a subclass)
            return nifti_like_image(labels, reference)
        return nifti_with_affine(labels, np.asarray(reference.affine, dtype=np.float64))
    if kind == "file":
        return nifti_like(labels, Path(reference))
    return nifti_with_affine(labels, geometry.affine_array)


def probabilities_like(probabilities: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities ``(K, X, Y, Z)`` in the axis order of the input's arrays: ``(K, Z, Y, X)`` for
    SimpleITK (as ``sitk.GetArrayFromImage`` orders voxels), ``(K, X, Y, Z)`` otherwise."""
    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    if kind == "simpleitk":
        return np.ascontiguousarray(probabilities.transpose(0, 3, 2, 1))
    return probabilities


def save_nifti(img, out: Path) -> Path:
    """Write a nibabel image to ``out`` (a ``.nii``/``.nii.gz`` file) atomically."""
    import nibabel as nib

    out = Path(out)
    ending = next((e for e in NIFTI_ENDINGS if out.name.lower().endswith(e)), None)
    if ending is None:
        raise ImageReadError(f"out={out}: the labels of a DICOM series are written as NIfTI; give a .nii.gz path")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=ending) as tmp:
        nib.save(img, str(tmp))
    return out
