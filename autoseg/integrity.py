"""Integrity checks of a raw dataset: every problem at once, each naming the file and the fix.

:func:`inspect_dataset` returns a :class:`CheckReport` (problems and warnings, never raising for
problems in the data); :func:`check_dataset` raises :class:`~autoseg.dataset.DatasetError` listing
all problems, emits each warning as a :class:`DatasetWarning`, and returns ``(spec, cases)``.

Order of the checks: dataset.json (schema), file layout (names, channels, label/image pairs, stray
files, broken links, names that differ only in upper/lower case, a ``file_ending`` no file has),
then per case, each file in turn: its gzip checksum (.gz files are decompressed to the end once,
since readers stop early and would miss a damaged stream), its header (dimensions, zero size,
spacing, a consistent NIfTI pixdim/qform/sform), its voxels (NaN/Inf in images; fractional, undeclared or missing foreground values in
labels), and finally the geometry of the channels and the label against the first channel. Per-case
checks run in a bounded process pool when ``workers > 1``.

Case names may hold any printable Unicode character (``leber_ü_01`` works end to end); whitespace
and control characters are refused, since they break shell scripts and nnU-Net-style file lists.
"""

from __future__ import annotations

import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.core.processes import worker_context
from autoseg.dataset import _CHANNEL_RE, Case, DatasetError, DatasetSpec, list_cases
from autoseg.fingerprint import (Fingerprint, analyze_arrays, assemble_fingerprint, fingerprint_workers,
                                 samples_per_case)
from autoseg.io.images import Geometry, ImageReadError, nonfinite_problem, read_volume_verified
from autoseg.jsonfiles import InputWarning
from autoseg.paths import os_error_message

_BINCOUNT_MAX_RANGE = 1 << 20  # label value ranges up to this are counted with bincount (fast)
_FLOAT_EXACT_INT = 2.0 ** 53  # float labels at or beyond this are not cast to int64 (it would overflow)


class CheckWorkerError(RuntimeError):
    """A check worker process died (not a problem of the data: most often memory)."""


class DatasetWarning(InputWarning):
    """Something unusual but usable in a raw dataset (e.g. a label without foreground)."""


@dataclass(frozen=True)
class CheckReport:
    """Outcome of :func:`inspect_dataset`. ``spec`` is None when dataset.json itself is broken."""

    root: Path
    spec: DatasetSpec | None
    cases: tuple[Case, ...]
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    fingerprint: Fingerprint | None = None  # only when asked for (check_and_fingerprint) and no problem

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CaseResult:
    """What the per-case check found: problems, warnings, spatial shape and foreground presence."""

    case_id: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    has_foreground: bool | None = None  # None for unlabelled or unreadable labels
    fingerprint: object | None = None  # the case's fingerprint result when asked for and the case has no problem


def check_dataset(root: Path, spec: DatasetSpec | None = None, workers: int = 1,
                  progress: bool = False) -> tuple[DatasetSpec, list[Case]]:
    """Check a raw dataset; raise :class:`DatasetError` with every problem, else return
    ``(spec, training cases)``. Warnings are emitted with :func:`warnings.warn` (DatasetWarning)."""
    report = inspect_dataset(root, spec, workers, progress)
    _raise_or_warn(report)
    return report.spec, list(report.cases)


def check_and_fingerprint(root: Path, workers: int = 1, progress: bool = False,
                          seed: int = 1234) -> tuple[DatasetSpec, list[Case], Fingerprint]:
    """:func:`check_dataset` and :func:`~autoseg.fingerprint.extract_fingerprint` in one pass over the
    files: each training case's fingerprint is computed from the arrays its check has just read, so
    planning reads every file once for both (same result as the two calls one after the other). The
    pool is bounded by memory as the fingerprint's is, since a case's channels and label are then held
    together."""
    report = inspect_dataset(root, None, workers, progress, fingerprint_seed=seed)
    _raise_or_warn(report)
    return report.spec, list(report.cases), report.fingerprint


def _raise_or_warn(report: CheckReport) -> None:
    for message in report.warnings:
        warnings.warn(message, DatasetWarning, stacklevel=3)
    if report.problems:
        raise DatasetError(list(report.problems))


def inspect_dataset(root: Path, spec: DatasetSpec | None = None, workers: int = 1, progress: bool = False,
                    include_test: bool = True, fingerprint_seed: int | None = None) -> CheckReport:
    """Run every check on the dataset at ``root`` and collect problems and warnings; with
    ``fingerprint_seed``, also the fingerprint of the training cases (``report.fingerprint``, None when
    there are problems)."""
    root = Path(root)
    if spec is None:
        try:
            spec = DatasetSpec.load(root)
        except DatasetError as e:
            return CheckReport(root, None, (), tuple(e.problems), ())
    cases, problems = list_cases(root, spec)
    test_cases: list[Case] = []
    if include_test and (root / "imagesTs").is_dir():
        test_cases, test_problems = list_cases(root, spec, "imagesTs", None)
        problems += test_problems
    problems += _name_problems(root, spec)
    n_found = len(_training_case_ids(root, spec))
    if n_found == 0:
        problems.append(f"{root / 'imagesTr'}: no training cases found; add {{case}}_0000{spec.file_ending} "
                        f"images and {{case}}{spec.file_ending} labels in labelsTr/")
    elif n_found != spec.num_training:
        problems.append(f"{root / 'dataset.json'}: numTraining is {spec.num_training} but {n_found} training "
                        f"case(s) were found in imagesTr/labelsTr; set numTraining to {n_found}")
    sampling = None
    if fingerprint_seed is not None and cases:
        try:  # the pool's memory bound reads every header first
            workers = fingerprint_workers(spec, cases, workers)
            sampling = (samples_per_case(spec, cases), fingerprint_seed)
        except (ImageReadError, OSError):  # a file the checks below report with the others: no fingerprint
            pass
    results = _run_case_checks(cases + test_cases, spec, workers, progress, sampling, len(cases))
    warns: list[str] = []
    for r in results:
        problems += r.problems
        warns += r.warnings
    problems += _dataset_level_problems(root, spec, results[: len(cases)])
    fingerprint = None
    if sampling is not None and not problems:
        fingerprint = assemble_fingerprint(spec, len(cases), [r.fingerprint for r in results[: len(cases)]],
                                           *sampling)
    return CheckReport(root, spec, tuple(cases), tuple(problems), tuple(warns), fingerprint)


def _training_case_ids(root: Path, spec: DatasetSpec) -> set[str]:
    """Case ids named by any file in imagesTr or labelsTr (complete or not)."""
    ids = set()
    for sub, is_image in (("imagesTr", True), ("labelsTr", False)):
        folder = root / sub
        for p in folder.iterdir() if folder.is_dir() else ():
            if p.name.startswith(".") or not p.name.lower().endswith(spec.file_ending) or p.is_dir():
                continue  # a broken link still names a case (reported as a problem of its own)
            stem = p.name[: -len(spec.file_ending)]
            m = _CHANNEL_RE.match(stem) if is_image else None
            if is_image and not m:
                continue
            ids.add(m["case"] if m else stem)
    return ids


def _name_problems(root: Path, spec: DatasetSpec) -> list[str]:
    problems = []
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        folder = root / sub
        for p in sorted(folder.iterdir()) if folder.is_dir() else ():
            bad = sorted({repr(ch) for ch in p.name if ch.isspace() or not ch.isprintable()})
            if p.name.startswith(".") or not bad:
                continue
            problems.append(f"{p}: file name contains {', '.join(bad)}; rename the case using letters, digits, "
                            "'_' and '-' (no spaces or control characters)")
    return problems


def _dataset_level_problems(root: Path, spec: DatasetSpec, results: list[CaseResult]) -> list[str]:
    problems = []
    labelled = [r for r in results if r.has_foreground is not None]
    if labelled and not any(r.has_foreground for r in labelled):
        problems.append(f"{root / 'labelsTr'}: all {len(labelled)} labels are empty (background only); "
                        f"label the foreground classes {spec.foreground_classes or spec.regions}")
    shapes = [r.shape for r in results if r.shape is not None]
    volumetric = [s for s in shapes if min(s) > 1]
    if volumetric:
        for r in results:
            if r.shape is not None and min(r.shape) == 1:
                problems.append(f"{_first_image(root, spec, r.case_id)}: a single slice {r.shape} while other cases "
                                "are 3D volumes; supply the full volume or remove the case")
    return problems


def _first_image(root: Path, spec: DatasetSpec, case_id: str) -> Path:
    return root / "imagesTr" / f"{case_id}_0000{spec.file_ending}"


def _run_case_checks(cases: list[Case], spec: DatasetSpec, workers: int, progress: bool,
                     sampling: tuple[int, int] | None = None, n_training: int = 0) -> list[CaseResult]:
    """Check every case, in order, in a bounded process pool when ``workers > 1``; with ``sampling``
    (samples per case, seed), also fingerprint the first ``n_training`` cases."""
    results: dict[int, CaseResult] = {}

    def job(i: int):
        return (i, *sampling) if sampling is not None and i < n_training else None

    with _progress_bar(progress) as bar:
        task = bar.add_task("checking cases" + (" (and fingerprint)" if sampling else ""), total=len(cases))
        if workers <= 1 or len(cases) <= 1:
            for i, case in enumerate(cases):
                results[i] = check_case(case, spec, job(i))
                bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) as pool:
                pending, queue = {}, list(enumerate(cases))[::-1]
                while queue or pending:
                    while queue and len(pending) < 2 * workers:  # bounded: never the whole list at once
                        i, case = queue.pop()
                        pending[pool.submit(check_case, case, spec, job(i))] = i
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        try:
                            results[i] = fut.result()
                        except BrokenProcessPool:
                            raise CheckWorkerError(
                                f"a check worker died while reading case '{cases[i].case_id}' with {workers} "
                                f"workers (most often: killed for lack of memory); rerun with fewer workers, e.g. "
                                f"-j {max(1, workers // 2)}") from None
                        bar.advance(task)
    return [results[i] for i in range(len(cases))]


def _progress_bar(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


class _NoBar:
    """Stand-in for rich's Progress when no bar is wanted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def advance(self, *args, **kwargs):
        pass


def check_case(case: Case, spec: DatasetSpec, fingerprint: tuple[int, int, int] | None = None) -> CaseResult:
    """All per-case checks. Each file is read once (a .gz decompressed once, its checksum verified in
    the same pass): its header is checked, then its voxels; finally the channels and the label are
    compared on geometry. One array is in memory at a time, unless ``fingerprint`` = (case index,
    samples per case, seed) asks for the case's fingerprint too: the arrays are then kept and, when the
    case has no problem, analysed as :func:`~autoseg.fingerprint.analyze_case` would after reading them
    again (``result.fingerprint``)."""
    result = CaseResult(case.case_id)
    files = list(case.images) + ([case.label] if case.label is not None else [])
    geometries: dict[Path, Geometry] = {}
    constant: dict[Path, float] = {}  # image files whose voxels all hold one value
    kept: dict[Path, np.ndarray] = {}
    for p in files:
        try:
            arr, g = read_volume_verified(p, spec.force_itk)  # a .gz is decompressed once, checksum included
        except ImageReadError as e:
            result.problems.append(str(e))
            continue
        except OSError as e:  # unreadable (permissions), removed meanwhile, ...: one of the problems
            result.problems.append(os_error_message(e) or f"{p}: cannot be read ({e})")
            continue
        problem = _header_problem(p, g)
        if problem:
            result.problems.append(problem)
            continue
        geometries[p] = g
        n_problems = len(result.problems)
        _check_voxels(p, arr, p == case.label, spec, result)
        if p != case.label and len(result.problems) == n_problems and arr.size and arr.min() == arr.max():
            constant[p] = float(arr.flat[0])
        if fingerprint is not None and case.label is not None:
            kept[p] = arr
        del arr
    for p, value in constant.items():
        result.warnings.append(_constant_image_warning(p, value, case.label, result.has_foreground))
    ref = geometries.get(case.images[0])
    if ref is not None:
        result.shape = _spatial(ref.shape)
        for p in files[1:]:
            diff = ref.mismatches(geometries[p]) if p in geometries else []
            if diff:
                what = "label" if p == case.label else "channel"
                result.problems.append(f"{p}: {what} geometry differs from {case.images[0].name}: "
                                       f"{'; '.join(diff)}; resample or re-export it onto the image grid")
    if fingerprint is not None and case.label is not None and not result.problems:
        # the channels as read_image stacks them (float32), the label as read: analyze_case's inputs
        data = np.stack([np.asarray(kept.pop(p), dtype=np.float32) for p in case.images])
        index, n_samples, seed = fingerprint
        result.fingerprint = analyze_arrays(case, index, data, kept.pop(case.label), ref.spacing, n_samples, seed)
    return result


def _constant_image_warning(path: Path, value: float, label: Path | None, has_foreground: bool | None) -> str:
    if value == 0 and has_foreground:
        return (f"{path}: image is all zero but its label {label.name} has foreground voxels; the image is "
                "probably a failed export: re-export it or remove the case")
    return (f"{path}: image is constant (every voxel is {value:g}); it holds nothing to learn from: check it is "
            "not a failed export")


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape without trailing singleton axes beyond the third (as read_volume returns it)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _header_problem(path: Path, g: Geometry) -> str | None:
    shape = _spatial(g.shape)
    if len(shape) < 3:
        return f"{path}: is a 2D image (shape {shape}); this dataset needs 3D volumes (X, Y, Z)"
    if len(shape) > 3:
        return (f"{path}: has {len(shape)} axes (shape {shape}), expected a 3D volume; store each channel "
                "as its own file _0000, _0001, ... (MSD 4D files: `autoseg convert-msd`)")
    if min(shape) == 0:
        return f"{path}: is empty (shape {shape}); re-export it"
    spacing = np.asarray(g.spacing[:3], dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        return f"{path}: invalid voxel spacing {tuple(spacing)}; fix the header (pixdim / spacing)"
    return None


def _check_voxels(path: Path, arr: np.ndarray, is_label: bool, spec: DatasetSpec, result: CaseResult) -> None:
    if np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype.kind not in "biuf":
        result.problems.append(f"{path}: unsupported voxel type {arr.dtype}; store real numbers")
        return
    problem = nonfinite_problem(path, arr)
    if problem:
        result.problems.append(problem)
        return
    if is_label:
        _check_label_values(path, arr, spec, result)


def label_value_counts(arr: np.ndarray) -> tuple[dict[int, int], list[float]]:
    """Voxel count per integer value of a label array, and up to 5 fractional values found.

    Integer-valued floats (e.g. float32 0/1/2 labels) count as integers. Uses one bincount pass
    when the value range is small, ``np.unique`` otherwise.
    """
    flat = arr.ravel(order="K")  # a view in memory order (nibabel arrays are Fortran-ordered); counts ignore order
    if flat.dtype.kind == "f":
        frac = flat != np.trunc(flat)
        if frac.any():
            return {}, [float(v) for v in np.unique(flat[frac])[:5]]
        if flat.size and max(-float(flat.min()), float(flat.max())) >= _FLOAT_EXACT_INT:
            values, counts = np.unique(flat, return_counts=True)  # too large for int64: Python ints, no overflow
            return {int(v): int(c) for v, c in zip(values, counts)}, []
        flat = flat.astype(np.int64)
    if flat.dtype.kind == "b":
        flat = flat.astype(np.uint8)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < _BINCOUNT_MAX_RANGE:
        counts = np.bincount((flat - lo).astype(np.intp, copy=False) if lo else flat.astype(np.intp, copy=False))
        return {int(v) + lo: int(c) for v, c in enumerate(counts) if c}, []
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}, []


def _check_label_values(path: Path, arr: np.ndarray, spec: DatasetSpec, result: CaseResult) -> None:
    counts, fractional = label_value_counts(arr)
    if fractional:
        result.problems.append(f"{path}: label has non-integer values {fractional}; labels must hold whole class "
                               "numbers (re-export with nearest-neighbour interpolation, no smoothing)")
        return
    declared = set(spec.label_values)
    undeclared = sorted(v for v in counts if v not in declared)
    if undeclared:
        result.problems.append(f"{path}: label values {undeclared} are not declared in dataset.json 'labels' "
                               f"(declared: {sorted(declared)}); add them there or fix the label file")
    foreground = [v for v in counts if v != 0 and v != spec.ignore_label]
    result.has_foreground = bool(foreground)
    if not foreground:
        result.warnings.append(f"{path}: label is empty (no foreground voxels); fine for a few cases, but check "
                               "it is not a failed export")
