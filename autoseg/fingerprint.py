"""Dataset fingerprint (``fingerprint.json``): spacings, shapes and foreground intensities.

Per case, after cropping all channels to the non-zero region (holes filled): spacing, shape before
and after the crop, relative size after the crop. Per channel: foreground intensity statistics
pooled over a seeded sample of label > 0 voxels of all cases. Spacings in mm, (X, Y, Z) file order.

Sampling: case ``i`` draws ``min(samples_total // n_cases, samples_per_case_max)`` voxel positions
with replacement from its label > 0 voxels (the same positions for every channel), using the
generator ``default_rng([seed, i])``, so the result does not depend on the number of workers or the
order in which workers finish. A case with an empty label contributes no samples. When no case has
any foreground, the statistics come from the same number of samples of each case's non-zero
(cropping) mask instead and ``intensity_source`` says "nonzero".
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from autoseg.artifacts import Artifact
from autoseg.core.processes import worker_context
from autoseg.cropping import crop_to_nonzero
from autoseg.io import read_geometry, read_image, read_volume

if TYPE_CHECKING:
    from autoseg.dataset import Case, DatasetSpec

# nnU-Net samples 1e8 foreground voxels per dataset (DatasetFingerprintExtractor in
# nnunetv2/experiment_planning/dataset_fingerprint/fingerprint_extractor.py) and holds them all for
# the pooled percentiles: 400 MB per channel. A total of 1e7 bounds that by 40 MB per channel
# whatever the case count. The per-case cap of 1e5 only matters for small datasets (< 100 cases):
# measured against nnU-Net's statistics, BraTS (6 cases) p99.5 is off by 1.1% with 1e4 draws per
# case and by 0.2% with 1e5, at the same run time.
FOREGROUND_SAMPLES_TOTAL = 10_000_000
FOREGROUND_SAMPLES_PER_CASE_MAX = 100_000
# Peak bytes per voxel while analysing a case with C channels: float32 channel arrays plus their
# stacked copy (8 C), the label in its file dtype (<= 8), the `!= 0` test per channel (C) and the
# hole-filling masks (~8).
CASE_BYTES_PER_VOXEL_PER_CHANNEL = 9
CASE_BYTES_PER_VOXEL_FIXED = 16
# Share of the available memory the worker pool may plan to use.
MEMORY_FRACTION = 0.8
# Cases submitted ahead per worker: keeps every worker busy without queueing the whole dataset.
IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class IntensityStats:
    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing: tuple[float, float, float]
    shape_before_crop: tuple[int, int, int]
    shape_after_crop: tuple[int, int, int]
    relative_size_after_crop: float


@dataclass(frozen=True)
class Fingerprint(Artifact):
    KIND = "fingerprint"
    SCHEMA_VERSION = 1

    dataset_name: str
    channel_names: tuple[str, ...]
    cases: tuple[CaseFingerprint, ...]
    intensity: tuple[IntensityStats, ...]  # one per channel
    foreground_samples_per_case: int
    seed: int
    intensity_source: str = "foreground"  # "nonzero" when no case had any foreground voxel

    @property
    def spacings(self) -> list[tuple[float, float, float]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[tuple[int, int, int]]:
        return [c.shape_after_crop for c in self.cases]

    @property
    def median_relative_size_after_crop(self) -> float:
        return float(np.median([c.relative_size_after_crop for c in self.cases])) if self.cases else 1.0


class FingerprintError(RuntimeError):
    """Fingerprint extraction failed (unreadable case, worker killed)."""


# --- statistics ---------------------------------------------------------------------------------

def intensity_stats(samples: np.ndarray) -> IntensityStats:
    """Statistics of a 1D sample (computed in float64)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        nan = float("nan")
        return IntensityStats(nan, nan, nan, nan, nan, nan, nan)
    p005, med, p995 = np.percentile(x, (0.5, 50.0, 99.5))
    return IntensityStats(mean=float(x.mean()), median=float(med), std=float(x.std()), min=float(x.min()),
                          max=float(x.max()), percentile_00_5=float(p005), percentile_99_5=float(p995))


# --- one case -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CaseResult:
    index: int
    fingerprint: CaseFingerprint
    foreground: np.ndarray | None  # (C, n) float32 samples of label > 0 voxels; None when empty
    nonzero: np.ndarray | None     # (C, n) samples of the non-zero mask, only when foreground is None


def analyze_case(case: "Case", index: int, n_samples: int, seed: int, force_itk: bool = False) -> _CaseResult:
    """Read, crop and sample one case (runs in a worker process)."""
    data, geometry = read_image(list(case.images), force_itk)
    seg, _ = read_volume(case.label, force_itk)
    return analyze_arrays(case, index, data, seg, geometry.spacing, n_samples, seed)


def analyze_arrays(case: "Case", index: int, data: np.ndarray, seg: np.ndarray, spacing, n_samples: int,
                   seed: int) -> _CaseResult:
    """Crop and sample one case already in memory: ``data`` float32 ``(C, X, Y, Z)`` as
    :func:`~autoseg.io.read_image` returns it, ``seg`` the label as read. The integrity check calls this
    on the arrays it has just read (:func:`autoseg.integrity.check_and_fingerprint`), so planning reads
    each file once for both."""
    if seg.shape != data.shape[1:]:
        raise FingerprintError(f"{case.label}: label shape {seg.shape} differs from image shape {data.shape[1:]} "
                               f"of {case.images[0].name}; re-export the label on the image grid")
    data_c, seg_c, _, mask_c = crop_to_nonzero(data, seg)
    before, after = tuple(int(s) for s in seg.shape), tuple(int(s) for s in data_c.shape[1:])
    fp = CaseFingerprint(
        case_id=case.case_id,
        spacing=tuple(float(s) for s in spacing[:3]),
        shape_before_crop=before,
        shape_after_crop=after,
        relative_size_after_crop=float(np.prod(after, dtype=np.float64) / np.prod(before, dtype=np.float64)),
    )
    rng = np.random.default_rng([seed, index])
    foreground = _sample(data_c, seg_c > 0, n_samples, rng)
    nonzero = _sample(data_c, mask_c, n_samples, rng) if foreground is None else None
    return _CaseResult(index, fp, foreground, nonzero)


def _sample(data: np.ndarray, mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """``(C, n)`` values at ``n`` positions drawn with replacement from ``mask``; None when empty."""
    positions = np.flatnonzero(mask)
    if positions.size == 0 or n <= 0:
        return None
    coords = np.unravel_index(positions[rng.integers(0, positions.size, size=n)], mask.shape)
    return np.stack([data[c][coords] for c in range(data.shape[0])]).astype(np.float32)


# --- parallelism --------------------------------------------------------------------------------

def pool_size(n_cores: int, mem_available: float, per_case_bytes: float,
              memory_fraction: float = MEMORY_FRACTION) -> int:
    """Worker count: at most one per core and as many as ``memory_fraction`` of the available memory
    holds cases of ``per_case_bytes`` each; at least 1."""
    by_memory = int(mem_available * memory_fraction // max(per_case_bytes, 1))
    return max(1, min(int(n_cores), by_memory))


def case_bytes(case: "Case", n_channels: int, force_itk: bool = False) -> int:
    """Peak memory estimate for analysing ``case``, from its image header."""
    voxels = math.prod(read_geometry(case.images[0], force_itk).shape[:3])
    return voxels * (CASE_BYTES_PER_VOXEL_PER_CHANNEL * n_channels + CASE_BYTES_PER_VOXEL_FIXED)


def available_memory() -> int:
    """Available memory in bytes (``MemAvailable`` from /proc/meminfo, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _results(cases, n_samples: int, seed: int, force_itk: bool, workers: int) -> Iterator[_CaseResult]:
    """Analyse all cases, yielding results as they finish (any order). At most ``IN_FLIGHT_PER_WORKER``
    cases per worker are submitted ahead and a finished one is released once yielded, so memory does
    not grow with the number of cases."""
    if workers <= 1:
        for i, case in enumerate(cases):
            yield analyze_case(case, i, n_samples, seed, force_itk)
        return
    todo = iter(enumerate(cases))
    pending: set = set()
    with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
        try:
            while True:
                for i, case in itertools.islice(todo, IN_FLIGHT_PER_WORKER * workers - len(pending)):
                    pending.add(pool.submit(analyze_case, case, i, n_samples, seed, force_itk))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        except BrokenProcessPool:
            raise FingerprintError(
                f"a fingerprint worker died with {workers} workers: most often it was killed for lack of memory "
                f"(rerun with fewer workers, e.g. --workers {max(1, workers // 2)}), or a script started workers "
                f"without an `if __name__ == '__main__':` guard (each worker process imports the main "
                f"script)") from None
        finally:
            for fut in pending:
                fut.cancel()


# --- dataset ------------------------------------------------------------------------------------

def extract_fingerprint(spec: "DatasetSpec", cases: list["Case"], workers: int = 1, seed: int = 1234,
                        samples_total: int = FOREGROUND_SAMPLES_TOTAL,
                        samples_per_case_max: int = FOREGROUND_SAMPLES_PER_CASE_MAX,
                        progress: bool = False) -> Fingerprint:
    """Fingerprint of the training ``cases`` of a dataset (see the module docstring).

    ``workers`` is an upper bound: the pool is further limited by the cores and by the memory the
    largest case needs (estimated from the headers). Results are the same for any worker count.
    """
    n_samples = samples_per_case(spec, cases, samples_total, samples_per_case_max)
    workers = fingerprint_workers(spec, cases, workers)
    stream = _results(cases, n_samples, seed, spec.force_itk, workers)
    results = list(_with_progress(stream, len(cases), f"Fingerprint {spec.name} ({workers} worker(s))", progress))
    return assemble_fingerprint(spec, len(cases), results, n_samples, seed)


def samples_per_case(spec: "DatasetSpec", cases: list["Case"], samples_total: int = FOREGROUND_SAMPLES_TOTAL,
                     samples_per_case_max: int = FOREGROUND_SAMPLES_PER_CASE_MAX) -> int:
    """Foreground voxel draws per case (module docstring); no training case is an error."""
    if not cases:
        raise FingerprintError(f"dataset {spec.name} has no training cases to fingerprint; check imagesTr/labelsTr")
    return max(1, min(samples_total // len(cases), samples_per_case_max))


def fingerprint_workers(spec: "DatasetSpec", cases: list["Case"], workers: int) -> int:
    """``workers`` bounded by the cores and by the memory the largest case needs (from the headers)."""
    if workers <= 1:
        return 1
    largest = max(case_bytes(c, spec.num_channels, spec.force_itk) for c in cases)
    return min(workers, len(cases), pool_size(available_cores(), available_memory(), largest))


def assemble_fingerprint(spec: "DatasetSpec", n_cases: int, results, n_samples: int, seed: int) -> Fingerprint:
    """The dataset's fingerprint from the per-case results of :func:`analyze_case` or
    :func:`analyze_arrays` (any order; one per case index)."""
    fingerprints: list[CaseFingerprint | None] = [None] * n_cases
    foreground: list[np.ndarray | None] = [None] * n_cases
    nonzero: list[np.ndarray | None] = [None] * n_cases
    for r in results:
        fingerprints[r.index], foreground[r.index] = r.fingerprint, r.foreground
        nonzero[r.index] = r.nonzero
    if any(f is None for f in fingerprints):
        raise FingerprintError(f"dataset {spec.name}: {fingerprints.count(None)} case(s) were not fingerprinted")
    source = "foreground" if any(f is not None for f in foreground) else "nonzero"
    pooled = [s for s in (foreground if source == "foreground" else nonzero) if s is not None]
    stats = tuple(intensity_stats(np.concatenate([s[c] for s in pooled]) if pooled else np.empty(0))
                  for c in range(spec.num_channels))
    return Fingerprint(dataset_name=spec.name, channel_names=tuple(spec.channel_names), cases=tuple(fingerprints),
                       intensity=stats, foreground_samples_per_case=n_samples, seed=seed, intensity_source=source)


def _with_progress(items: Iterator[_CaseResult], total: int, description: str, enabled: bool):
    if not enabled:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            bar.advance(task)
            yield item
