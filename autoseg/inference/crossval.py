"""Cross-validation results of trained models: merged folds, post-processing, best configuration.

Every fold's end-of-training validation writes ``fold_k/validation/{case}{ending}`` (and
``{case}.npz`` with ``--save-probabilities``). Merging the folds gives one prediction per training
case, in ``<model folder>/crossval_results/`` (hard links, or copies across file systems):

- ``autoseg postprocess``: decide largest-component post-processing on the merged predictions
  (:mod:`autoseg.postprocessing`) and save ``postprocessing.json`` in the model folder, where
  ``predict`` picks it up;
- ``autoseg find-best``: rank every trained model and every pair of them (probabilities averaged,
  :mod:`autoseg.inference.ensemble`) by the foreground-mean Dice over the cross-validation cases
  (ties go to the simpler candidate: a single model before an ensemble), decide post-processing for
  the winner and write ``results/<Dataset>/inference_instructions.txt`` and ``find_best.json``.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.artifacts import Artifact
from autoseg.core.fileops import atomic_write_bytes, staged_folder
from autoseg.dataset import DatasetSpec
from autoseg.evaluation.evaluate import read_label_map, run_bounded
from autoseg.evaluation.metrics import case_metrics, evaluation_targets
from autoseg.inference.ensemble import ensemble_folders
from autoseg.planning.plans import DEFAULT_PLANS_NAME
from autoseg.postprocessing import POSTPROCESSING_FILE, determine_postprocessing_from_folders
from autoseg.splits import Splits
from autoseg.workspace import ModelFolder, fold_dirs

CROSSVAL_DIR = "crossval_results"
ENSEMBLES_DIR = "ensembles"
INSTRUCTIONS = "inference_instructions.txt"
FIND_BEST_FILE = "find_best.json"


class CrossvalError(ValueError):
    """Cross-validation results that are incomplete or missing (the message says what to run)."""


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge_folds(model_dir: Path, splits: Splits, file_ending: str) -> tuple[Path, bool]:
    """Collect the validation predictions of every fold of ``splits`` into ``model_dir/crossval_results``.

    Every fold must have finished (``validation/summary.json``) with a prediction for each of its
    validation cases; if one has not, nothing is touched. The folder is built aside and replaces the
    earlier one in one step (:func:`~autoseg.core.fileops.staged_folder`), so a kill or an error leaves
    the earlier merge whole. Returns the folder and whether every case also has ``.npz``
    probabilities."""
    model_dir = Path(model_dir)
    folds = fold_dirs(model_dir)
    sources, probabilities = [], True
    for k, fold in enumerate(splits.folds):
        val = folds[k] / "validation" if k in folds else None
        if val is None or not (val / "summary.json").is_file():
            raise CrossvalError(f"{model_dir}: fold {k} has no finished validation; train it "
                                f"(`autoseg train --fold {k}`) before using cross-validation results")
        for case in fold.val:
            seg = val / f"{case}{file_ending}"
            if not seg.is_file():
                raise CrossvalError(f"{seg}: missing; rerun the validation of fold {k} (`autoseg train --fold {k} "
                                    "--resume`)")
            sources.append(seg)
            if (val / f"{case}.npz").is_file():
                sources.append(val / f"{case}.npz")
            else:
                probabilities = False
    out = model_dir / CROSSVAL_DIR
    with staged_folder(out) as new:
        for src in sources:
            _link(src, new / src.name)
    return out, probabilities


def _dice_case(ref: Path, pred: Path, targets: dict[str, tuple[int, ...]], ignore_label, force_itk: bool,
               declared: tuple[int, ...] | None = None):
    ref_seg, spacing = read_label_map(ref, force_itk, declared)
    pred_seg, _ = read_label_map(pred, force_itk, declared)
    metrics = case_metrics(ref_seg, pred_seg, spacing, targets, ignore_label=ignore_label, distances=False)
    return {name: m.dice for name, m in metrics.items()}


def mean_dice(gt_dir: Path, pred_dir: Path, cases: Sequence[str], spec: DatasetSpec, workers: int = 1,
              progress: bool = False, description: str = "scoring") -> tuple[dict[str, float | None], float]:
    """Per-target mean Dice over ``cases`` (undefined cases left out) and their foreground mean."""
    targets = evaluation_targets(spec.labels)
    e = spec.file_ending
    jobs = [(Path(gt_dir) / f"{c}{e}", Path(pred_dir) / f"{c}{e}", targets, spec.ignore_label, spec.force_itk,
             tuple(spec.label_values)) for c in cases]
    rows = list(run_bounded(_dice_case, jobs, workers, progress, description))
    means: dict[str, float | None] = {}
    for name in targets:
        values = [r[name] for r in rows if r[name] is not None and not math.isnan(r[name])]
        means[name] = float(np.mean(values)) if values else None
    defined = [v for v in means.values() if v is not None]
    return means, float(np.mean(defined)) if defined else math.nan


def decide_postprocessing(folder: Path, crossval: Path, gt_dir: Path, spec: DatasetSpec, workers: int = 1,
                          progress: bool = False) -> Path:
    """Decide post-processing on the merged predictions in ``crossval``; save it in ``folder``."""
    decision = determine_postprocessing_from_folders(gt_dir, crossval, spec, workers=workers, progress=progress)
    return decision.save(Path(folder) / POSTPROCESSING_FILE)


# --- best configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CandidateScore:
    """One single model or ensemble and its cross-validation Dice."""

    name: str
    members: tuple[str, ...]  # model folder names
    mean_dice: dict[str, float | None]
    foreground_dice: float


@dataclass(frozen=True)
class FindBestResult(Artifact):
    """``find_best.json``: every candidate's score, the winner and how to predict with it."""

    KIND = "find_best"
    SCHEMA_VERSION = 1

    dataset_name: str
    candidates: tuple[CandidateScore, ...]
    best: str
    members: tuple[str, ...]
    postprocessing: str  # path of the winner's postprocessing.json
    commands: tuple[str, ...]
    notes: tuple[str, ...] = ()  # models left out and why


def score_candidates(results_dir: Path, merged: dict[str, tuple[Path, bool]], splits: Splits, gt_dir: Path,
                     spec: DatasetSpec, ensembles: bool = True, workers: int = 1,
                     progress: bool = False) -> list[tuple[CandidateScore, Path]]:
    """Score each model (name -> merged folder, has probabilities; see :func:`merge_folds`) and, with
    ``ensembles``, each pair of models that saved probabilities. Returns ``(score, folder of the
    merged predictions)`` pairs, single models first."""
    cases = sorted({c for f in splits.folds for c in f.val})
    out = []
    for name, (folder, _) in merged.items():
        means, fg = mean_dice(gt_dir, folder, cases, spec, workers, progress, f"scoring {name}")
        out.append((CandidateScore(name, (name,), means, fg), folder))
    if not ensembles:
        return out
    rco = tuple(spec.regions_class_order) if spec.has_regions else ()
    with_probs = [n for n, (_, probs) in merged.items() if probs]
    for a, b in itertools.combinations(with_probs, 2):
        name = f"{a}--{b}"
        folder = Path(results_dir) / ENSEMBLES_DIR / name / CROSSVAL_DIR
        report = ensemble_folders([merged[a][0], merged[b][0]], folder, regions_class_order=rco, overwrite=True,
                                  progress=progress)
        if report.failed:
            raise CrossvalError(f"ensembling {name} failed for {len(report.failed)} case(s): {report.failed[0][1]}")
        means, fg = mean_dice(gt_dir, folder, cases, spec, workers, progress, f"scoring {name}")
        out.append((CandidateScore(name, (a, b), means, fg), folder))
    return out


def pick_best(scored: Sequence[CandidateScore]) -> CandidateScore:
    """Highest foreground-mean Dice; on a tie the earlier (simpler) candidate."""
    best = scored[0]
    for s in scored[1:]:
        if not math.isnan(s.foreground_dice) and (math.isnan(best.foreground_dice) or s.foreground_dice > best.foreground_dice):
            best = s
    return best


def predict_commands(dataset: str, best: CandidateScore, models: dict[str, ModelFolder],
                     postprocessing: Path) -> tuple[str, ...]:
    """The shell commands that predict with ``best`` (INPUT_FOLDER / OUTPUT_FOLDER to fill in)."""
    def other_plans(m: ModelFolder) -> bool:
        return m.plans_name != DEFAULT_PLANS_NAME

    def predict(m: ModelFolder, out: str, probs: bool) -> str:
        return (f"autoseg predict -i INPUT_FOLDER -o {out} -d {dataset} --config {m.config} --arch {m.arch}"
                + (f" --plans {m.plans_name}" if other_plans(m) else "") + (" --save-probabilities" if probs else ""))

    if len(best.members) == 1:
        return (predict(models[best.members[0]], "OUTPUT_FOLDER", False),)
    outs = [f"OUTPUT_FOLDER_{m.config}_{m.arch}" + (f"_{m.plans_name}" if other_plans(m) else "")
            for m in (models[n] for n in best.members)]
    return tuple(predict(models[n], o, True) for n, o in zip(best.members, outs)) + (
        f"autoseg ensemble {' '.join(outs)} -o OUTPUT_FOLDER --postprocessing {postprocessing}",)


def write_instructions(path: Path, result: FindBestResult) -> Path:
    lines = [f"Best on cross-validation for {result.dataset_name}: {result.best}", "",
             "Foreground-mean Dice of every candidate (merged cross-validation predictions):"]
    for c in sorted(result.candidates, key=lambda c: -c.foreground_dice if not math.isnan(c.foreground_dice) else 0):
        lines.append(f"  {c.foreground_dice:.4f}  {c.name}")
    lines += ["", f"Post-processing: {result.postprocessing}", "", "Predict with:"]
    lines += [f"  {cmd}" for cmd in result.commands]
    if result.notes:
        lines += ["", "Notes:"] + [f"  {n}" for n in result.notes]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
    return Path(path)
