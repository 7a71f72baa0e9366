"""On-disk format of preprocessed cases, built for memory-mapped random patch reads.

One folder per (plans, data identifier): ``preprocessed/<dataset>/<plans_name>_<data_identifier>/``.
Per case:

- ``{case}.npy``        float32 ``(C, X, Y, Z)`` normalised, resampled image (transposed axes)
- ``{case}_seg.npy``    int8/int16 ``(1, X, Y, Z)`` label (absent for unlabelled cases)
- ``{case}_fg.npz``     per class value ``c``: key ``"c"`` -> ``(N, 3)`` int32 voxel coordinates
                        sampled from that class (for foreground oversampling)
- ``{case}.json``       :class:`CaseProperties` (geometry before/after, crop box), written last:
                        a case counts as finished only when its JSON exists.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a file
that looks finished.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.artifacts import Artifact
from autoseg.core.fileops import atomic_write_with


@dataclass(frozen=True)
class CaseProperties(Artifact):
    """What is needed to map a preprocessed case back to its original file.

    ``original_*`` describe the raw file ((X, Y, Z) order); ``bbox`` is the crop box in raw voxel
    indices ``((x0, x1), (y0, y1), (z0, z1))`` (half-open); ``shape_after_crop`` and ``spacing`` are
    in the transposed order of the plans; ``shape_after_resample`` is the stored array's shape.
    """

    KIND = "case_properties"
    SCHEMA_VERSION = 1

    case_id: str
    original_shape: tuple[int, int, int]
    original_spacing: tuple[float, float, float]
    original_affine: tuple[tuple[float, ...], ...]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    shape_after_crop: tuple[int, int, int]
    spacing_after_crop: tuple[float, float, float]
    shape_after_resample: tuple[int, int, int]
    spacing: tuple[float, float, float]
    classes_present: tuple[int, ...] = ()


def label_dtype(max_value: int) -> np.dtype:
    return np.dtype(np.int8) if max_value < 128 else np.dtype(np.int16)


def write_case(folder: Path, props: CaseProperties, data: np.ndarray, seg: np.ndarray | None,
               locations: dict[int, np.ndarray]) -> None:
    """Store one preprocessed case; the properties JSON is written last (completion marker).

    The arrays are written without a per-file ``fsync`` (the caller flushes the file system once at
    the end, :func:`autoseg.core.fileops.flush_file_system`); a case cut short by a power loss is
    found by :func:`is_case_done`, which checks the arrays' sizes, and is preprocessed again."""
    folder = Path(folder)
    cid = props.case_id
    atomic_write_with(folder / f"{cid}.npy", lambda f: np.save(f, np.ascontiguousarray(data, dtype=np.float32)),
                      durable=False)
    if seg is not None:
        atomic_write_with(folder / f"{cid}_seg.npy", lambda f: np.save(f, np.ascontiguousarray(seg)), durable=False)
    atomic_write_with(folder / f"{cid}_fg.npz",
                      lambda f: np.savez(f, **{str(k): np.asarray(v, dtype=np.int32) for k, v in locations.items()}),
                      durable=False)
    props.save(folder / f"{cid}.json", durable=False)


def _npy_complete(path: Path) -> bool:
    """Whether a ``.npy`` file holds as many bytes as its header says (a file emptied or cut short by a
    power loss before it reached the disk does not)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            expected = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return path.stat().st_size == expected
    except (OSError, ValueError, EOFError):
        return False


def is_case_done(folder: Path, case_id: str, labelled: bool = True) -> bool:
    """Whether a case is stored completely: its files exist, the properties are a JSON object, the
    arrays are as long as their headers say and the foreground locations are a readable archive."""
    folder = Path(folder)
    needed = [f"{case_id}.json", f"{case_id}.npy", f"{case_id}_fg.npz"] + ([f"{case_id}_seg.npy"] if labelled else [])
    if not all((folder / n).is_file() for n in needed):
        return False
    try:
        if not isinstance(json.loads((folder / f"{case_id}.json").read_bytes()), dict):
            return False
    except (OSError, ValueError):
        return False
    arrays = [folder / f"{case_id}.npy"] + ([folder / f"{case_id}_seg.npy"] if labelled else [])
    return all(_npy_complete(a) for a in arrays) and zipfile.is_zipfile(folder / f"{case_id}_fg.npz")


@dataclass
class PreprocessedCase:
    """A stored case opened for reading; arrays are memory-mapped (no copy until sliced)."""

    props: CaseProperties
    data: np.ndarray
    seg: np.ndarray | None
    locations: dict[int, np.ndarray]
    previous: np.ndarray | None = None  # a cascade stage's previous-stage label map (1, X, Y, Z) (autoseg.cascade)


def open_case(folder: Path, case_id: str, mmap: bool = True) -> PreprocessedCase:
    folder = Path(folder)
    props = CaseProperties.load(folder / f"{case_id}.json")
    mode = "r" if mmap else None
    data = np.load(folder / f"{case_id}.npy", mmap_mode=mode)
    seg_path = folder / f"{case_id}_seg.npy"
    seg = np.load(seg_path, mmap_mode=mode) if seg_path.is_file() else None
    with np.load(folder / f"{case_id}_fg.npz") as z:
        locations = {int(k): z[k] for k in z.files}
    return PreprocessedCase(props, data, seg, locations)


def list_done_cases(folder: Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".") and is_case_done(folder, p.stem, False))
