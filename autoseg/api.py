"""One function per command, every path explicit (the CLI resolves paths and calls these).

``plan`` runs the first pipeline stage for a raw dataset::

    integrity checks (nothing is written when they fail)
      -> preprocessed/<Dataset>/fingerprint.json, source.json
      -> preprocessed/<Dataset>/<plans_name>_<data_identifier>/   (preprocessed cases; disk space checked first)
      -> preprocessed/<Dataset>/plans.json (plans_<preset>.json for other planner presets; several
         plans of one dataset live side by side), splits.json, dataset.json (copy of the raw one)

A plans file is written only once every case is preprocessed, so its presence means a finished plan.

Every artifact is written atomically; rerunning with unchanged raw data reuses the fingerprint and
skips finished cases. ``source.json`` records where the raw data lives (it may be outside
``<workdir>/raw``) so later commands can find it with :func:`find_raw_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from autoseg import jsonfiles
from autoseg.artifacts import Artifact, ArtifactError
from autoseg.core.fileops import atomic_write_bytes, ensure_writable_dir
from autoseg.dataset import Case
from autoseg.paths import PathError, inside
from autoseg.splits import RULE_USER, Fold, Splits, make_splits
from autoseg.workspace import Workspace, WorkspaceError

FINGERPRINT_SEED = 1234  # nnU-Net seeds the foreground intensity sampling with 1234
USER_SPLITS_NAMES = ("splits.json", "splits_final.json")  # looked up in the raw dataset folder


@dataclass(frozen=True)
class DatasetSource(Artifact):
    """``source.json``: the raw dataset folder a preprocessed dataset was made from, and a
    signature of its files (names, sizes, modification times) to notice when they change."""

    KIND = "source"
    SCHEMA_VERSION = 1

    raw_dir: str
    signature: str


@dataclass(frozen=True)
class PlanResult:
    """What ``plan`` did and where its artifacts are. Paths are None when not written
    (``checked_only``)."""

    dataset_name: str
    raw_dir: Path
    n_cases: int
    checked_only: bool
    warnings: tuple[str, ...] = ()
    preprocessed_dir: Path | None = None
    fingerprint: Path | None = None
    plans: Path | None = None
    splits: Path | None = None
    dataset_json: Path | None = None
    source: Path | None = None
    data_folders: dict[str, Path] | None = None  # configuration -> preprocessed cases
    computed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    fingerprint_reused: bool = False
    user_splits: bool = False


def raw_signature(raw_dir: Path, cases: list[Case]) -> str:
    """SHA-256 over dataset.json's bytes and the relative path, size and mtime of every case file."""
    raw_dir = Path(raw_dir)
    h = hashlib.sha256((raw_dir / "dataset.json").read_bytes())
    for case in cases:
        for p in list(case.images) + ([case.label] if case.label is not None else []):
            st = Path(p).stat()
            rel = os.path.relpath(p, raw_dir)
            h.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def find_raw_dir(workspace: Workspace, dataset_name: str) -> Path:
    """The raw folder of a planned dataset: from its ``source.json``, else ``<workdir>/raw/<name>``."""
    source = workspace.preprocessed_dir(dataset_name) / "source.json"
    if source.is_file():
        raw = Path(DatasetSource.load(source).raw_dir)
        if raw.is_dir():
            return raw
        raise WorkspaceError(f"{source}: the raw dataset {raw} it points to is gone; restore it or rerun "
                             f"`autoseg plan` on the dataset's new location")
    raw = workspace.raw / dataset_name
    if raw.is_dir():
        return raw
    raise WorkspaceError(f"raw data of {dataset_name} not found ({source} missing and no {raw}); "
                         f"rerun `autoseg plan` on the raw dataset")


def _check(raw_dir: Path, workers: int, progress: bool):
    from autoseg.integrity import check_dataset
    from autoseg.jsonfiles import InputWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        spec, cases = check_dataset(raw_dir, workers=workers, progress=progress)
    found = []
    for w in caught:
        if issubclass(w.category, InputWarning):
            found.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return spec, cases, tuple(found)


def _fingerprint(spec, cases, dataset_dir: Path, signature: str, workers: int, seed: int, progress: bool,
                 fresh: bool):
    """Reuse ``fingerprint.json`` when the raw files are unchanged, else extract and save it."""
    from autoseg.fingerprint import Fingerprint, extract_fingerprint

    fp_path, src_path = dataset_dir / "fingerprint.json", dataset_dir / "source.json"
    if not fresh and fp_path.is_file() and src_path.is_file():
        try:
            old_source, old = DatasetSource.load(src_path), Fingerprint.load(fp_path)
            if old_source.signature == signature and old.seed == seed:
                return old, True
        except ArtifactError:
            pass
    fingerprint = extract_fingerprint(spec, cases, workers=workers, seed=seed, progress=progress)
    fingerprint.save(fp_path)
    return fingerprint, False


def planner_settings(planner: str | Path, gpu_memory_gb: float | None = None):
    """The planner preset (name or .toml path) with an optional GPU memory override."""
    from autoseg.planning.settings import load_preset

    settings = load_preset(planner)
    if gpu_memory_gb is not None:
        if not gpu_memory_gb > 0:
            raise ValueError(f"--gpu-memory-gb must be positive, got {gpu_memory_gb}")
        settings = settings.replace(gpu_memory_gb=float(gpu_memory_gb))
    return settings


def planner_architecture(settings):
    """The registry entry of the architecture a preset plans for; an unknown name is a preset error
    that lists the choices."""
    from autoseg.models import ARCHITECTURES, get_architecture
    from autoseg.planning.settings import PresetError

    if settings.architecture not in ARCHITECTURES:
        raise PresetError(f"planner preset '{settings.preset}': architecture '{settings.architecture}' is unknown; "
                          f"choices: {', '.join(ARCHITECTURES)}")
    return get_architecture(settings.architecture)


def _parse_user_splits(path: Path) -> Splits:
    """Our splits artifact, or nnU-Net's ``splits_final.json`` (a list of {"train", "val"})."""
    try:
        data = jsonfiles.loads(path.read_text(encoding="utf-8-sig"), path)  # a byte-order mark is accepted
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: cannot be read as JSON ({e}); fix or remove it") from None
    if isinstance(data, list):
        try:
            folds = tuple(Fold(train=tuple(f["train"]), val=tuple(f["val"])) for f in data)
        except (TypeError, KeyError):
            raise ArtifactError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} folds") from None
        return Splits(folds=folds, seed=-1, user_provided=True, rule=RULE_USER)
    splits = Splits.from_dict(data, source=str(path))
    return Splits(folds=splits.folds, seed=splits.seed, user_provided=True, rule=RULE_USER)


def _validate_splits(splits: Splits, case_ids: list[str], source: Path) -> None:
    known = set(case_ids)
    unknown = sorted({c for f in splits.folds for c in f.train + f.val} - known)
    if not splits.folds:
        raise ArtifactError(f"{source}: holds no folds; add folds or delete it to get 5 automatic folds")
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ArtifactError(f"{source}: names {len(unknown)} case(s) that are not training cases of the dataset "
                            f"({shown}); fix the file or delete it to get automatic folds")
    for k, f in enumerate(splits.folds):
        if not f.train or not f.val:
            raise ArtifactError(f"{source}: fold {k} has an empty train or val list; fix the file")


def resolve_splits(raw_dir: Path, dataset_dir: Path, case_ids: list[str]) -> Splits:
    """The folds to use, first found of: the user's ``splits.json`` / ``splits_final.json`` in the raw
    folder, nnU-Net's ``splits_final.json`` in the preprocessed dataset folder, the existing
    ``splits.json`` (user-provided, or automatic over the same cases: runs already trained on it keep
    their folds), else nnU-Net's five folds (:func:`~autoseg.splits.make_splits`)."""
    user_files = [Path(raw_dir) / name for name in USER_SPLITS_NAMES] + [Path(dataset_dir) / "splits_final.json"]
    for path in user_files:
        if path.is_file():
            splits = _parse_user_splits(path)
            _validate_splits(splits, case_ids, path)
            return splits
    existing = Path(dataset_dir) / "splits.json"
    if existing.is_file():
        try:
            old = Splits.load(existing)
        except ArtifactError:
            old = None
        if old is not None and old.user_provided:
            _validate_splits(old, case_ids, existing)
            return old
        if old is not None and old.folds and old.case_ids() == set(case_ids):
            return old
    return make_splits(case_ids)


def _refuse_writing_into_raw(dataset_dir: Path, raw_dir: Path) -> None:
    """The preprocessed folder may not be the raw dataset, hold it, or lie in one of its data folders
    (a workdir elsewhere inside the raw dataset, e.g. ``./autoseg_work`` run from there, is fine)."""
    data_folders = [raw_dir / sub for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")]
    if inside(raw_dir, dataset_dir) or any(inside(dataset_dir, folder) for folder in data_folders):
        raise PathError(f"{dataset_dir}: the preprocessed data would be written over or into the raw dataset "
                        f"{raw_dir}; choose another --workdir")


def plan(raw_dir: Path, workspace: Workspace, planner: str | Path = "default", gpu_memory_gb: float | None = None,
         configs: list[str] | None = None, check_only: bool = False, workers: int | None = None,
         progress: bool = True, seed: int = FINGERPRINT_SEED, fresh: bool = False) -> PlanResult:
    """Check, fingerprint, plan and preprocess the raw dataset at ``raw_dir`` into ``workspace``.

    ``configs`` limits preprocessing to some configurations (plans.json always holds all);
    ``workers`` bounds the process pools (default: CPU count); ``fresh`` recomputes the
    fingerprint even when the raw files look unchanged. The plans are named after the preset
    (:func:`~autoseg.planning.plans.plans_name_for`); plans of other presets are left as they are."""
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.core.runlock import RunLock

    from autoseg.planning.planner import plan_experiment, unplanned_configurations
    from autoseg.planning.plans import plans_name_for, plans_path

    raw_dir = Path(raw_dir).resolve()
    settings = planner_settings(planner, gpu_memory_gb)  # a bad preset fails before any slow work
    arch = planner_architecture(settings)
    plans_name = plans_name_for(settings.preset)
    n_workers = max(1, workers or os.cpu_count() or 1)
    spec, cases, found_warnings = _check(raw_dir, n_workers, progress)
    name = spec.name
    if check_only:
        return PlanResult(name, raw_dir, len(cases), True, found_warnings)
    _refuse_writing_into_raw(workspace.preprocessed_dir(name), raw_dir)
    dataset_dir = ensure_writable_dir(workspace.preprocessed_dir(name), "preprocessed data folder (--workdir)")
    # one plan per dataset at a time: a second one would delete the first one's temporary files
    with RunLock(dataset_dir, doing="planned"):
        signature = raw_signature(raw_dir, cases)
        fingerprint, reused = _fingerprint(spec, cases, dataset_dir, signature, n_workers, seed, progress, fresh)
        source = DatasetSource(raw_dir=str(raw_dir), signature=signature).save(dataset_dir / "source.json")
        plans = plan_experiment(fingerprint, spec, settings, plans_name, arch=arch)
        unplanned = unplanned_configurations(plans)
        found_warnings = (*found_warnings, *(f"configuration {c} is not planned: {why}" for c, why in unplanned.items()))
        if configs:
            unknown = [c for c in configs if c not in plans.configurations]
            if unknown:
                why = "".join(f" ({c}: {unplanned[c]})" for c in unknown if c in unplanned)
                raise ValueError(f"configuration(s) {', '.join(unknown)} not planned for {name}{why}; "
                                 f"choices: {', '.join(plans.configurations)}")
        # plans.json and splits.json are written after the cases, so a failed preprocessing (e.g. the disk
        # check) leaves no plans.json a later `autoseg train` could take for a finished plan
        result = preprocess_dataset(spec, cases, plans, dataset_dir, configs=configs or None, workers=n_workers,
                                    progress=progress, fingerprint=fingerprint, source=signature)
        plans_file = plans.save(plans_path(dataset_dir, plans.plans_name))
        splits = resolve_splits(raw_dir, dataset_dir, [c.case_id for c in cases])
        splits_path = splits.save(dataset_dir / "splits.json")
        dataset_json = dataset_dir / "dataset.json"
        atomic_write_bytes(dataset_json, (raw_dir / "dataset.json").read_bytes())
    return PlanResult(
        dataset_name=name, raw_dir=raw_dir, n_cases=len(cases), checked_only=False, warnings=found_warnings,
        preprocessed_dir=dataset_dir, fingerprint=dataset_dir / "fingerprint.json", plans=plans_file,
        splits=splits_path, dataset_json=dataset_json, source=source, data_folders=result.folders,
        computed=result.computed, skipped=result.skipped, fingerprint_reused=reused,
        user_splits=splits.user_provided)


def convert_msd(task_dir: Path, out_dir: Path, dataset_id: int | None = None, overwrite: bool = False) -> Path:
    """Convert a Medical Segmentation Decathlon task folder into a raw dataset under ``out_dir``."""
    from autoseg.msd import convert_msd as _convert

    return _convert(Path(task_dir), Path(out_dir), dataset_id=dataset_id, overwrite=overwrite)


def demo_data(out_dir: Path, n_cases: int = 8, seed: int = 0, modality: str = "CT", anisotropic: bool = False,
              n_channels: int = 1, regions: bool = False, n_test: int = 0, name: str | None = None,
              overwrite: bool = False) -> Path:
    """Write a small synthetic dataset into ``out_dir`` (a folder of datasets, e.g. ``<workdir>/raw``)."""
    from autoseg.toy import make_toy_dataset

    return make_toy_dataset(Path(out_dir), n_cases=n_cases, seed=seed, modality=modality, n_channels=n_channels,
                            anisotropic=anisotropic, regions=regions, n_test=n_test, name=name,
                            overwrite=overwrite)
