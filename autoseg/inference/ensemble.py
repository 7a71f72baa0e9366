"""Ensemble predictions: average the saved probabilities of several folders and write label maps.

Each input folder holds ``{case}.npz`` probabilities (:mod:`autoseg.inference.probabilities`, written
by ``autoseg predict --save-probabilities`` or by training with ``--save-probabilities`` in
``fold_k/validation``) next to the ``{case}{ending}`` segmentation whose geometry the ensemble's
label map copies. Cases are averaged over every folder that has them; a case missing from some
folder is reported as failed (an ensemble of fewer models would silently be another model).
As with ``predict``, finished cases are skipped unless ``overwrite`` and a killed run's temporary
files are removed by the next one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoseg.core.fileops import writing_into
from autoseg.cropping import uncrop
from autoseg.inference.pipeline import PredictError, PredictReport
from autoseg.inference.probabilities import (
    ProbabilitiesError,
    SavedProbabilities,
    labels_from_probabilities,
    load_probabilities,
    place,
    save_probabilities,
)
from autoseg.io import file_ending, read_geometry, strip_ending, write_like
from autoseg.paths import folder_output, same_path
from autoseg.postprocessing import apply_postprocessing
from autoseg.progress import progress_bar


def _index(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({case: npz}, {case: segmentation})`` of one folder. Two files that map to one case, or to
    case names that differ only in upper/lower case (their outputs would collide), are refused."""
    if not folder.is_dir():
        raise PredictError(f"{folder}: folder not found")
    npz, segs, seen = {}, {}, {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.name.endswith(".npz"):
            kind, case = "npz", p.name[:-4]
        elif file_ending(p):
            kind, case = "seg", strip_ending(p.name, p.name[-len(file_ending(p)):])
        else:
            continue
        twin = seen.setdefault((kind, case.casefold()), p)
        if twin != p:
            raise PredictError(f"{twin} and {p.name}: two files for one case (names that differ only in ending or "
                               "upper/lower case); keep one")
        (npz if kind == "npz" else segs)[case] = p
    return npz, segs


def average(saved: Sequence[SavedProbabilities], sources: Sequence[Path]) -> SavedProbabilities:
    """Mean probabilities over the union of the crop boxes (background outside each one's box)."""
    first = saved[0]
    for s, src in zip(saved[1:], sources[1:]):
        if s.probabilities.shape[0] != first.probabilities.shape[0] or s.original_shape != first.original_shape:
            raise ProbabilitiesError(f"{src}: {s.probabilities.shape[0]} channels on a {s.original_shape} volume, "
                                     f"{sources[0]} has {first.probabilities.shape[0]} on {first.original_shape}; "
                                     "ensemble predictions of the same cases by models of the same labels")
        if s.regions_class_order != first.regions_class_order:
            raise ProbabilitiesError(f"{src}: region order differs from {sources[0]}")
    bbox = tuple((min(s.bbox[a][0] for s in saved), max(s.bbox[a][1] for s in saved)) for a in range(3))
    total = np.zeros((first.probabilities.shape[0], *(b - a for a, b in bbox)), dtype=np.float32)
    for s in saved:
        total += place(s, bbox)
    total /= len(saved)
    return SavedProbabilities(total, bbox, first.original_shape, first.regions_class_order)


def ensemble_case(npz_paths: Sequence[Path], reference: Path, out_dir: Path, case: str,
                  regions_class_order: tuple[int, ...] | None, postprocessing=None,
                  save_probs: bool = False) -> Path:
    """Average one case's probabilities and write its label map (and ``.npz`` when asked)."""
    saved = [load_probabilities(p) for p in npz_paths]
    if regions_class_order is not None:
        saved = [SavedProbabilities(s.probabilities, s.bbox, s.original_shape, tuple(regions_class_order) or None)
                 for s in saved]
    mean = average(saved, npz_paths)
    shape = tuple(read_geometry(reference).shape[:3])
    if shape != tuple(mean.original_shape):
        raise ProbabilitiesError(f"{reference}: shape {shape} differs from the probabilities' {mean.original_shape}")
    if save_probs:
        save_probabilities(out_dir / f"{case}.npz", mean)
    labels = uncrop(labels_from_probabilities(mean.probabilities, mean.regions_class_order), mean.bbox, shape)
    if postprocessing is not None:
        labels = apply_postprocessing(labels, postprocessing)
    ending = file_ending(reference)
    return write_like(labels, reference, out_dir / f"{case}{ending}")


def ensemble_folders(in_dirs: Sequence[Path], out_dir: Path, *, regions_class_order: Sequence[int] | None = None,
                     postprocessing=None, save_probabilities: bool = False, overwrite: bool = False,
                     progress: bool = False) -> PredictReport:
    """Average the probabilities of ``in_dirs`` case by case into label maps in ``out_dir``.

    ``regions_class_order`` overrides what the files say (needed for region models' training-time
    validation files, which do not record it; ``()`` forces argmax); ``postprocessing`` (a
    :class:`~autoseg.postprocessing.PostprocessingDecision`) is applied to every label map."""
    started = time.perf_counter()
    in_dirs = [Path(d) for d in in_dirs]
    out_dir = Path(out_dir)
    if len(in_dirs) < 2:
        raise PredictError("ensembling needs at least two folders of predictions with probabilities")
    if any(same_path(out_dir, d) for d in in_dirs):
        raise PredictError(f"{out_dir}: write the ensemble to a folder other than its inputs")
    folder_output(out_dir, "-o")
    indexes = [_index(d) for d in in_dirs]
    cases = sorted(set().union(*(set(npz) for npz, _ in indexes)))
    if not cases:
        raise PredictError(f"no probabilities (.npz) in {', '.join(map(str, in_dirs))}; predict with "
                           "--save-probabilities (or train with --save-probabilities for cross-validation)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped, failed = [], [], []
    rco = tuple(regions_class_order) if regions_class_order is not None else None
    endings = {file_ending(segs[c]) for _, segs in indexes for c in cases if c in segs}
    outputs = [f"{c}{e}" for c in cases for e in endings | {".npz"}]
    with writing_into(out_dir, outputs), progress_bar("ensembling", len(cases), progress) as advance:
        for case in cases:
            missing = [str(d) for d, (npz, _) in zip(in_dirs, indexes) if case not in npz]
            refs = [segs[case] for _, segs in indexes if case in segs]
            if missing:
                failed.append((case, f"case '{case}': no probabilities in {', '.join(missing)}"))
            elif not refs:
                failed.append((case, f"case '{case}': no segmentation next to its .npz to take the geometry from"))
            elif not overwrite and (out_dir / f"{case}{file_ending(refs[0])}").is_file() and (
                    not save_probabilities or (out_dir / f"{case}.npz").is_file()):
                skipped.append(case)
            else:
                try:
                    ensemble_case([npz[case] for npz, _ in indexes], refs[0], out_dir, case, rco,
                                  postprocessing, save_probabilities)
                    written.append(case)
                except Exception as e:
                    failed.append((case, str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"))
            advance(1)
    return PredictReport(out_dir, tuple(written), tuple(skipped), tuple(failed), time.perf_counter() - started,
                         engine="ensemble")
