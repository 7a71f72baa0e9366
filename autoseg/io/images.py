"""Read and write medical images in the package convention ((X, Y, Z), mm, RAS+ affine)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_path

_GZIP_CHUNK = 1 << 22  # bytes decompressed at a time when verifying a .gz file's checksum

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS

# LPS (ITK) <-> RAS (NIfTI/nibabel): flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class ImageReadError(ValueError):
    """A file cannot be read as an image; the message names the file and the problem."""


def file_ending(path: Path | str) -> str:
    """The image ending of ``path`` ('.nii.gz', '.nrrd', ...), or '' when it is not a known one."""
    name = str(path).lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return ""


def strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if ending and name.endswith(ending) else name


@dataclass(frozen=True)
class Geometry:
    """Where a volume lies in space: shape (X, Y, Z), spacing in mm, 4x4 voxel-to-RAS affine."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    affine: tuple[tuple[float, ...], ...]

    @property
    def affine_array(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64)

    @property
    def origin(self) -> np.ndarray:
        return self.affine_array[:3, 3]

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix of unit column vectors: world direction of each voxel axis."""
        a = self.affine_array[:3, :3]
        norms = np.linalg.norm(a, axis=0)
        return a / np.where(norms == 0, 1.0, norms)

    def mismatches(self, other: "Geometry", rtol: float = 1e-3, atol_mm: float = 1e-2) -> list[str]:
        """Human-readable differences to ``other`` (empty when they agree within tolerance).

        Spacing is compared with relative tolerance ``rtol``; origin with ``atol_mm`` plus ``rtol`` of
        the voxel size; direction cosines with absolute tolerance 1e-3.
        """
        problems = []
        if tuple(self.shape[:3]) != tuple(other.shape[:3]):
            problems.append(f"shape {tuple(self.shape)} vs {tuple(other.shape)}")
            return problems
        s1, s2 = np.asarray(self.spacing[:3]), np.asarray(other.spacing[:3])
        if not np.allclose(s1, s2, rtol=rtol, atol=1e-6):
            problems.append(f"spacing {_fmt(s1)} vs {_fmt(s2)}")
        if not np.allclose(self.origin, other.origin, atol=atol_mm + rtol * float(s1.max())):
            problems.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if not np.allclose(self.direction, other.direction, atol=1e-3):
            problems.append("direction (orientation) differs")
        return problems


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _geometry_from_nifti(img) -> Geometry:
    shape = tuple(int(s) for s in img.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    affine = tuple(tuple(float(x) for x in row) for row in np.asarray(img.affine))
    return Geometry(shape=shape, spacing=zooms, affine=affine)


def _geometry_from_itk(img) -> Geometry:
    dim = img.GetDimension()
    size = tuple(int(s) for s in img.GetSize())
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    d3, s3, o3 = np.eye(3), np.ones(3), np.zeros(3)
    n = min(dim, 3)
    d3[:n, :n], s3[:n], o3[:n] = direction[:n, :n], spacing[:n], origin[:n]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ d3 @ np.diag(s3)
    affine[:3, 3] = _LPS_TO_RAS @ o3
    return Geometry(
        shape=size,
        spacing=tuple(float(x) for x in s3),
        affine=tuple(tuple(float(x) for x in row) for row in affine),
    )


def _use_itk(path: Path, force_itk: bool) -> bool:
    ending = file_ending(path)
    if not ending:
        raise ImageReadError(f"{path}: unsupported file type (supported: {', '.join(SUPPORTED_ENDINGS)})")
    return force_itk or ending in ITK_ENDINGS


def _load_nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types for broken headers
        raise ImageReadError(f"{path}: not a readable NIfTI file ({e}); re-export it") from None


def _load_itk(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ImageReadError(f"{path}: cannot be read ({msg}); re-export it") from None


def read_geometry(path: Path | str, force_itk: bool = False) -> Geometry:
    """Geometry of an image from its header only (fast; does not read voxels)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if _use_itk(path, force_itk):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except Exception as e:
            raise ImageReadError(f"{path}: cannot be read ({str(e).strip().splitlines()[-1]}); re-export it") from None
        dim = reader.GetDimension()
        size = tuple(int(s) for s in reader.GetSize())
        spacing = np.asarray(reader.GetSpacing())
        direction = np.asarray(reader.GetDirection()).reshape(dim, dim)
        origin = np.asarray(reader.GetOrigin())
        img = sitk.Image([1] * dim, sitk.sitkUInt8)
        img.SetSpacing(spacing.tolist())
        img.SetDirection(direction.ravel().tolist())
        img.SetOrigin(origin.tolist())
        g = _geometry_from_itk(img)
        return Geometry(shape=size, spacing=g.spacing, affine=g.affine)
    return _geometry_from_nifti(_load_nifti(path))


def read_volume(path: Path | str, force_itk: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read one file: voxels in the file's dtype, shape (X, Y, Z) (or as many axes as the file has;
    trailing singleton axes beyond the third are dropped) and its geometry."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if _use_itk(path, force_itk):
        import SimpleITK as sitk

        img = _load_itk(path)
        try:
            arr = sitk.GetArrayFromImage(img)
        except Exception as e:
            raise ImageReadError(f"{path}: voxel data cannot be read ({e})") from None
        if img.GetNumberOfComponentsPerPixel() > 1:
            raise ImageReadError(f"{path}: has vector pixels; store one channel per file (_0000, _0001, ...)")
        arr = np.ascontiguousarray(arr.transpose(tuple(range(arr.ndim))[::-1]))
        geometry = _geometry_from_itk(img)
    else:
        img = _load_nifti(path)
        try:
            arr = np.asanyarray(img.dataobj)
        except Exception as e:  # truncated gzip, short file, ...
            raise ImageReadError(f"{path}: voxel data cannot be read ({e}); the file may be truncated") from None
        geometry = _geometry_from_nifti(img)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr, geometry


def nonfinite_problem(path: Path | str, arr: np.ndarray) -> str | None:
    """The message for a float volume holding NaN or infinite voxels, else None."""
    if arr.dtype.kind != "f":
        return None
    n_bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if not n_bad:
        return None
    return (f"{path}: {n_bad} voxel(s) are NaN or infinite; replace them (e.g. by 0 or the background value) "
            "and re-export")


def gzip_problem(path: Path | str) -> str | None:
    """For a ``.gz`` file: decompress it to the end (in chunks) so gzip verifies its CRC and length.

    Readers stop after the voxels they need, so a damaged gzip stream can otherwise decode to wrong
    voxels without an error."""
    if not str(path).lower().endswith(".gz"):
        return None
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":  # not gzip at all: the image reader says what it is not
            return None
    try:
        with gzip.open(path, "rb") as f:
            while f.read(_GZIP_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as e:
        return (f"{path}: damaged gzip data ({e}); the file is truncated or corrupt; copy it again or "
                "re-export it")
    return None


def read_image(paths: list[Path], force_itk: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into float32 ``(C, X, Y, Z)`` with the first file's geometry.

    Raises :class:`ImageReadError` when a file is not 3D, holds NaN/Inf voxels or the channels
    disagree in geometry.
    """
    arrays, geometry = [], None
    for p in paths:
        arr, g = read_volume(p, force_itk)
        if arr.ndim != 3:
            raise ImageReadError(f"{p}: expected a 3D image, got shape {arr.shape}; give one 3D volume per file "
                                 "(channels as {case}_0000, {case}_0001, ...)")
        problem = nonfinite_problem(p, arr)
        if problem:
            raise ImageReadError(problem)
        if geometry is None:
            geometry = g
        else:
            diff = geometry.mismatches(g)
            if diff:
                raise ImageReadError(f"{p}: channel geometry differs from {paths[0].name}: {'; '.join(diff)}")
        arrays.append(np.asarray(arr, dtype=np.float32))
    if geometry is None:
        raise ImageReadError("no image files given")
    return np.stack(arrays), geometry


def write_like(array: np.ndarray, reference: Path | str, out_path: Path | str, force_itk: bool = False) -> Path:
    """Write an (X, Y, Z) volume with exactly the geometry and header of ``reference``, atomically.

    Integer arrays are stored as uint8 when their values fit, else int16/int32; the output is written
    to a temporary file in the destination folder and renamed, so a reader never sees half a file.
    """
    reference, out_path = Path(reference), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        vmin, vmax = (int(array.min()), int(array.max())) if array.size else (0, 0)
        dtype = np.uint8 if vmin >= 0 and vmax < 256 else (np.int16 if -32768 <= vmin and vmax < 32768 else np.int32)
        array = array.astype(dtype)
    ending = file_ending(out_path) or ".nii.gz"
    with atomic_path(out_path, suffix=ending) as tmp_path:
        tmp = str(tmp_path)
        if _use_itk(out_path, force_itk):
            import SimpleITK as sitk

            ref = _load_itk(reference)
            img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
            img.CopyInformation(ref)
            sitk.WriteImage(img, tmp, useCompression=True)
        else:
            import nibabel as nib

            if _use_itk(reference, force_itk):  # NRRD/MHA reference: only its geometry carries over
                affine = read_geometry(reference, force_itk).affine_array
                img = nib.Nifti1Image(array, affine)
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
            else:
                ref = _load_nifti(reference)
                header = ref.header.copy()
                header.set_data_dtype(array.dtype)
                img = nib.Nifti1Image(array, ref.affine, header)
                img.header.set_slope_inter(1.0, 0.0)
                # keep the reference's qform/sform codes so viewers place it identically
                img.set_qform(ref.header.get_qform(), code=int(ref.header["qform_code"]))
                img.set_sform(ref.header.get_sform(), code=int(ref.header["sform_code"]))
            nib.save(img, tmp)
    return out_path
