"""One function per command, every path explicit (the CLI resolves the workspace and calls these).

Each function puts its command together from the stages (planning and preprocessing,
:mod:`autoseg.training.session`, :mod:`autoseg.inference`, :mod:`autoseg.evaluation`); the stages that
need torch are imported inside the commands that use them, so ``autoseg plan`` never loads torch.
Every folder comes from the :class:`~autoseg.workspace.Workspace`.

``plan`` runs the first pipeline stage for a raw dataset::

    integrity checks (nothing is written when they fail)
      -> preprocessed/<Dataset>/fingerprint.json, source.json
      -> preprocessed/<Dataset>/<plans_name>_<data_identifier>/   (preprocessed cases; disk space checked first)
      -> preprocessed/<Dataset>/plans.json (plans_<preset>.json for other planner presets; several
         plans of one dataset live side by side), splits.json, dataset.json (copy of the raw one)

A plans file is written only once every case is preprocessed, so its presence means a finished plan.

Every artifact is written atomically; rerunning with unchanged raw data reuses the fingerprint and
skips finished cases. ``source.json`` records where the raw data lives (it may be outside
``<workdir>/raw``) so later commands can find it (:meth:`~autoseg.workspace.Workspace.raw_dir`).

A trained model is named by a :class:`~autoseg.inference.choice.ModelChoice`: a dataset (its only
trained configuration, or the one ``config``/``arch``/``plans`` pick) or a model folder / fold folder /
exported ``.zip`` (installed into the workspace on first use).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.artifacts import ArtifactError
from autoseg.core.fileops import atomic_write_bytes, ensure_writable_dir
from autoseg.core.processes import preload_workers
from autoseg.core.runlock import RunLock
from autoseg.dataset import Case, DatasetError, DatasetSpec, list_cases
from autoseg.fingerprint import Fingerprint, extract_fingerprint
from autoseg.inference import crossval as cv
from autoseg.inference.choice import ModelChoice, PredictOptions
from autoseg.inference.ensemble import ensemble_folders
from autoseg.inference.nnunet_import import install_nnunet, is_nnunet_folder, is_nnunet_zip
from autoseg.inference.outputs import OutputContext
from autoseg.inference.pipeline import predict_folder
from autoseg.inference.predictor import PredictorError, find_model_dir, load_predictor, resolve_trained
from autoseg.inference.sources import SourceRequest, needs_staging, predict_sources
from autoseg.integrity import check_and_fingerprint, check_dataset
from autoseg.io.segments import DESCRIPTIONS_KEY, label_values, segments_of
from autoseg.jsonfiles import InputWarning
from autoseg.models import ARCHITECTURES, get_architecture
from autoseg.msd import convert_msd as convert_msd_task
from autoseg.planning.planner import plan_experiment, unplanned_configurations
from autoseg.planning.plans import Plans, plans_name_for
from autoseg.paths import PathError, inside
from autoseg.planning.settings import PresetError, load_preset
from autoseg.postprocessing import PostprocessingDecision
from autoseg.preprocessing import preprocess_dataset
from autoseg.splits import Splits, resolve_splits
from autoseg.toy import make_toy_dataset
from autoseg.workspace import DatasetSource, Workspace, names_dataset

if TYPE_CHECKING:  # the session imports torch; `train` imports it when called
    from autoseg.training.session import TrainRequest

FINGERPRINT_SEED = 1234  # nnU-Net seeds the foreground intensity sampling with 1234


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


def _check(raw_dir: Path, workers: int, progress: bool, fingerprint_seed: int | None = None):
    """Check the raw dataset; with ``fingerprint_seed``, fingerprint it in the same pass (else the
    fingerprint returned is None)."""
    fingerprint = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        if fingerprint_seed is None:
            spec, cases = check_dataset(raw_dir, workers=workers, progress=progress)
        else:
            spec, cases, fingerprint = check_and_fingerprint(raw_dir, workers=workers, progress=progress,
                                                             seed=fingerprint_seed)
    found = []
    for w in caught:
        if issubclass(w.category, InputWarning):
            found.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return spec, cases, tuple(found), fingerprint


def _saved_fingerprint(workspace: Workspace, name: str, signature: str, seed: int) -> Fingerprint | None:
    """``fingerprint.json`` when it was made with ``seed`` from raw files whose signature is ``signature``."""
    fp_path, src_path = workspace.fingerprint_file(name), workspace.source_file(name)
    if fp_path.is_file() and src_path.is_file():
        try:
            old_source, old = DatasetSource.load(src_path), Fingerprint.load(fp_path)
            if old_source.signature == signature and old.seed == seed:
                return old
        except ArtifactError:
            pass
    return None


def _reusable_before_check(raw_dir: Path, workspace: Workspace, seed: int) -> bool:
    """Whether ``plan`` is likely to reuse the saved fingerprint (the raw files' signature, from a cheap
    listing, matches it): then the checks do not fingerprint. Anything unreadable here is left to the
    checks to report."""
    try:
        spec = DatasetSpec.load(raw_dir)
        cases, problems = list_cases(raw_dir, spec)
        return not problems and _saved_fingerprint(workspace, spec.name, raw_signature(raw_dir, cases),
                                                   seed) is not None
    except (DatasetError, OSError, ValueError):
        return False


def _fingerprint(spec, cases, workspace: Workspace, signature: str, workers: int, seed: int, progress: bool,
                 fresh: bool, computed: Fingerprint | None = None):
    """The fingerprint ``computed`` with the checks, else ``fingerprint.json`` when the raw files are
    unchanged, else extracted now; saved unless reused."""
    old = None if fresh or computed is not None else _saved_fingerprint(workspace, spec.name, signature, seed)
    if old is not None:
        return old, True
    fingerprint = computed or extract_fingerprint(spec, cases, workers=workers, seed=seed, progress=progress)
    fingerprint.save(workspace.fingerprint_file(spec.name))
    return fingerprint, False


def planner_settings(planner: str | Path, gpu_memory_gb: float | None = None):
    """The planner preset (name or .toml path) with an optional GPU memory override."""
    settings = load_preset(planner)
    if gpu_memory_gb is not None:
        if not gpu_memory_gb > 0:
            raise ValueError(f"--gpu-memory-gb must be positive, got {gpu_memory_gb}")
        settings = settings.replace(gpu_memory_gb=float(gpu_memory_gb))
    return settings


def planner_architecture(settings):
    """The registry entry of the architecture a preset plans for; an unknown name is a preset error
    that lists the choices."""
    if settings.architecture not in ARCHITECTURES:
        raise PresetError(f"planner preset '{settings.preset}': architecture '{settings.architecture}' is unknown; "
                          f"choices: {', '.join(ARCHITECTURES)}")
    return get_architecture(settings.architecture)


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
    raw_dir = Path(raw_dir).resolve()
    settings = planner_settings(planner, gpu_memory_gb)  # a bad preset fails before any slow work
    arch = planner_architecture(settings)
    plans_name = plans_name_for(settings.preset)
    n_workers = max(1, workers or os.cpu_count() or 1)
    # the three pools below fork their workers from one server that imported these modules once
    preload_workers(["autoseg.integrity", "autoseg.fingerprint", "autoseg.preprocessing"])
    # checks and fingerprint read each file once together, unless the saved fingerprint will be reused
    fingerprint_now = not check_only and (fresh or not _reusable_before_check(raw_dir, workspace, seed))
    spec, cases, found_warnings, computed = _check(raw_dir, n_workers, progress, seed if fingerprint_now else None)
    name = spec.name
    if check_only:
        return PlanResult(name, raw_dir, len(cases), True, found_warnings)
    _refuse_writing_into_raw(workspace.preprocessed_dir(name), raw_dir)
    dataset_dir = ensure_writable_dir(workspace.preprocessed_dir(name), "preprocessed data folder (--workdir)")
    # one plan per dataset at a time: a second one would delete the first one's temporary files
    with RunLock(dataset_dir, doing="planned"):
        signature = raw_signature(raw_dir, cases)
        fingerprint, reused = _fingerprint(spec, cases, workspace, signature, n_workers, seed, progress, fresh,
                                           computed)
        source = DatasetSource(raw_dir=str(raw_dir), signature=signature).save(workspace.source_file(name))
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
        plans_file = plans.save(workspace.plans_file(name, plans.plans_name))
        splits = resolve_splits(raw_dir, workspace.splits_file(name), [c.case_id for c in cases])
        splits_path = splits.save(workspace.splits_file(name))
        dataset_json = workspace.dataset_json(name)
        atomic_write_bytes(dataset_json, (raw_dir / "dataset.json").read_bytes())
    return PlanResult(
        dataset_name=name, raw_dir=raw_dir, n_cases=len(cases), checked_only=False, warnings=found_warnings,
        preprocessed_dir=dataset_dir, fingerprint=workspace.fingerprint_file(name), plans=plans_file,
        splits=splits_path, dataset_json=dataset_json, source=source, data_folders=result.folders,
        computed=result.computed, skipped=result.skipped, fingerprint_reused=reused,
        user_splits=splits.user_provided)


def convert_msd(task_dir: Path, out_dir: Path, dataset_id: int | None = None, overwrite: bool = False) -> Path:
    """Convert a Medical Segmentation Decathlon task folder into a raw dataset under ``out_dir``."""
    return convert_msd_task(Path(task_dir), Path(out_dir), dataset_id=dataset_id, overwrite=overwrite)


def demo_data(out_dir: Path, n_cases: int = 8, seed: int = 0, modality: str = "CT", anisotropic: bool = False,
              n_channels: int = 1, regions: bool = False, n_test: int = 0, name: str | None = None,
              overwrite: bool = False) -> Path:
    """Write a small synthetic dataset into ``out_dir`` (a folder of datasets, e.g. ``<workdir>/raw``)."""
    return make_toy_dataset(Path(out_dir), n_cases=n_cases, seed=seed, modality=modality, n_channels=n_channels,
                            anisotropic=anisotropic, regions=regions, n_test=n_test, name=name,
                            overwrite=overwrite)


# --- train -------------------------------------------------------------------------------------------

def train(workspace: Workspace, request: TrainRequest, dist=None, progress: bool = True, callbacks: Sequence = (),
          stop=None) -> list[Path]:
    """Train the folds of a :class:`~autoseg.training.session.TrainRequest`; returns the run folders
    (:func:`autoseg.training.session.train`, ``stop`` included; torch is imported here, not with this module)."""
    from autoseg.training import session

    return session.train(workspace, request, dist=dist, progress=progress, callbacks=callbacks, stop=stop)


# --- predict, quantize, ensemble, export, import -----------------------------------------------------

def model_dir_for(workspace: Workspace, choice: ModelChoice) -> Path:
    """The model folder to use: ``choice.model`` (a folder, or a zip installed into ``workspace``
    unless the same export is installed already), else the trained model of ``choice.dataset``
    chosen by ``config``/``arch``/``plans``."""
    if choice.model is None:
        return find_model_dir(workspace, choice.dataset, choice.config, choice.arch, choice.plans)
    model = Path(choice.model)
    if model.is_dir():
        if is_nnunet_folder(model) and not any(model.glob("fold_*/checkpoint_*.pt")):
            raise PredictorError(f"--model {model}: an nnU-Net v2 results folder; install it first with `autoseg "
                                 f"import {model}`, then predict with the folder it prints")
        return model
    if not model.is_file():
        raise PredictorError(f"--model {model}: not found; give a model folder "
                             "(results/<Dataset>/<arch>__<plans>__<config>) or an exported .zip")
    if not zipfile.is_zipfile(model):
        raise PredictorError(f"--model {model}: neither a folder nor a zip exported by `autoseg export`")
    from autoseg.inference.export import ExportError, import_model, read_manifest  # imports torch

    with zipfile.ZipFile(model) as zf:
        manifest = read_manifest(zf, model)
    target = workspace.results_dir(manifest.dataset_name) / manifest.model_folder
    installed = target / "manifest.json"
    if installed.is_file() and json.loads(installed.read_text()).get("files") == manifest.files:
        return target
    if target.exists():
        raise ExportError(f"{target}: another model is installed there; replace it with `autoseg import {model} "
                          "--overwrite` or predict with that folder")
    return import_model(model, workspace)


def predict(workspace: Workspace, in_dir: Path, out_dir: Path, choice: ModelChoice = ModelChoice(),
            options: PredictOptions = PredictOptions()):
    """Predict every case of ``in_dir`` into ``out_dir``; returns the
    :class:`~autoseg.inference.pipeline.PredictReport` (failed cases listed, the others written).
    DICOM input, output type, statistics and sharding (``options``' fields of
    :mod:`autoseg.inference.sources`) go through :func:`_predict_sources`; without them the folder
    pipeline runs on ``in_dir`` directly."""
    predictor = load_predictor(model_dir_for(workspace, choice), choice.folds, choice.checkpoint)
    if choice.model is not None and choice.dataset is not None and not names_dataset(choice.dataset,
                                                                                      predictor.spec.name):
        raise PredictorError(f"-d {choice.dataset} does not match --model {choice.model}, which was trained on "
                             f"{predictor.spec.name}; leave out -d (the model says its dataset) or give the right one")
    if Path(in_dir).is_dir():  # else predict_folder says the input is missing, before creating anything
        ensure_writable_dir(Path(out_dir), "output folder (-o)")
    o = options

    def run_folder(src: Path, dst: Path, overwrite: bool = o.overwrite):
        return predict_folder(predictor, src, dst, step=o.step, tta=o.tta, save_probabilities=o.save_probabilities,
                              overwrite=overwrite, device=o.device, backend=o.backend, precision=o.precision,
                              progress=o.progress, release_networks=True)

    if not needs_staging(o, Path(in_dir)):
        return run_folder(Path(in_dir), Path(out_dir))
    return _predict_sources(predictor, Path(in_dir), Path(out_dir), o, run_folder)


def _predict_sources(predictor, in_dir: Path, out_dir: Path, options: PredictOptions, run_folder):
    """DICOM input, output types, statistics, sharding: :func:`autoseg.inference.sources.predict_sources`
    with the segment descriptions of the model's dataset.json."""
    from autoseg.core.version import __version__
    from autoseg.inference.export import dataset_json_path  # imports torch

    found = dataset_json_path(predictor.model_dir)
    descriptions = json.loads(found.read_text()).get(DESCRIPTIONS_KEY) if found is not None else None
    context = OutputContext(segments_of(predictor.spec, descriptions, str(found or "dataset.json")),
                            algorithm=f"autoseg {predictor.spec.name} {predictor.config.name}", version=__version__)
    request = SourceRequest(channels=tuple(predictor.spec.channel_names),
                            label_values=tuple(label_values(predictor.spec)), context=context, options=options,
                            overwrite=options.overwrite, save_probabilities=options.save_probabilities)
    return predict_sources(in_dir, out_dir, request, lambda src, dst: run_folder(src, dst, overwrite=True))


def quantize(workspace: Workspace, choice: ModelChoice = ModelChoice(), raw_data: Path | None = None, **options):
    """Make and check the int8 network of each chosen fold (:func:`autoseg.inference.quantize.quantize_model`;
    ``options``: ``patches``, ``check_cases``, ``tolerance``, ``seed``, ``progress``). Calibration and check
    read the model's preprocessed training data, so the dataset must be planned in ``workspace`` with the
    model's plans; ``raw_data`` (a raw dataset folder) is first preprocessed with the model's plans
    (:func:`preprocess_for_model`: models imported from nnU-Net come without preprocessed data).
    Returns one :class:`~autoseg.inference.quantize.FoldResult` per fold."""
    from autoseg.inference.quantize import QuantizeError, quantize_model  # imports torch

    predictor = load_predictor(model_dir_for(workspace, choice), choice.folds, choice.checkpoint)
    if predictor.previous is not None:
        raise QuantizeError(f"{predictor.model_dir}: a cascade stage ({predictor.config.name}) cannot be quantized: "
                            "its calibration would need the previous stage's segmentations as input; predict it "
                            "with --precision fp32 or bf16 (its low-res stage may be quantized on its own)")
    name = predictor.spec.name or predictor.plans.dataset_name
    if raw_data is not None:
        preprocess_for_model(workspace, predictor, Path(raw_data))
    pre = workspace.preprocessed_dir(name)
    plans_file = workspace.plans_file(name, predictor.plans.plans_name)
    splits_file = workspace.splits_file(name)
    if not plans_file.is_file() or not splits_file.is_file():
        raise QuantizeError(f"{pre}: no planned dataset with the model's plans ({plans_file.name}); `autoseg "
                            f"quantize` calibrates on the preprocessed training cases of {name}: run `autoseg plan "
                            f"{name}` in this workspace first (a model imported from nnU-Net: pass --raw-data with "
                            "its raw training dataset)")
    if Plans.load(plans_file).to_dict() != predictor.plans.to_dict():
        raise QuantizeError(f"{plans_file} differs from the plans the model was trained with; the "
                            "preprocessed data do not fit it (planned again since?)")
    folder = workspace.data_dir(name, predictor.plans, predictor.config.name)
    if not folder.is_dir():
        raise QuantizeError(f"{folder}: preprocessed data of configuration {predictor.config.name} not found; run "
                            f"`autoseg plan {name}` to preprocess it")
    return quantize_model(predictor, folder, Splits.load(splits_file), **options)


def preprocess_for_model(workspace: Workspace, predictor, raw_dir: Path, progress: bool = False) -> Path:
    """Preprocess the training cases of ``raw_dir`` with ``predictor``'s plans into ``workspace`` (plans
    file, preprocessed cases of its configuration, ``splits.json`` unless one exists: nnU-Net's folds),
    so that ``quantize`` can calibrate a model that came without its data. Returns the dataset folder."""
    from autoseg.inference.quantize import QuantizeError  # imports torch

    spec, cases = check_dataset(raw_dir, workers=1, progress=progress)
    name, plans = predictor.plans.dataset_name, predictor.plans
    if spec.name != name or dict(spec.labels) != dict(plans.labels) or spec.num_channels != predictor.num_channels:
        raise QuantizeError(f"{raw_dir}: dataset {spec.name} (labels {dict(spec.labels)}, {spec.num_channels} "
                            f"channel(s)) is not the one the model was trained on ({name}, labels {dict(plans.labels)}, "
                            f"{predictor.num_channels} channel(s)); give the model's raw training dataset")
    pre = ensure_writable_dir(workspace.preprocessed_dir(name), "preprocessed data folder (--workdir)")
    with RunLock(pre, doing="planned"):
        preprocess_dataset(spec, cases, plans, pre, configs=[predictor.config.name], workers=1, progress=False)
        plans.save(workspace.plans_file(name, plans.plans_name))
        splits_file = workspace.splits_file(name)
        if not splits_file.is_file():
            resolve_splits(raw_dir, splits_file, [c.case_id for c in cases]).save(splits_file)
        if not workspace.dataset_json(name).is_file():
            atomic_write_bytes(workspace.dataset_json(name), (Path(raw_dir) / "dataset.json").read_bytes())
    return pre


def ensemble(in_dirs: Sequence[Path], out_dir: Path, postprocessing: Path | None = None,
             regions_class_order: Sequence[int] | None = None, save_probabilities: bool = False,
             overwrite: bool = False, progress: bool = True):
    """Average the saved probabilities of ``in_dirs`` into label maps in ``out_dir``."""
    decision = PostprocessingDecision.load(Path(postprocessing)) if postprocessing is not None else None
    return ensemble_folders([Path(d) for d in in_dirs], Path(out_dir), regions_class_order=regions_class_order,
                            postprocessing=decision, save_probabilities=save_probabilities, overwrite=overwrite,
                            progress=progress)


def export(workspace: Workspace, run: str | Path, out_zip: Path, choice: ModelChoice = ModelChoice(),
           onnx: bool = False) -> Path:
    """Export a model folder (or fold folder) ``run``, or the trained model of dataset ``run`` that
    ``choice`` picks (its config/arch/plans; folds and checkpoint apply to both), to ``out_zip``."""
    from autoseg.inference.export import export_model  # imports torch

    path = Path(run)
    model_dir = path if path.is_dir() else model_dir_for(workspace, ModelChoice(
        dataset=str(run), config=choice.config, arch=choice.arch, plans=choice.plans))
    return export_model(model_dir, Path(out_zip), folds=choice.folds, checkpoint=choice.checkpoint, onnx=onnx)


def import_(workspace: Workspace, source: Path, overwrite: bool = False,
            allowed_trainers: Sequence[str] = ()) -> list[Path]:
    """Install a model into ``workspace``: a zip written by ``autoseg export``, an nnU-Net v2 results
    folder, or a zip written by ``nnUNetv2_export_model_to_zip``
    (:mod:`autoseg.inference.nnunet_import`; ``allowed_trainers``: custom nnU-Net trainers known to
    keep the plans' network). Returns the installed model folders."""
    from autoseg.inference.export import ExportError, import_model  # imports torch

    source = Path(source)
    if source.is_dir():
        if not is_nnunet_folder(source):
            raise ExportError(f"{source}: is a folder, but not an nnU-Net v2 results folder (<Trainer>__<Plans>__"
                              "<configuration> with plans.json, dataset.json and fold_*/checkpoint_final.pth); give "
                              "that, or the .zip written by `autoseg export` (a model folder of autoseg is used as it "
                              "is: autoseg predict --model FOLDER)")
        return install_nnunet(source, workspace, overwrite, tuple(allowed_trainers))
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            nnunet = "manifest.json" not in zf.namelist() and is_nnunet_zip(zf)
        if nnunet:
            return install_nnunet(source, workspace, overwrite, tuple(allowed_trainers))
    return [import_model(source, workspace, overwrite=overwrite)]


# --- postprocess, find-best --------------------------------------------------------------------------

def _cv_inputs(workspace: Workspace, dataset: str | None):
    """(dataset name, splits, dataset spec, reference label folder) of a trained, planned dataset."""
    name = resolve_trained(workspace, dataset)
    splits_file = workspace.splits_file(name)
    if not splits_file.is_file():
        raise cv.CrossvalError(f"{splits_file}: missing; cross-validation results need the planned dataset "
                               "(an imported model has none)")
    gt_dir = workspace.raw_dir(name) / "labelsTr"
    return name, Splits.load(splits_file), DatasetSpec.load(workspace.preprocessed_dir(name)), gt_dir


def postprocess(workspace: Workspace, dataset: str | None = None, config: str | None = None, arch: str | None = None,
                workers: int = 1, progress: bool = True, plans: str | None = None) -> Path:
    """Decide post-processing on the merged cross-validation predictions of one trained model and
    save ``postprocessing.json`` in its folder (``predict`` applies it). Returns the file."""
    name, splits, spec, gt_dir = _cv_inputs(workspace, dataset)
    model_dir = find_model_dir(workspace, name, config, arch, plans)
    merged, _ = cv.merge_folds(model_dir, splits, spec.file_ending)
    return cv.decide_postprocessing(model_dir, merged, gt_dir, spec, workers, progress)


def find_best(workspace: Workspace, dataset: str | None = None, configs: Sequence[str] | None = None,
              ensembles: bool = True, workers: int = 1, progress: bool = True):
    """Rank the trained models of a dataset (and their pairwise ensembles) on cross-validation, decide
    post-processing for the best and write ``inference_instructions.txt`` and ``find_best.json`` into
    ``results/<Dataset>/``. Returns the :class:`~autoseg.inference.crossval.FindBestResult`."""
    name, splits, spec, gt_dir = _cv_inputs(workspace, dataset)
    results = workspace.results_dir(name)
    models = {m.name: m for m in workspace.model_folders(name) if configs is None or m.config in configs}
    merged, notes = {}, []
    for m in models.values():
        try:
            merged[m.name] = cv.merge_folds(m.path, splits, spec.file_ending)
        except cv.CrossvalError as e:
            notes.append(f"{m.name} left out: {e}")
    if not merged:
        raise cv.CrossvalError(f"{name}: no model has finished every fold"
                               + (f" ({'; '.join(notes)})" if notes else (" with --configs " + " ".join(configs)
                                                                          if configs else "")))
    notes += [f"{n}: no validation probabilities, so not ensembled (train with --save-probabilities)"
              for n, (_, probs) in merged.items() if ensembles and not probs]
    scored = cv.score_candidates(results, merged, splits, gt_dir, spec, ensembles, workers, progress)
    best = cv.pick_best([s for s, _ in scored])
    crossval = dict((s.name, folder) for s, folder in scored)[best.name]
    owner = models[best.name].path if len(best.members) == 1 else crossval.parent
    post = cv.decide_postprocessing(owner, crossval, gt_dir, spec, workers, progress)
    result = cv.FindBestResult(dataset_name=name, candidates=tuple(s for s, _ in scored), best=best.name,
                               members=best.members, postprocessing=str(post),
                               commands=cv.predict_commands(name, best, models, post), notes=tuple(notes))
    result.save(results / cv.FIND_BEST_FILE)
    cv.write_instructions(results / cv.INSTRUCTIONS, result)
    return result

