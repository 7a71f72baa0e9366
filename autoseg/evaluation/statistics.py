"""Per-structure statistics of label maps (``predict --statistics``, ``evaluate --statistics``).

Per case and label: voxel count, volume in mL (voxels x voxel volume), mean / standard deviation
(population, ddof 0) / minimum / maximum of every image channel over the label's voxels (in the
image's own units, e.g. HU for CT; null when the label is empty or no image is given), and the
bounding box: voxel index ranges (inclusive, axes X, Y, Z of the file), the box's size along the
voxel axes in mm, and the world-space (RAS+, mm) box enclosing the label's voxels (voxel corners,
so a single voxel's box is one voxel wide).

Written as ``statistics.json`` (:class:`StatisticsReport`) and ``statistics.csv`` (one row per case
and label), both atomically.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from autoseg.artifacts import Artifact
from autoseg.core.fileops import atomic_write_bytes
from autoseg.dataset import DatasetSpec
from autoseg.io import ImageReadError, read_image, read_volume
from autoseg.io.segments import label_values

STATISTICS_JSON = "statistics.json"
STATISTICS_CSV = "statistics.csv"


@dataclass(frozen=True)
class ChannelIntensity:
    """Intensity of one image channel over a label's voxels (None when the label is empty)."""

    channel: str
    mean: float | None
    std: float | None
    min: float | None
    max: float | None


@dataclass(frozen=True)
class LabelStatistics:
    label: str
    value: int
    voxels: int
    volume_ml: float
    intensity: tuple[ChannelIntensity, ...] = ()
    bbox_voxels: tuple[tuple[int, int], ...] | None = None  # inclusive index range per axis (X, Y, Z)
    extent_mm: tuple[float, ...] | None = None  # size of that box along the voxel axes (mm)
    bbox_world_min_mm: tuple[float, ...] | None = None  # RAS+ box enclosing the voxels (corners)
    bbox_world_max_mm: tuple[float, ...] | None = None


@dataclass(frozen=True)
class StatisticsReport(Artifact):
    """``statistics.json``: case -> label name -> statistics."""

    KIND = "label_statistics"
    SCHEMA_VERSION = 1

    cases: dict[str, dict[str, LabelStatistics]]


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    ranges = []
    for axis in range(mask.ndim):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        ranges.append((int(idx[0]), int(idx[-1])))
    return tuple(ranges)


def world_box(bbox: tuple[tuple[int, int], ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) world coordinates of the corners of voxel box ``bbox`` (voxel centres at integer
    indices, so the box spans index - 0.5 to index + 0.5)."""
    corners = np.array([[lo - 0.5 if pick == 0 else hi + 0.5 for pick, (lo, hi) in zip(picks, bbox)]
                        for picks in product((0, 1), repeat=3)])
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def _intensity(image: np.ndarray, mask: np.ndarray, name: str) -> ChannelIntensity:
    if not mask.any():
        return ChannelIntensity(name, None, None, None, None)
    values = image[mask].astype(np.float64)
    return ChannelIntensity(name, float(values.mean()), float(values.std()), float(values.min()), float(values.max()))


def label_statistics(labels: np.ndarray, spacing, affine, named_values: list[tuple[str, int]],
                     image: np.ndarray | None = None, channel_names: tuple[str, ...] = ()
                     ) -> dict[str, LabelStatistics]:
    """Statistics of each (name, value) of ``named_values`` in ``labels`` (X, Y, Z); ``spacing`` in mm,
    ``affine`` voxel -> RAS+ 4x4; ``image`` (C, X, Y, Z) on the same grid, or None (no intensities)."""
    if image is not None and tuple(image.shape[1:]) != tuple(labels.shape):
        raise ValueError(f"image shape {image.shape[1:]} differs from label map shape {labels.shape}")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64)[:3])) / 1000.0
    names = channel_names or tuple(str(c) for c in range(0 if image is None else image.shape[0]))
    out = {}
    for name, value in named_values:
        mask = labels == value
        n = int(np.count_nonzero(mask))
        intensity = () if image is None else tuple(_intensity(image[c], mask, names[c]) for c in range(image.shape[0]))
        box = extent = lo = hi = None
        if n:
            box = _bbox(mask)
            extent = tuple(float((b - a + 1) * s) for (a, b), s in zip(box, spacing))
            lo, hi = (tuple(float(v) for v in w) for w in world_box(box, affine))
        out[name] = LabelStatistics(label=name, value=int(value), voxels=n, volume_ml=n * voxel_ml,
                                    intensity=intensity, bbox_voxels=box, extent_mm=extent,
                                    bbox_world_min_mm=lo, bbox_world_max_mm=hi)
    return out


def statistics_csv(report: StatisticsReport) -> str:
    """One row per case and label; intensity columns ``{channel}_mean`` ... per channel."""
    channels = []
    for labels in report.cases.values():
        for s in labels.values():
            channels += [c.channel for c in s.intensity if c.channel not in channels]
    head = ["case", "label", "value", "voxels", "volume_ml"]
    head += [f"{c}_{k}" for c in channels for k in ("mean", "std", "min", "max")]
    head += ["bbox_voxels", "extent_mm", "bbox_world_min_mm", "bbox_world_max_mm"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    fmt = lambda v: "" if v is None else (" ".join(fmt(x) for x in v) if isinstance(v, tuple) else v)  # noqa: E731
    for case, labels in report.cases.items():
        for s in labels.values():
            by_channel = {c.channel: c for c in s.intensity}
            row = [case, s.label, s.value, s.voxels, f"{s.volume_ml:.6g}"]
            for c in channels:
                ci = by_channel.get(c)
                row += ["" if ci is None or getattr(ci, k) is None else f"{getattr(ci, k):.6g}"
                        for k in ("mean", "std", "min", "max")]
            row += [fmt(tuple(f"{a}-{b}" for a, b in s.bbox_voxels) if s.bbox_voxels else None),
                    fmt(tuple(f"{v:.4g}" for v in s.extent_mm) if s.extent_mm else None),
                    fmt(tuple(f"{v:.4g}" for v in s.bbox_world_min_mm) if s.bbox_world_min_mm else None),
                    fmt(tuple(f"{v:.4g}" for v in s.bbox_world_max_mm) if s.bbox_world_max_mm else None)]
            w.writerow(row)
    return buf.getvalue()


def write_statistics(report: StatisticsReport, folder: Path, stem: str = "statistics") -> tuple[Path, Path]:
    """Write ``{stem}.json`` and ``{stem}.csv`` into ``folder`` atomically; returns both paths."""
    folder = Path(folder)
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    report.save(json_path)
    atomic_write_bytes(csv_path, statistics_csv(report).encode())
    return json_path, csv_path


def summary_lines(report: StatisticsReport) -> list[str]:
    """Console summary: per label, the cases where it is present and their volumes (mean, range)."""
    per_label: dict[str, list[float]] = {}
    for labels in report.cases.values():
        for s in labels.values():
            per_label.setdefault(s.label, [])
            if s.voxels:
                per_label[s.label].append(s.volume_ml)
    n = len(report.cases)
    lines = []
    for label, vols in per_label.items():
        if vols:
            lines.append(f"{label}: present in {len(vols)}/{n} case(s), volume {np.mean(vols):.2f} mL "
                         f"(range {min(vols):.2f}-{max(vols):.2f})")
        else:
            lines.append(f"{label}: absent in all {n} case(s)")
    return lines


def folder_statistics(label_files: dict[str, Path], spec: DatasetSpec, images_dir: Path | None = None
                      ) -> StatisticsReport:
    """Statistics of label maps ``{case: file}`` (e.g. the references of ``evaluate``); intensities from
    the channel files ``{case}_{XXXX}{ending}`` of ``images_dir`` when given (same grid required)."""
    cases = {}
    for case, path in sorted(label_files.items()):
        labels, geometry = read_volume(path)
        image = None
        if images_dir is not None:
            ending = spec.file_ending
            files = [Path(images_dir) / f"{case}_{c:04d}{ending}" for c in range(spec.num_channels)]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ImageReadError(f"{images_dir}: no {', '.join(missing)} for the reference {path.name}; "
                                     "give the folder of the images the references belong to")
            image, image_geometry = read_image(files)
            diff = geometry.mismatches(image_geometry)
            if diff:
                raise ImageReadError(f"{path}: geometry differs from its image {files[0].name} ({'; '.join(diff)})")
        cases[case] = label_statistics(labels, geometry.spacing, geometry.affine_array, label_values(spec), image,
                                       spec.channel_names)
    return StatisticsReport(cases=cases)
