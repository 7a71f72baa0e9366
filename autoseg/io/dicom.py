"""DICOM series as input volumes: find the series in a folder or ``.zip``, check them, read them.

Series are grouped by ``SeriesInstanceUID`` from the headers (pydicom, pixels not read) and their
slices sorted by position along the slice normal (``ImageOrientationPatient`` row x column, the
order GDCM's ``IPPSorter`` and dcm2niix use). A series is read with SimpleITK's
``ImageSeriesReader`` (GDCM), which takes the origin from the first slice's
``ImagePositionPatient``, the direction from ``ImageOrientationPatient``, the in-plane spacing
from ``PixelSpacing`` and the slice spacing from the positions, and applies the rescale slope and
intercept (CT values in HU). Before reading, :func:`series_problem` refuses what would give a wrong
volume: missing slices or uneven spacing, mixed orientations or image sizes, a tilted (sheared)
stack, a single slice. Objects that are not image slices (SR, SEG, RTSTRUCT, presentation states,
...) and localizer (scout) images are set aside with a note naming them.

Axes follow the package convention once read: ``(X, Y, Z)`` = (column, row, slice in sorted order).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_path
from autoseg.extras import require
from autoseg.io.images import ImageReadError, _geometry_from_itk

DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files: 128-byte preamble, then b"DICM"
# Modalities of objects that hold no image slices to segment (DICOM PS3.3 C.7.3.1.1.1).
NON_IMAGE_MODALITIES = frozenset({"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "PR", "KO", "REG",
                                  "DOC", "FID", "PLAN", "AU", "ECG", "HD"})
ORIENTATION_TOLERANCE = 1e-4  # direction cosines: slices whose orientations differ more are "mixed"
SPACING_TOLERANCE = 0.01  # relative: slice gaps differing more than 1 % are uneven (dcm2niix warns at similar)
SHEAR_TOLERANCE = 1e-3  # cosine: slice-to-slice steps off the slice normal by more are a tilted stack


class DicomSeriesError(ImageReadError):
    """A DICOM series cannot be read as one volume; the message names the series and the problem."""


@dataclass(frozen=True)
class Slice:
    """The header fields of one file that place its pixels in space."""

    path: Path
    orientation: tuple[float, ...]  # ImageOrientationPatient: row direction, column direction (LPS)
    position: tuple[float, float, float]  # ImagePositionPatient of the first pixel (mm, LPS)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    size: tuple[int, int]  # (Rows, Columns)


@dataclass(frozen=True)
class Series:
    """One series of a source (a folder or zip the user gave): its slices sorted by position, or the
    reason it is set aside (``skip``: not an image series)."""

    source: str
    uid: str
    number: int | None
    description: str
    modality: str
    slices: tuple[Slice, ...] = ()
    files: tuple[Path, ...] = ()  # every file of the series (sorted by position for image series)
    skip: str = ""

    def describe(self) -> str:
        number = f"#{self.number} " if self.number is not None else ""
        desc = f"'{self.description}' " if self.description else ""
        return f"DICOM series {number}{desc}({self.modality or 'no modality'}, UID {self.uid}) in {self.source}"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """Every DICOM file under ``folder`` (recursively, hidden files left out), sorted by path."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in sorted(names) if not n.startswith(".") and is_dicom_file(Path(root) / n)]
    return found


def holds_dicom(path: Path) -> bool:
    """Whether a folder holds a DICOM file somewhere below it, or a zip holds one (by its preamble)."""
    path = Path(path)
    if path.is_dir():
        return any(True for _ in _first_dicom(path))
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir() and info.file_size > DICOM_MAGIC_OFFSET + 4:
                    with zf.open(info) as f:
                        if f.read(DICOM_MAGIC_OFFSET + 4)[DICOM_MAGIC_OFFSET:] == b"DICM":
                            return True
    return False


def _first_dicom(folder: Path):
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith(".") and is_dicom_file(Path(root) / n):
                yield Path(root) / n
                return


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract ``zip_path`` into the new folder ``dest``, refusing absolute paths and ``..`` (a zip from
    elsewhere must not write outside ``dest``). Returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                name = Path(info.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise ImageReadError(f"{zip_path}: holds the unsafe path {info.filename}; re-create the zip")
                zf.extract(info, dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise ImageReadError(f"{zip_path}: cannot be unpacked ({e}); re-create the zip") from None
    return dest


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _slice(path: Path, ds) -> Slice | None:
    """The placing fields of an image slice, or None when the file lacks one of them."""
    orientation = _floats(getattr(ds, "ImageOrientationPatient", None), 6)
    position = _floats(getattr(ds, "ImagePositionPatient", None), 3)
    spacing = _floats(getattr(ds, "PixelSpacing", None), 2)
    rows, cols = getattr(ds, "Rows", None), getattr(ds, "Columns", None)
    if orientation is None or position is None or spacing is None or rows is None or cols is None:
        return None
    return Slice(path, orientation, position, spacing, (int(rows), int(cols)))


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal of a slice: row direction x column direction (LPS)."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    n = np.cross(row, col)
    return n / max(float(np.linalg.norm(n)), 1e-12)


def _skip_reason(ds, modality: str, n_slices: int, n_files: int) -> str:
    if modality in NON_IMAGE_MODALITIES or "PixelData" not in ds:
        return f"not an image series ({modality or 'non-image'} object)"
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        return ("a multi-frame (enhanced) object; this reader takes one file per slice: convert it with "
                "dcm2niix and give the NIfTI file")
    if "LOCALIZER" in [str(v).upper() for v in getattr(ds, "ImageType", [])]:
        return "a localizer (scout) image"
    if n_slices < n_files:
        return f"{n_files - n_slices} of its {n_files} files lack ImagePositionPatient/Orientation/PixelSpacing"
    return ""


def scan_series(folder: Path, source: str) -> list[Series]:
    """The series of every DICOM file under ``folder`` (headers only), ordered by series number then
    UID; image slices sorted by position along the slice normal. ``source`` names the folder or zip
    in messages."""
    pydicom = require("pydicom", "dicom", "DICOM input")
    groups: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    for path in dicom_files(Path(folder)):
        try:
            ds = pydicom.dcmread(path, defer_size=256)  # large elements (pixels) are not read
        except Exception as e:  # pydicom raises several types for damaged files
            raise ImageReadError(f"{path}: not a readable DICOM file ({e})") from None
        if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:  # pydicom reads a cut file leniently
            raise ImageReadError(f"{path}: incomplete DICOM file (no SOPClassUID or SeriesInstanceUID; truncated?); "
                                 "copy or export the series again")
        groups[str(ds.SeriesInstanceUID)].append((path, ds))
    series = [_series(source, uid, members) for uid, members in groups.items()]
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid))


def _series(source: str, uid: str, members: list[tuple[Path, object]]) -> Series:
    ds = members[0][1]
    number = getattr(ds, "SeriesNumber", None)
    modality = str(getattr(ds, "Modality", "") or "").upper()
    slices = [s for s in (_slice(p, d) for p, d in members) if s is not None]
    files = tuple(p for p, _ in members)
    skip = _skip_reason(ds, modality, len(slices), len(members))
    if not skip:
        normal = slice_normal(slices[0].orientation)
        slices.sort(key=lambda s: (float(normal @ np.asarray(s.position)), str(s.path)))
        files = tuple(s.path for s in slices)
    return Series(source=source, uid=uid, number=int(number) if number not in (None, "") else None,
                  description=str(getattr(ds, "SeriesDescription", "") or "").strip(), modality=modality,
                  slices=tuple(slices) if not skip else (), files=files, skip=skip)


def series_problem(slices: tuple[Slice, ...]) -> str:
    """Why ``slices`` (sorted by position) do not form one regular volume, or '' when they do."""
    if len(slices) < 2:
        return "has a single slice; a 3D model needs a volume of several slices"
    first = slices[0]
    if any(not np.allclose(s.orientation, first.orientation, atol=ORIENTATION_TOLERANCE) for s in slices):
        return "mixes slice orientations (ImageOrientationPatient differs between files); export each stack alone"
    if any(s.size != first.size for s in slices) or any(
            not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=SPACING_TOLERANCE) for s in slices):
        return "mixes image sizes or pixel spacings between slices"
    positions = np.asarray([s.position for s in slices])
    steps = np.diff(positions, axis=0)
    gaps = np.linalg.norm(steps, axis=1)
    if gaps.min() < 1e-3:
        return "has two slices at the same position (duplicates, or several stacks in one series)"
    normal = slice_normal(first.orientation)
    if np.any(np.abs(steps @ normal) / gaps < 1 - SHEAR_TOLERANCE):
        return ("is a tilted stack (slice positions do not follow the slice normal, e.g. gantry tilt); resample it "
                "first, e.g. with dcm2niix, which corrects gantry tilt")
    if gaps.max() > gaps.min() * (1 + SPACING_TOLERANCE):
        missing = int(np.sum(np.round(gaps / gaps.min()) - 1))
        what = f"about {missing} missing slice(s)" if missing > 0 else "uneven slice spacing"
        return (f"has {what}: slice gaps range {gaps.min():.4g}-{gaps.max():.4g} mm; export the complete series")
    return ""


def read_series(series: Series):
    """The series as a 3D SimpleITK image (LPS geometry, rescaled values). Raises
    :class:`DicomSeriesError` naming the series when it is set aside or irregular."""
    if series.skip:
        raise DicomSeriesError(f"{series.describe()}: {series.skip}")
    problem = series_problem(series.slices)
    if problem:
        raise DicomSeriesError(f"{series.describe()}: {problem}")
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise DicomSeriesError(f"{series.describe()}: cannot be read ({msg})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomSeriesError(f"{series.describe()}: not a 3D grey-value volume (colour or 2D data)")
    return image


def write_series_as(series: Series, path: Path) -> Path:
    """Read ``series`` and write it as an image file (``.nrrd`` keeps the geometry in double precision)."""
    import SimpleITK as sitk

    image = read_series(series)
    with atomic_path(Path(path), suffix=Path(path).suffix) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=False)
    return Path(path)


def image_series(path: Path, scratch: Path) -> list[Series]:
    """The image series of a DICOM folder or ``.zip`` (unpacked into the new folder ``scratch``)."""
    path = Path(path)
    folder = path if path.is_dir() else extract_zip(path, scratch)
    return [s for s in scan_series(folder, str(path)) if not s.skip]


def read_dicom_volume(path: Path, series_number: int | None = None):
    """``(voxels (X, Y, Z), Geometry)`` of the one image series of a DICOM folder or zip, or of the series
    numbered ``series_number`` when it holds several."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory(prefix="autoseg-dicom-") as tmp:
        found = image_series(Path(path), Path(tmp) / "zip")
        picked = [s for s in found if series_number is None or s.number == series_number]
        if not found and path.is_dir():
            raise ImageReadError(f"{path}: is a folder holding no DICOM image series; give an image file "
                                 "(.nii.gz, .nrrd, .mha, ...) or a folder or .zip of one DICOM series")
        if len(picked) != 1:
            listing = "; ".join(f"#{s.number} '{s.description}'" for s in found) or "none"
            hint = "give --series NUMBER" if series_number is None else f"no series #{series_number}"
            raise ImageReadError(f"{path}: {len(picked)} image series match (series there: {listing}); {hint}")
        image = read_series(picked[0])
        array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
        return array, _geometry_from_itk(image)
