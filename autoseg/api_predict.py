"""API of the inference commands: ``predict``, ``ensemble``, ``export``, ``import``, ``postprocess``,
``find-best``. Every path is explicit; the CLI (:mod:`autoseg.cli_predict`) resolves them.

A model is named either by a dataset (its only trained configuration, or the one ``config``/``arch``
pick; see :func:`autoseg.inference.predictor.find_model_dir`) or by a model folder / fold folder /
exported ``.zip`` (installed into the workspace on first use).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

from autoseg.workspace import Workspace, names_dataset


def model_dir_for(workspace: Workspace, dataset: str | None = None, config: str | None = None,
                  arch: str | None = None, model: Path | None = None, plans: str | None = None) -> Path:
    """The model folder to use: ``model`` (a folder, or a zip installed into ``workspace`` unless the
    same export is installed already), else the trained model of ``dataset`` chosen by ``config``/``arch``/``plans``."""
    from autoseg.inference.export import ExportError, import_model, read_manifest
    from autoseg.inference.predictor import PredictorError, find_model_dir

    if model is None:
        return find_model_dir(workspace, dataset, config, arch, plans)
    model = Path(model)
    if model.is_dir():
        from autoseg.inference.nnunet_import import is_nnunet_folder

        if is_nnunet_folder(model) and not any(model.glob("fold_*/checkpoint_*.pt")):
            raise PredictorError(f"--model {model}: an nnU-Net v2 results folder; install it first with `autoseg "
                                 f"import {model}`, then predict with the folder it prints")
        return model
    if not model.is_file():
        raise PredictorError(f"--model {model}: not found; give a model folder "
                             "(results/<Dataset>/<arch>__<plans>__<config>) or an exported .zip")
    if not zipfile.is_zipfile(model):
        raise PredictorError(f"--model {model}: neither a folder nor a zip exported by `autoseg export`")
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


def predict(workspace: Workspace, in_dir: Path, out_dir: Path, dataset: str | None = None, config: str | None = None,
            arch: str | None = None, folds: Sequence | None = None, checkpoint: str = "final",
            model: Path | None = None, step: float = 0.5, tta: bool = True, save_probabilities: bool = False,
            device: str = "auto", backend: str = "auto", precision: str = "auto", overwrite: bool = False,
            progress: bool = True, plans: str | None = None, options=None):
    """Predict every case of ``in_dir`` into ``out_dir``; returns the
    :class:`~autoseg.inference.pipeline.PredictReport` (failed cases listed, the others written).
    ``options`` (:class:`~autoseg.inference.sources.PredictOptions`): DICOM input, output type,
    statistics, sharding; without them the folder pipeline runs on ``in_dir`` directly."""
    from autoseg.core.fileops import ensure_writable_dir
    from autoseg.inference.pipeline import predict_folder
    from autoseg.inference.predictor import load_predictor
    from autoseg.inference.sources import PredictOptions

    predictor = load_predictor(model_dir_for(workspace, dataset, config, arch, model, plans), folds, checkpoint)
    if model is not None and dataset is not None and not names_dataset(dataset, predictor.spec.name):
        from autoseg.inference.predictor import PredictorError

        raise PredictorError(f"-d {dataset} does not match --model {model}, which was trained on {predictor.spec.name}; "
                             "leave out -d (the model says its dataset) or give the right one")
    if Path(in_dir).is_dir():  # else predict_folder says the input is missing, before creating anything
        ensure_writable_dir(Path(out_dir), "output folder (-o)")
    options = options or PredictOptions()

    def run_folder(src: Path, dst: Path, overwrite: bool = overwrite):
        return predict_folder(predictor, src, dst, step=step, tta=tta, save_probabilities=save_probabilities,
                              overwrite=overwrite, device=device, backend=backend, precision=precision,
                              progress=progress, release_networks=True)

    if not options.needs_staging(Path(in_dir)):
        return run_folder(Path(in_dir), Path(out_dir))
    return _predict_sources(predictor, Path(in_dir), Path(out_dir), options, run_folder, overwrite,
                            save_probabilities)


def _predict_sources(predictor, in_dir: Path, out_dir: Path, options, run_folder, overwrite: bool,
                     save_probabilities: bool):
    """DICOM input, output types, statistics, sharding: :func:`autoseg.inference.sources.predict_sources`
    with the segment descriptions of the model's dataset.json."""
    from autoseg.core.version import __version__
    from autoseg.inference.export import dataset_json_path
    from autoseg.inference.outputs import OutputContext
    from autoseg.inference.sources import SourceRequest, predict_sources
    from autoseg.io.segments import DESCRIPTIONS_KEY, label_values, segments_of

    found = dataset_json_path(predictor.model_dir)
    descriptions = json.loads(found.read_text()).get(DESCRIPTIONS_KEY) if found is not None else None
    context = OutputContext(segments_of(predictor.spec, descriptions, str(found or "dataset.json")),
                            algorithm=f"autoseg {predictor.spec.name} {predictor.config.name}", version=__version__)
    request = SourceRequest(channels=tuple(predictor.spec.channel_names),
                            label_values=tuple(label_values(predictor.spec)), context=context, options=options,
                            overwrite=overwrite, save_probabilities=save_probabilities)
    return predict_sources(in_dir, out_dir, request, lambda src, dst: run_folder(src, dst, overwrite=True))


def ensemble(in_dirs: Sequence[Path], out_dir: Path, postprocessing: Path | None = None,
             regions_class_order: Sequence[int] | None = None, save_probabilities: bool = False,
             overwrite: bool = False, progress: bool = True):
    """Average the saved probabilities of ``in_dirs`` into label maps in ``out_dir``."""
    from autoseg.inference.ensemble import ensemble_folders
    from autoseg.postprocessing import PostprocessingDecision

    decision = PostprocessingDecision.load(Path(postprocessing)) if postprocessing is not None else None
    return ensemble_folders([Path(d) for d in in_dirs], Path(out_dir), regions_class_order=regions_class_order,
                            postprocessing=decision, save_probabilities=save_probabilities, overwrite=overwrite,
                            progress=progress)


def export(workspace: Workspace, run: str | Path, out_zip: Path, config: str | None = None, arch: str | None = None,
           folds: Sequence | None = None, checkpoint: str = "final", onnx: bool = False,
           plans: str | None = None) -> Path:
    """Export a model folder (or fold folder), or the trained model of dataset ``run``, to ``out_zip``."""
    from autoseg.inference.export import export_model

    path = Path(run)
    model_dir = path if path.is_dir() else model_dir_for(workspace, str(run), config, arch, plans=plans)
    return export_model(model_dir, Path(out_zip), folds=folds, checkpoint=checkpoint, onnx=onnx)


def import_(workspace: Workspace, source: Path, overwrite: bool = False,
            allowed_trainers: Sequence[str] = ()) -> list[Path]:
    """Install a model into ``workspace``: a zip written by ``autoseg export``, an nnU-Net v2 results
    folder, or a zip written by ``nnUNetv2_export_model_to_zip``
    (:mod:`autoseg.inference.nnunet_import`; ``allowed_trainers``: custom nnU-Net trainers known to
    keep the plans' network). Returns the installed model folders."""
    from autoseg.inference.export import ExportError, import_model
    from autoseg.inference.nnunet_import import install_nnunet, is_nnunet_folder, is_nnunet_zip

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


def _cv_inputs(workspace: Workspace, dataset: str | None):
    """(dataset name, splits, dataset spec, reference label folder) of a trained, planned dataset."""
    from autoseg.api import find_raw_dir
    from autoseg.dataset import DatasetSpec
    from autoseg.inference.crossval import CrossvalError
    from autoseg.inference.predictor import resolve_trained
    from autoseg.splits import Splits

    name = resolve_trained(workspace, dataset)
    pre = workspace.preprocessed_dir(name)
    if not (pre / "splits.json").is_file():
        raise CrossvalError(f"{pre / 'splits.json'}: missing; cross-validation results need the planned dataset "
                            "(an imported model has none)")
    gt_dir = find_raw_dir(workspace, name) / "labelsTr"
    return name, Splits.load(pre / "splits.json"), DatasetSpec.load(pre), gt_dir


def postprocess(workspace: Workspace, dataset: str | None = None, config: str | None = None, arch: str | None = None,
                workers: int = 1, progress: bool = True, plans: str | None = None) -> Path:
    """Decide post-processing on the merged cross-validation predictions of one trained model and
    save ``postprocessing.json`` in its folder (``predict`` applies it). Returns the file."""
    from autoseg.inference.crossval import decide_postprocessing, merge_folds
    from autoseg.inference.predictor import find_model_dir

    name, splits, spec, gt_dir = _cv_inputs(workspace, dataset)
    model_dir = find_model_dir(workspace, name, config, arch, plans)
    merged, _ = merge_folds(model_dir, splits, spec.file_ending)
    return decide_postprocessing(model_dir, merged, gt_dir, spec, workers, progress)


def find_best(workspace: Workspace, dataset: str | None = None, configs: Sequence[str] | None = None,
              ensembles: bool = True, workers: int = 1, progress: bool = True):
    """Rank the trained models of a dataset (and their pairwise ensembles) on cross-validation, decide
    post-processing for the best and write ``inference_instructions.txt`` and ``find_best.json`` into
    ``results/<Dataset>/``. Returns the :class:`~autoseg.inference.crossval.FindBestResult`."""
    from autoseg.inference import crossval as cv
    from autoseg.inference.predictor import model_folders

    name, splits, spec, gt_dir = _cv_inputs(workspace, dataset)
    results = workspace.results_dir(name)
    models = {m.name: m for m in model_folders(results) if configs is None or m.config in configs}
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


def quantize(workspace: Workspace, dataset: str | None = None, config: str | None = None, arch: str | None = None,
             folds: Sequence | None = None, checkpoint: str = "final", model: Path | None = None,
             plans: str | None = None, raw_data: Path | None = None, **options):
    """Make and check the int8 network of each chosen fold (:func:`autoseg.inference.quantize.quantize_model`;
    ``options``: ``patches``, ``check_cases``, ``tolerance``, ``seed``, ``progress``). Calibration and check
    read the model's preprocessed training data, so the dataset must be planned in ``workspace`` with the
    model's plans; ``raw_data`` (a raw dataset folder) is first preprocessed with the model's plans
    (:func:`preprocess_for_model`: models imported from nnU-Net come without preprocessed data).
    Returns one :class:`~autoseg.inference.quantize.FoldResult` per fold."""
    from autoseg.inference.predictor import load_predictor
    from autoseg.inference.quantize import QuantizeError, quantize_model
    from autoseg.planning.plans import Plans, plans_path
    from autoseg.preprocessing import data_folder
    from autoseg.splits import Splits

    predictor = load_predictor(model_dir_for(workspace, dataset, config, arch, model, plans), folds, checkpoint)
    name = predictor.spec.name or predictor.plans.dataset_name
    if raw_data is not None:
        preprocess_for_model(workspace, predictor, Path(raw_data))
    pre = workspace.preprocessed_dir(name)
    plans_file = plans_path(pre, predictor.plans.plans_name)
    if not plans_file.is_file() or not (pre / "splits.json").is_file():
        raise QuantizeError(f"{pre}: no planned dataset with the model's plans ({plans_file.name}); `autoseg "
                            f"quantize` calibrates on the preprocessed training cases of {name}: run `autoseg plan "
                            f"{name}` in this workspace first (a model imported from nnU-Net: pass --raw-data with "
                            "its raw training dataset)")
    if Plans.load(plans_file).to_dict() != predictor.plans.to_dict():
        raise QuantizeError(f"{plans_file} differs from the plans the model was trained with; the "
                            "preprocessed data do not fit it (planned again since?)")
    folder = data_folder(pre, predictor.plans, predictor.config.name)
    if not folder.is_dir():
        raise QuantizeError(f"{folder}: preprocessed data of configuration {predictor.config.name} not found; run "
                            f"`autoseg plan {name}` to preprocess it")
    return quantize_model(predictor, folder, Splits.load(pre / "splits.json"), **options)


def preprocess_for_model(workspace: Workspace, predictor, raw_dir: Path, progress: bool = False) -> Path:
    """Preprocess the training cases of ``raw_dir`` with ``predictor``'s plans into ``workspace`` (plans
    file, preprocessed cases of its configuration, ``splits.json`` unless one exists: nnU-Net's folds),
    so that ``quantize`` can calibrate a model that came without its data. Returns the dataset folder."""
    from autoseg.api import resolve_splits
    from autoseg.core.fileops import atomic_write_bytes, ensure_writable_dir
    from autoseg.inference.quantize import QuantizeError
    from autoseg.integrity import check_dataset
    from autoseg.planning.plans import plans_path
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.core.runlock import RunLock

    spec, cases = check_dataset(raw_dir, workers=1, progress=progress)
    name, plans = predictor.plans.dataset_name, predictor.plans
    if spec.name != name or dict(spec.labels) != dict(plans.labels) or spec.num_channels != predictor.num_channels:
        raise QuantizeError(f"{raw_dir}: dataset {spec.name} (labels {dict(spec.labels)}, {spec.num_channels} "
                            f"channel(s)) is not the one the model was trained on ({name}, labels {dict(plans.labels)}, "
                            f"{predictor.num_channels} channel(s)); give the model's raw training dataset")
    pre = ensure_writable_dir(workspace.preprocessed_dir(name), "preprocessed data folder (--workdir)")
    with RunLock(pre, doing="planned"):
        preprocess_dataset(spec, cases, plans, pre, configs=[predictor.config.name], workers=1, progress=False)
        plans.save(plans_path(pre, plans.plans_name))
        if not (pre / "splits.json").is_file():
            resolve_splits(raw_dir, pre, [c.case_id for c in cases]).save(pre / "splits.json")
        if not (pre / "dataset.json").is_file():
            atomic_write_bytes(pre / "dataset.json", (Path(raw_dir) / "dataset.json").read_bytes())
    return pre
