"""Read and write medical images in the package convention ((X, Y, Z), mm, RAS+ affine)."""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_path

_GZIP_CHUNK = 1 << 22  # bytes decompressed at a time when verifying a .gz file's checksum

try:  # ISA-L's gzip (python-isal): the same streams and errors as the standard module, ~1.5x faster to decompress
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error

    _DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, _isal_error)
except ImportError:  # a platform without its wheel: the standard library
    _gzip = gzip
    _DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error)

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS

# LPS (ITK) <-> RAS (NIfTI/nibabel): flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class ImageReadError(ValueError):
    """A file cannot be read as an image; the message names the file and the problem."""


class DamagedGzipError(ImageReadError):
    """A ``.gz`` file whose stream is truncated or fails its checksum (:func:`read_volume_verified`)."""


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


# Largest relative difference between the header's spacings (pixdim, qform, sform) that still counts as
# one grid; the same tolerance as Geometry.mismatches (which also bounds origin and direction). ITK warns
# about the same disagreements ("unexpected scales in sform") but reads such files anyway.
HEADER_RTOL = 1e-3


def _affine_geometry(affine: np.ndarray, shape: tuple[int, ...]) -> Geometry:
    affine = np.asarray(affine, dtype=np.float64)
    spacing = tuple(float(x) for x in np.linalg.norm(affine[:3, :3], axis=0))
    return Geometry(shape=shape, spacing=spacing, affine=tuple(tuple(float(x) for x in row) for row in affine))


def _orthogonalised(affine: np.ndarray) -> np.ndarray:
    """``affine`` with its direction replaced by the closest orthogonal one (SVD), voxel sizes kept:
    the best a qform (a rotation) can say about a sheared sform; nibabel writes qforms this way."""
    affine = np.array(affine, dtype=np.float64)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    u, _, vt = np.linalg.svd(affine[:3, :3] / np.where(norms == 0, 1.0, norms))
    affine[:3, :3] = (u @ vt) * norms
    return affine


def _raw_nifti_header(path: Path, header_class):
    """The header as stored, before nibabel's fixes (nibabel turns a zero pixdim into 1 mm on load)."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        return header_class.from_fileobj(f, check=False)


def nifti_header_problem(path: Path, img) -> str | None:
    """Why the NIfTI header of ``img`` (read from ``path``) does not describe one voxel grid, else None.

    autoseg takes spacing from pixdim and origin/direction from the affine nibabel chooses (the sform
    when its code is set, else the qform, else pixdim alone), so the three must agree: a pixdim that
    is zero, negative or not a number, a qform and sform that describe different grids, or a pixdim
    that differs from the voxel size of the chosen affine is refused rather than silently mixed."""
    header = img.header
    try:
        raw = _raw_nifti_header(path, type(header))
    except Exception:  # unreadable headers fail in nibabel's own reader with their own message
        return None
    n = max(1, min(3, int(raw["dim"][0])))
    pixdim = np.asarray(raw["pixdim"][1:1 + n], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        return (f"{path}: the header's voxel spacing (pixdim) is {_fmt(pixdim)}: zero, negative or not a number; "
                "set pixdim to the voxel size in mm (e.g. nibabel: img.header.set_zooms(...)) and re-export")
    shape = tuple(int(s) for s in img.shape)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode > 0 and scode > 0:
        sform = _affine_geometry(_orthogonalised(header.get_sform()), shape)
        diff = _affine_geometry(header.get_qform(), shape).mismatches(sform, rtol=HEADER_RTOL)
        if diff:
            return (f"{path}: the header's qform and sform describe different grids (qform vs sform: "
                    f"{'; '.join(diff)}); find out which one is right and make the other agree (e.g. nibabel: "
                    "img.set_qform(img.get_sform()), or FSL: fslorient -copysform2qform), then re-export")
    used = "sform" if scode > 0 else "qform" if qcode > 0 else None
    norms = np.asarray(_affine_geometry(img.affine, shape).spacing[:n])
    if used and not np.allclose(norms, pixdim, rtol=HEADER_RTOL, atol=1e-6):
        return (f"{path}: the header's voxel spacing (pixdim {_fmt(pixdim)}) differs from the voxel size of its "
                f"{used} {_fmt(norms)}; find out which one is right and fix the other (e.g. nibabel: "
                "img.header.set_zooms(...) or img.set_sform(...)), then re-export")
    return None


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


def _load_nifti(path: Path, check_header: bool = True):
    """The nibabel image; with ``check_header``, :class:`ImageReadError` when its header is not
    consistent (:func:`nifti_header_problem`)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for broken headers
        raise ImageReadError(f"{path}: not a readable NIfTI file ({e}); re-export it") from None
    problem = nifti_header_problem(path, img) if check_header else None
    if problem:
        raise ImageReadError(problem)
    return img


def _load_itk(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ImageReadError(f"{path}: cannot be read ({msg}); re-export it") from None


def _valid_spacing(path: Path, geometry: Geometry) -> Geometry:
    """``geometry``, or :class:`ImageReadError` when a spacing is zero, negative or not a number."""
    spacing = np.asarray(geometry.spacing[:3], dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ImageReadError(f"{path}: invalid voxel spacing {_fmt(spacing)} (zero, negative or not a number); fix "
                             "the header (pixdim / spacing) and re-export")
    return geometry


def _not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be read, with the fix."""
    if path.is_dir():
        return f"{path}: is a folder; give an image file"
    if path.is_symlink():
        return f"{path}: broken symbolic link (to {os.readlink(path)}); fix the link or remove it"
    return f"{path}: file not found"


def read_geometry(path: Path | str, force_itk: bool = False) -> Geometry:
    """Geometry of an image from its header only (fast; does not read voxels). Raises
    :class:`ImageReadError` for an invalid spacing or an inconsistent NIfTI header."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(_not_a_file(path))
    if _use_itk(path, force_itk):
        import SimpleITK as sitk

        if file_ending(path) in NIFTI_ENDINGS:
            _load_nifti(path)  # SimpleITK reads NIfTI geometry too, but does not refuse an inconsistent header
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
        return _valid_spacing(path, Geometry(shape=size, spacing=g.spacing, affine=g.affine))
    return _valid_spacing(path, _geometry_from_nifti(_load_nifti(path)))


def read_volume(path: Path | str, force_itk: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read one file: voxels in the file's dtype, shape (X, Y, Z) (or as many axes as the file has;
    trailing singleton axes beyond the third are dropped) and its geometry. Raises
    :class:`ImageReadError` for an invalid spacing or an inconsistent NIfTI header
    (:func:`nifti_header_problem`). A gzip-compressed NIfTI (read by nibabel) is decompressed once and
    read to the end of its stream, so a damaged one is a :class:`DamagedGzipError` rather than wrong voxels."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(_not_a_file(path))
    if _use_itk(path, force_itk):
        import SimpleITK as sitk

        if file_ending(path) in NIFTI_ENDINGS:
            _load_nifti(path)  # SimpleITK reads NIfTI geometry too, but does not refuse an inconsistent header
        img = _load_itk(path)
        try:
            arr = sitk.GetArrayFromImage(img)
        except Exception as e:
            raise ImageReadError(f"{path}: voxel data cannot be read ({e})") from None
        if img.GetNumberOfComponentsPerPixel() > 1:
            raise ImageReadError(f"{path}: has vector pixels; store one channel per file (_0000, _0001, ...)")
        arr = np.ascontiguousarray(arr.transpose(tuple(range(arr.ndim))[::-1]))
        geometry = _geometry_from_itk(img)
    elif _is_gzip(path):  # decompressed once, from one stream, checksum verified
        arr, img = _read_gzip_nifti(path)
        geometry = _geometry_from_nifti(img)
    else:
        img = _load_nifti(path)
        try:
            arr = np.asanyarray(img.dataobj)
        except Exception as e:  # short file, ...
            raise ImageReadError(f"{path}: voxel data cannot be read ({e}); the file may be truncated") from None
        geometry = _geometry_from_nifti(img)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr, _valid_spacing(path, geometry)


WORKING_DTYPE = np.float32  # what images are computed in (read_image, preprocessing, networks)
_FINITE_CHUNK = 1 << 24  # voxels cast at a time when checking finiteness (bounds the extra memory)


def count_nonfinite(arr: np.ndarray, dtype=WORKING_DTYPE) -> int:
    """Voxels that are NaN or infinite once ``arr`` is cast to ``dtype``, the type the data is used in.

    A float64 voxel at 1e39 is finite in the file but infinite in float32, so the count is taken after
    the cast (in chunks, so a large volume costs little extra memory). Integer volumes always fit."""
    if arr.dtype.kind != "f":
        return 0
    if np.dtype(arr.dtype).itemsize <= np.dtype(dtype).itemsize:
        return arr.size - int(np.count_nonzero(np.isfinite(arr)))
    flat = arr.ravel(order="K")  # a view in the array's own memory order (nibabel's are Fortran-ordered)
    bad = 0
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start:start + _FINITE_CHUNK]
        with np.errstate(over="ignore"):
            bad += part.size - int(np.count_nonzero(np.isfinite(part.astype(dtype))))
    return bad


def nonfinite_problem(path: Path | str, arr: np.ndarray, dtype=WORKING_DTYPE) -> str | None:
    """The message for a float volume holding NaN or infinite voxels, counted after the cast to
    ``dtype`` (values beyond its range become infinite there), else None."""
    n_bad = count_nonfinite(arr, dtype)
    if not n_bad:
        return None
    n_file = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if n_file == n_bad:
        return (f"{path}: {n_bad} voxel(s) are NaN or infinite; replace them (e.g. by 0 or the background value) "
                "and re-export")
    limit = float(np.finfo(dtype).max)
    return (f"{path}: {n_bad} voxel(s) are NaN, infinite or beyond the {np.dtype(dtype).name} range "
            f"(|value| > {limit:.3g}, {n_bad - n_file} of them finite in the file); replace them (e.g. by 0 or the "
            "background value) or rescale the image, and re-export")


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
        with _gzip.open(path, "rb") as f:
            while f.read(_GZIP_CHUNK):
                pass
    except _DECOMPRESS_ERRORS as e:
        return (f"{path}: damaged gzip data ({e}); the file is truncated or corrupt; copy it again or "
                "re-export it")
    return None


def read_volume_verified(path: Path | str, force_itk: bool = False) -> tuple[np.ndarray, Geometry]:
    """:func:`read_volume`, with every ``.gz`` file's whole gzip stream verified (checksum and length, as
    :func:`gzip_problem`): :class:`DamagedGzipError` when it is damaged.

    A gzip-compressed NIfTI read by nibabel is verified by :func:`read_volume` itself as it decompresses
    it, once; other ``.gz`` files (read by SimpleITK) are verified first, then read."""
    path = Path(path)
    if path.is_file() and str(path).lower().endswith(".gz") and (
            _use_itk(path, force_itk) or file_ending(path) not in NIFTI_ENDINGS):
        problem = gzip_problem(path)
        if problem:
            raise DamagedGzipError(problem)
    return read_volume(path, force_itk)


def _is_gzip(path: Path) -> bool:
    """Whether ``path`` is a NIfTI file (by its ending) whose bytes start with gzip's magic number."""
    if file_ending(path) not in NIFTI_ENDINGS:
        return False
    with open(path, "rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


def _read_gzip_nifti(path: Path):
    """``(voxels, nibabel image)`` of a gzip-compressed NIfTI decompressed once: nibabel reads header and
    voxels from one decompressing stream, which is then read to its end, where gzip checks the checksum
    and length; an inconsistent header is an :class:`ImageReadError`, as :func:`_load_nifti` makes it."""
    import nibabel as nib

    try:
        with _gzip.open(path, "rb") as stream:
            try:
                img = nib.Nifti1Image.from_stream(stream) if _nifti1(stream) else nib.Nifti2Image.from_stream(stream)
                arr = np.asanyarray(img.dataobj)
            except _DECOMPRESS_ERRORS:
                raise
            except Exception as e:  # nibabel raises several types for broken headers or short data
                raise ImageReadError(f"{path}: not a readable NIfTI file ({e}); re-export it") from None
            while stream.read(_GZIP_CHUNK):  # to the end: gzip verifies checksum and length there
                pass
    except _DECOMPRESS_ERRORS as e:
        raise DamagedGzipError(f"{path}: damaged gzip data ({e}); the file is truncated or corrupt; copy it again or "
                               "re-export it") from None
    problem = nifti_header_problem(path, img)
    if problem:
        raise ImageReadError(problem)
    return arr, img


def _nifti1(stream) -> bool:
    """Whether a NIfTI stream (at its start; left there) holds a NIfTI-1 header (``sizeof_hdr`` 348)
    rather than NIfTI-2 (540), in either byte order."""
    head = stream.read(4)
    stream.seek(0)
    return head not in (int(540).to_bytes(4, "little"), int(540).to_bytes(4, "big"))


def read_image(paths: list[Path], force_itk: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into float32 ``(C, X, Y, Z)`` with the first file's geometry.

    Raises :class:`ImageReadError` when a file is not 3D, holds NaN/Inf voxels or the channels
    disagree in geometry.
    """
    return stack_channels((p, p.name, *read_volume(p, force_itk)) for p in map(Path, paths))


def stack_channels(volumes) -> tuple[np.ndarray, Geometry]:
    """Channels ``(source, short_name, voxels, geometry)`` (an iterable, consumed one at a time so only
    one channel is held in its own dtype) -> float32 ``(C, X, Y, Z)`` with the first one's geometry.
    ``source`` names the channel in messages (a file, or an in-memory image).

    Raises :class:`ImageReadError` when a channel is not 3D, holds NaN/Inf voxels or the channels
    disagree in geometry."""
    arrays, geometry, first = [], None, ""
    for source, name, arr, g in volumes:
        if arr.ndim != 3:
            raise ImageReadError(f"{source}: expected a 3D image, got shape {arr.shape}; give one 3D volume per file "
                                 "(channels as {case}_0000, {case}_0001, ...)")
        problem = nonfinite_problem(source, arr)
        if problem:
            raise ImageReadError(problem)
        if geometry is None:
            geometry, first = g, name
        else:
            diff = geometry.mismatches(g)
            if diff:
                raise ImageReadError(f"{source}: channel geometry differs from {first}: {'; '.join(diff)}")
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
    array = compact_labels(array)
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

            nib.save(nifti_like(array, reference, force_itk), tmp)
    return out_path


def compact_labels(array: np.ndarray) -> np.ndarray:
    """An integer (or boolean) label map as uint8 when its values fit, else int16/int32; other arrays as they are."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        vmin, vmax = (int(array.min()), int(array.max())) if array.size else (0, 0)
        dtype = np.uint8 if vmin >= 0 and vmax < 256 else (np.int16 if -32768 <= vmin and vmax < 32768 else np.int32)
        array = array.astype(dtype)
    return array


def nifti_like(array: np.ndarray, reference: Path | str, force_itk: bool = False):
    """An (X, Y, Z) volume as a nibabel ``Nifti1Image`` placed like the file ``reference``: with a NIfTI
    reference its header (qform/sform and their codes), with an NRRD/MHA one its geometry."""
    if _use_itk(Path(reference), force_itk):  # NRRD/MHA reference: only its geometry carries over
        return nifti_with_affine(array, read_geometry(reference, force_itk).affine_array)
    return nifti_like_image(array, _load_nifti(Path(reference), check_header=False))  # checked when read


def nifti_with_affine(array: np.ndarray, affine: np.ndarray):
    """A ``Nifti1Image`` of ``array`` whose qform and sform are ``affine`` (code 1, scanner anatomical)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def nifti_like_image(array: np.ndarray, ref):
    """A ``Nifti1Image`` of ``array`` with a copy of the nibabel image ``ref``'s header and affine (data
    type set to ``array``'s, no scaling), keeping its qform/sform codes so viewers place it identically."""
    import nibabel as nib

    header = ref.header.copy()
    header.set_data_dtype(array.dtype)
    img = nib.Nifti1Image(array, ref.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(ref.header.get_qform(), code=int(ref.header["qform_code"]))
    img.set_sform(ref.header.get_sform(), code=int(ref.header["sform_code"]))
    return img
