"""Evaluate a folder of predicted label maps against a folder of references.

Files are matched by case name (``{case}{file_ending}``, ending from ``dataset.json``); every pair
must agree in geometry. Results go to ``summary.json`` (:class:`EvaluationSummary`) and
``summary.csv`` (one row per case and class/region). Metric conventions: :mod:`.metrics`.
"""

from __future__ import annotations

import csv
import io
import math
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator

import numpy as np

from autoseg.artifacts import Artifact
from autoseg.core.fileops import atomic_write_bytes, writing_into
from autoseg.core.processes import worker_context
from autoseg.dataset import DatasetSpec
from autoseg.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    LabelMetrics,
    MeanMetrics,
    case_metrics,
    evaluation_targets,
    foreground_mean,
    mean_metrics,
)
from autoseg.integrity import label_value_counts
from autoseg.io import ImageReadError, read_geometry
from autoseg.io.images import DamagedGzipError, nonfinite_problem, read_volume_verified
from autoseg.paths import folder_output
from autoseg.progress import progress_bar

CONVENTIONS = (
    "Dice/IoU/HD95/NSD are null when reference and prediction are both empty and left out of means; "
    "when only one is empty: Dice 0, IoU 0, NSD 0, HD95 = image diagonal in mm. HD95 = max of the two "
    "directed 95th percentiles of surface-voxel distances (mm); NSD counts surface voxels within the "
    "tolerance (inclusive). Voxels labelled 'ignore' in the reference are not counted."
)


class EvaluationError(ValueError):
    """Reference and prediction folders cannot be evaluated; the message names the files and the fix."""


@dataclass(frozen=True)
class EvaluationSummary(Artifact):
    """``summary.json``: per-case metrics, per-target means and the foreground mean."""

    KIND = "evaluation_summary"
    SCHEMA_VERSION = 1

    reference_dir: str
    prediction_dir: str
    tolerance_mm: float
    targets: dict[str, tuple[int, ...]]  # name -> label values (one for a class, several for a region)
    cases: dict[str, dict[str, LabelMetrics]]  # case -> target name -> metrics
    mean: dict[str, MeanMetrics]  # target name -> mean over cases
    foreground_mean: MeanMetrics  # mean of the target means
    missing_predictions: tuple[str, ...] = ()  # reference cases without a prediction (allow_missing)
    conventions: str = CONVENTIONS


def match_cases(gt_dir: Path, pred_dir: Path, file_ending: str) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """Pair reference and prediction files by case name. Returns ``{case: (ref, pred)}`` and the
    reference cases that have no prediction. Two files of one folder whose case names differ only in
    upper/lower case (``x.nii.gz``, ``X.NII.GZ``) are refused, naming both, instead of one being dropped."""
    def listing(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: folder not found")
        files: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.name.lower().endswith(file_ending) and not p.name.startswith("."):
                twin = files.setdefault(p.name[: -len(file_ending)].casefold(), p)
                if twin != p:
                    raise EvaluationError(f"{twin} and {p.name}: case names that differ only in upper/lower case; "
                                          "only one of them can be scored (and only one survives on macOS or "
                                          "Windows); keep one")
        return {p.name[: -len(file_ending)]: p for p in files.values()}

    refs, preds = listing(Path(gt_dir)), listing(Path(pred_dir))
    if not refs:
        raise EvaluationError(f"{gt_dir}: no reference files ending in '{file_ending}' (file_ending of dataset.json)")
    pairs = {c: (refs[c], preds[c]) for c in refs if c in preds}
    missing = [c for c in refs if c not in preds]
    return pairs, missing


def check_geometry(pairs: dict[str, tuple[Path, Path]], force_itk: bool = False) -> None:
    """Raise :class:`EvaluationError` listing every pair whose headers disagree (shape, spacing,
    origin or direction). Reads headers only."""
    problems = []
    for ref, pred in pairs.values():
        try:
            diff = read_geometry(ref, force_itk).mismatches(read_geometry(pred, force_itk))
        except ImageReadError as e:
            problems.append(str(e))
            continue
        if diff:
            problems.append(f"{pred}: geometry differs from reference {ref}: {'; '.join(diff)}; predict again "
                            "from the original image so the output keeps its geometry")
    if problems:
        raise EvaluationError("cannot evaluate:\n" + "\n".join(f"  - {p}" for p in problems))


def read_label_map(path: Path, force_itk: bool = False,
                   declared: Collection[int] | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
    """An integer label map ``(X, Y, Z)`` and its spacing. Errors: a damaged ``.gz`` (checksum
    verified), NaN/inf or fractional values, and -- when ``declared`` is given -- any value not in it
    (such voxels would silently drop out of every score)."""
    try:
        arr, geometry = read_volume_verified(path, force_itk)  # a .gz decompressed once, checksum included
    except DamagedGzipError as e:
        raise EvaluationError(str(e)) from None
    if arr.ndim != 3:
        raise EvaluationError(f"{path}: expected a 3D label map, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise EvaluationError(f"{path}: unsupported voxel type {arr.dtype}; expected an integer label map")
    problem = nonfinite_problem(path, arr, np.float64)
    if problem:
        raise EvaluationError(problem)
    counts, fractional = label_value_counts(arr)
    if fractional:
        raise EvaluationError(f"{path}: holds fractional values {fractional}; expected an integer label map "
                              "(save predictions as labels, probabilities go to .npz)")
    undeclared = sorted(v for v in counts if declared is not None and v not in declared)
    if undeclared:
        n = sum(counts[v] for v in undeclared)
        raise EvaluationError(f"{path}: label values {undeclared} ({n} voxels) are not declared in dataset.json "
                              f"'labels' (declared: {sorted(declared)}), so they would not be scored; fix the file "
                              "or declare them (-d names the dataset.json)")
    return arr.astype(np.int32, copy=False), geometry.spacing[:3]


def _evaluate_pair(case: str, ref: Path, pred: Path, targets: dict[str, tuple[int, ...]], tolerance_mm: float,
                   ignore_label: int | None, force_itk: bool,
                   declared: tuple[int, ...]) -> tuple[str, dict[str, LabelMetrics] | None, list[str]]:
    """``(case, metrics, [])``, or ``(case, None, problems)`` naming the files when either cannot be scored."""
    maps, problems = [], []
    for path in (ref, pred):
        try:
            maps.append(read_label_map(path, force_itk, declared))
        except (EvaluationError, ImageReadError) as e:
            problems.append(str(e))
    if problems:
        return case, None, problems
    (ref_seg, spacing), (pred_seg, _) = maps
    if ref_seg.shape != pred_seg.shape:
        return case, None, [f"{pred}: shape {pred_seg.shape} differs from reference {ref} {ref_seg.shape}"]
    return case, case_metrics(ref_seg, pred_seg, spacing, targets, tolerance_mm, ignore_label), []


# A spawned worker costs 1-3 s to start (imports), as much as evaluating about ten 128^3 cases with
# seven classes; each worker must get at least this many cases, else the jobs run in this process.
MIN_JOBS_PER_WORKER = 4


def run_bounded(fn: Callable, jobs: Iterable[tuple], workers: int, progress: bool = False,
                description: str = "evaluating") -> Iterator:
    """Yield ``fn(*job)`` for every job, on at most ``workers`` processes with at most twice that many
    jobs in flight (results in completion order). Few jobs or ``workers <= 1`` run in this process."""
    jobs = list(jobs)
    workers = min(workers, len(jobs) // MIN_JOBS_PER_WORKER)
    with progress_bar(description, len(jobs), progress) as advance:
        if workers <= 1:
            for job in jobs:
                yield fn(*job)
                advance(1)
            return
        ctx = worker_context()  # no plain fork: safe when the caller has threads (torch, progress bar)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending = set()
            for job in jobs:
                pending.add(pool.submit(fn, *job))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
                        advance(1)
            for f in wait(pending)[0]:
                yield f.result()
                advance(1)


def evaluate_folders(gt_dir: Path, pred_dir: Path, spec: DatasetSpec, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                     workers: int = 1, progress: bool = False, output_dir: Path | None = None,
                     allow_missing: bool = False) -> EvaluationSummary:
    """Evaluate every reference case in ``gt_dir`` against ``pred_dir`` and write ``summary.json`` and
    ``summary.csv`` to ``output_dir`` (default ``pred_dir``).

    Reference cases without a prediction are an error unless ``allow_missing`` (then they are listed in
    the summary). Predictions without a reference are ignored."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    if tolerance_mm < 0 or not math.isfinite(tolerance_mm):
        raise EvaluationError(f"--tolerance-mm must be a finite number of mm >= 0, got {tolerance_mm}")
    folder_output(Path(output_dir) if output_dir is not None else pred_dir, "-o")  # before the slow part
    pairs, missing = match_cases(gt_dir, pred_dir, spec.file_ending)
    if missing and not allow_missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise EvaluationError(f"{pred_dir}: no prediction for {len(missing)} reference case(s) of {gt_dir}: "
                              f"{shown}; predict them, or pass allow_missing (--allow-missing) to skip them")
    if not pairs:
        raise EvaluationError(f"{pred_dir}: no prediction matches a reference case of {gt_dir} "
                              f"(names must be {{case}}{spec.file_ending})")
    check_geometry(pairs, spec.force_itk)
    targets = evaluation_targets(spec.labels)
    declared = tuple(spec.label_values)
    jobs = [(c, r, p, targets, tolerance_mm, spec.ignore_label, spec.force_itk, declared)
            for c, (r, p) in pairs.items()]
    results, problems = {}, {}
    for case, metrics, case_problems in run_bounded(_evaluate_pair, jobs, workers, progress):
        results[case], problems[case] = metrics, case_problems
    found = [p for c in sorted(problems) for p in problems[c]]
    if found:  # every file that cannot be scored, before anything is written
        raise EvaluationError("cannot evaluate:\n" + "\n".join(f"  - {p}" for p in found))
    cases = {c: results[c] for c in sorted(results)}
    means = {name: mean_metrics([cases[c][name] for c in cases]) for name in targets}
    summary = EvaluationSummary(
        reference_dir=str(gt_dir), prediction_dir=str(pred_dir), tolerance_mm=float(tolerance_mm),
        targets=targets, cases=cases, mean=means, foreground_mean=foreground_mean(means),
        missing_predictions=tuple(missing),
    )
    out = Path(output_dir) if output_dir is not None else pred_dir
    with writing_into(out, ["summary.json", "summary.csv"]):  # removes what a killed run left half written
        summary.save(out / "summary.json")
        write_csv(summary, out / "summary.csv")
    return summary


CSV_COLUMNS = ("case", "label") + tuple(f.name for f in fields(LabelMetrics))


def write_csv(summary: EvaluationSummary, path: Path) -> Path:
    """One row per case and target; undefined values are empty cells. Written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case, per_target in summary.cases.items():
        for name, m in per_target.items():
            values = [getattr(m, f) for f in CSV_COLUMNS[2:]]
            writer.writerow([case, name] + ["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                                            for v in values])
    atomic_write_bytes(Path(path), buf.getvalue().encode())
    return Path(path)


def summary_table(summary: EvaluationSummary):
    """A rich table of the per-target means and the foreground mean."""
    from rich.table import Table

    def fmt(v: float | None, digits: int = 4) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    table = Table(title=f"{len(summary.cases)} case(s), NSD tolerance {summary.tolerance_mm:g} mm")
    for col in ("label", "Dice", "IoU", "HD95 mm", "NSD", "cases"):
        table.add_column(col, justify="left" if col == "label" else "right")
    rows = list(summary.mean.items()) + [("foreground mean", summary.foreground_mean)]
    for i, (name, m) in enumerate(rows):
        table.add_row(name, fmt(m.dice), fmt(m.iou), fmt(m.hd95_mm, 2), fmt(m.nsd), str(m.n_cases),
                      end_section=i == len(rows) - 2)
    return table


def print_summary(summary: EvaluationSummary, console=None) -> None:
    from rich.console import Console

    (console or Console()).print(summary_table(summary))
