"""A trained model loaded for prediction: the networks of the chosen folds and what they need.

A *model folder* is a configuration folder of a training run or of an imported model::

    <workdir>/results/<Dataset>/<arch>__<plans_name>__<config>/
        fold_<k>/checkpoint_final.pt | checkpoint_best.pt     (one or more folds, or fold_all)
        postprocessing.json                                   (optional, from `autoseg postprocess`)

Checkpoints describe themselves (weights, plans, configuration, architecture, dataset labels), so
nothing else is read: every fold must agree on plans, configuration, architecture and labels. The
networks are built on the CPU, in eval mode, when first used (:class:`FoldNetworks`: OpenVINO
prediction from conversions cached next to the checkpoints never builds them, which spares the 2-4 s
that importing MONAI takes); :mod:`autoseg.inference.backends` moves or converts them for the
device and backend that runs them.

A cascade stage (``3d_cascade_fullres``, :mod:`autoseg.cascade`) comes with the predictor of the stage
it needs (:attr:`Predictor.previous`): the model folder its checkpoints name (``previous_model``) beside
its own, every finished fold of it, the same checkpoint kind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.cascade import input_channels
from autoseg.core.checkpoint import (CHECKPOINTS, CheckpointError, ModelRecord, load_checkpoint, nonfinite_tensors,
                                     state_digest, weights_digest)
from autoseg.dataset import DatasetSpec
from autoseg.planning.plans import ConfigurationPlan, Plans, matches_plans
from autoseg.postprocessing import POSTPROCESSING_FILE, PostprocessingDecision
from autoseg.workspace import Fold, Workspace, fold_dirs, fold_of

_DATASET_RE = re.compile(r"^Dataset(\d+)_.+$")


class PredictorError(ValueError):
    """A model folder, fold or checkpoint that cannot be used for prediction (the message says why)."""


def parse_fold(text: str | int) -> Fold:
    if str(text) == "all":
        return "all"
    try:
        return int(text)
    except (TypeError, ValueError):
        raise PredictorError(f"unknown fold '{text}': use a fold number (0, 1, ...) or 'all'") from None


class FoldNetworks(Sequence):
    """The folds' torch networks, each built from its checkpoint weights when first asked for.

    Building a network imports MONAI (DynUNet, SwinUNETR): 2-4 s per process. OpenVINO prediction
    reads the folds' converted (or int8) networks from the cache next to their checkpoints and needs
    only the weights' digest (:meth:`digest`), so ``autoseg predict`` never pays for it there. Indexing
    or iterating builds (once; the weights then live in the network only)."""

    def __init__(self, states: Sequence[dict[str, Any]], build: Callable[[dict[str, Any]], Any]):
        """``states``: per fold, the checkpoint entries ``build`` needs, the weights under ``"model"``."""
        self._states: list[dict[str, Any] | None] = list(states)
        self._built: list[Any] = [None] * len(self._states)
        self._build = build

    def __len__(self) -> int:
        return len(self._states)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(len(self))[index])
        index = range(len(self))[index]  # negative indices; IndexError past the end
        if self._built[index] is None:
            self._built[index] = self._build(self._states[index])
            self._states[index] = None
        return self._built[index]

    def is_built(self, index: int) -> bool:
        return self._built[index] is not None

    def digest(self, index: int) -> str:
        """The weights digest of network ``index`` (:func:`~autoseg.core.checkpoint.weights_digest`):
        the one its checkpoint recorded (checked on loading) when there is one, else computed."""
        if self._built[index] is not None:
            return weights_digest(self._built[index])
        return self._states[index]["record"].weights_sha256 or state_digest(self._states[index]["model"])


@dataclass
class Predictor:
    """The networks of the chosen folds of one trained configuration (CPU, eval mode) and their context.

    ``spec`` is rebuilt from the checkpoint's dataset record (labels, channels, regions, file ending);
    ``mirror_axes`` are the patch axes mirrored in training (all of them; for a model imported from
    nnU-Net, those its trainer allowed, none for ``NoMirroring`` trainers), used for test-time
    augmentation; ``postprocessing`` is the cross-validation decision when one was saved."""

    model_dir: Path
    plans: Plans
    config: ConfigurationPlan
    spec: DatasetSpec
    arch: str
    folds: tuple[Fold, ...]
    checkpoint: str
    networks: Sequence[Any]  # a tuple of modules, or FoldNetworks (built on first use)
    postprocessing: PostprocessingDecision | None = None
    checkpoint_paths: tuple[Path, ...] = ()  # one per network (empty for hand-built predictors)
    allowed_mirror_axes: tuple[int, ...] | None = None  # from the checkpoint (imported nnU-Net models); None: all
    previous: Predictor | None = None  # a cascade stage: the model of the stage whose segmentation it takes

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        if self.allowed_mirror_axes is not None:
            return self.allowed_mirror_axes
        return tuple(range(len(self.config.patch_size)))

    @property
    def num_channels(self) -> int:
        """The networks' input channels: the image's, and a cascade stage's previous-stage channels."""
        return input_channels(self.spec, self.previous is not None)

    def describe(self) -> str:
        folds = ", ".join(str(f) for f in self.folds)
        return (f"{self.spec.name} {self.arch} {self.config.name} (fold{'s' if len(self.folds) > 1 else ''} {folds}, "
                f"checkpoint {self.checkpoint})" + (f" after {self.previous.describe()}" if self.previous else ""))


def _checkpoint_name(checkpoint: str) -> str:
    if checkpoint not in CHECKPOINTS:
        raise PredictorError(f"unknown checkpoint '{checkpoint}'; choices: {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[checkpoint]


def choose_checkpoints(model_dir: Path, folds: Sequence[Fold] | None, checkpoint: str = "final") -> dict[Fold, Path]:
    """Checkpoint file per fold. ``model_dir`` is a model folder or one ``fold_*`` folder. Without
    ``folds``: every numbered fold that has the checkpoint, else ``fold_all``."""
    model_dir = Path(model_dir)
    name = _checkpoint_name(checkpoint)
    if not model_dir.is_dir():
        raise PredictorError(f"{model_dir}: model folder not found")
    own_fold = fold_of(model_dir)
    if own_fold is not None:  # a single fold folder
        if folds is not None and [parse_fold(f) for f in folds] != [own_fold]:
            raise PredictorError(f"{model_dir} is one fold's folder; give its configuration folder to choose folds")
        path = model_dir / name
        if not path.is_file():
            raise PredictorError(f"{path}: not found; {_hint(model_dir, checkpoint)}")
        return {own_fold: path}
    available = fold_dirs(model_dir)
    if not available:
        raise PredictorError(f"{model_dir}: holds no fold_* folders; give a configuration folder "
                             f"(results/<Dataset>/<arch>__<plans>__<config>) or an imported model")
    if folds is None:
        done = {f: d / name for f, d in available.items() if (d / name).is_file()}
        numbered = {f: p for f, p in done.items() if f != "all"}
        chosen = numbered or done
        if not chosen:
            raise PredictorError(f"{model_dir}: no fold has {name}; {_hint(model_dir, checkpoint)}")
        return chosen
    out: dict[Fold, Path] = {}
    for f in (parse_fold(f) for f in folds):
        if f not in available:
            raise PredictorError(f"{model_dir}: fold {f} was not trained (trained: "
                                 f"{', '.join(str(k) for k in available)}); train it or choose other --folds")
        path = available[f] / name
        if not path.is_file():
            raise PredictorError(f"{path}: not found; {_hint(available[f], checkpoint)}")
        out[f] = path
    return out


def _hint(folder: Path, checkpoint: str) -> str:
    if checkpoint == "final":
        return ("training has not finished; finish it with `autoseg train --resume` or predict with "
                "--checkpoint best")
    return "no best checkpoint was saved; use --checkpoint final"


def spec_from_record(record: ModelRecord) -> DatasetSpec:
    """The dataset description a checkpoint carries, as a :class:`DatasetSpec`."""
    d = record.dataset
    return DatasetSpec(name=d.name, channel_names=d.channel_names, labels=dict(d.labels), num_training=0,
                       file_ending=d.file_ending, regions_class_order=d.regions_class_order,
                       ignore_label=d.ignore_label)


def build_network(state: dict[str, Any], config: ConfigurationPlan, spec: DatasetSpec, source: Path):
    """The network of a checkpoint's ``record`` with its ``model`` weights, on the CPU, in eval mode."""
    from autoseg.models import build_model  # torch and MONAI: only when a network is built (module docstring)

    record: ModelRecord = state["record"]
    deep_supervision = bool(record.settings.get("deep_supervision", True))
    net = build_model(record.arch, config, input_channels(spec, record.is_cascade), spec.num_outputs, deep_supervision)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise PredictorError(f"{source}: weights do not fit the {record.arch} network its plan describes "
                             f"({str(e).splitlines()[0]}); the checkpoint is damaged or from another version") from None
    return net.eval()


def load_predictor(model_dir: Path, folds: Sequence[Fold] | None = None, checkpoint: str = "final") -> Predictor:
    """Load the chosen folds' checkpoints of a model folder (or one fold folder); their networks are
    built when first used (:class:`FoldNetworks`)."""
    paths = choose_checkpoints(model_dir, folds, checkpoint)
    first_path = next(iter(paths.values()))
    states, reference = [], None
    plans = config = spec = arch = mirror_axes = None
    for fold, path in paths.items():
        ckpt, record = _load(path)
        if reference is None:
            reference = record
            plans = Plans.from_dict(record.plans, source=str(path))
            config, arch = plans.configuration(record.configuration), record.arch
            mirror_axes = record.inference_mirror_axes
            spec = spec_from_record(record)
            _check_owner(model_dir, spec, path)
            if config.previous_stage and not record.is_cascade:
                raise PredictorError(f"{path}: cascade configuration '{config.name}' names no model of its previous "
                                     f"stage '{config.previous_stage}' (written by an autoseg without the cascade, or "
                                     "imported); retrain it with this autoseg")
        elif not record.same_model_as(reference):
            raise PredictorError(f"{path}: fold {fold} was trained with other plans, configuration, architecture or "
                                 f"labels than {first_path}; predict with the folds of one training only (--folds)")
        bad = nonfinite_tensors(ckpt["model"])
        if bad:  # e.g. written by an autoseg that saved diverged runs: it would predict background everywhere
            raise PredictorError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); "
                                 "the training diverged: use another checkpoint (--checkpoint best) or retrain")
        states.append({"model": ckpt["model"], "record": record, "source": path})
        del ckpt  # the optimiser state and the rest are not needed

    def build(state: dict[str, Any]):
        return build_network(state, config, spec, state["source"])

    model_root = Path(model_dir) if fold_of(model_dir) is None else Path(model_dir).parent
    previous = load_previous_stage(model_root, reference, checkpoint) if reference.is_cascade else None
    return Predictor(model_dir=model_root, plans=plans, config=config, spec=spec, arch=arch, folds=tuple(paths),
                     checkpoint=checkpoint, networks=FoldNetworks(states, build),
                     postprocessing=load_postprocessing(model_root), checkpoint_paths=tuple(paths.values()),
                     allowed_mirror_axes=mirror_axes, previous=previous)


def load_previous_stage(model_root: Path, record: ModelRecord, checkpoint: str) -> Predictor:
    """The predictor of the stage a cascade model needs: its model folder beside ``model_root``, every
    finished fold; refused, with the command that trains it, when missing or not the stage it should be."""
    folder = model_root.parent / str(record.previous_model)
    stage = record.previous_stage
    command = (f"`autoseg train {record.dataset.name or record.plans.get('dataset_name', 'DATASET')} --config {stage} "
               f"--fold 0 1 2 3 4 --arch {record.arch} --plans {record.plans_name}`")
    if not folder.is_dir() or not fold_dirs(folder):
        raise PredictorError(f"{model_root}: this cascade model predicts on top of the '{stage}' stage's "
                             f"segmentation, and that model ({folder}) is missing; train it with {command} (or copy "
                             "that folder beside this one)")
    try:
        previous = load_predictor(folder, None, checkpoint)
    except PredictorError as e:
        raise PredictorError(f"{model_root}: the '{stage}' stage this cascade model needs cannot be used: {e}") from None
    if previous.config.name != stage or previous.plans.to_dict() != record.plans or previous.spec.labels != \
            dict(record.dataset.labels):
        raise PredictorError(f"{folder}: not the '{stage}' stage of the plans and labels {model_root.name} was trained "
                             f"with (it holds {previous.config.name} of {previous.plans.plans_name}); retrain it with "
                             f"{command}")
    return previous


def _load(path: Path) -> tuple[dict[str, Any], ModelRecord]:
    """A checkpoint for prediction (mapped; checked against its digest) and its record."""
    try:
        ckpt = load_checkpoint(path, mmap=True)
        return ckpt, ModelRecord.of(ckpt, path)
    except CheckpointError as e:
        raise PredictorError(str(e)) from None


def _check_owner(model_dir: Path, spec: DatasetSpec, path: Path) -> None:
    """A model folder under ``results/<Dataset>/`` must hold that dataset's checkpoints: a checkpoint
    copied from another dataset would predict that dataset's labels under this one's name."""
    root = Path(model_dir) if fold_of(model_dir) is None else Path(model_dir).parent
    owner = root.resolve().parent.name
    if _DATASET_RE.match(owner) and spec.name and spec.name != owner:
        raise PredictorError(f"{path}: checkpoint of dataset {spec.name} found in the models of {owner}; remove it, "
                             f"or move {root.name} to results/{spec.name}/ and predict with -d {spec.name}")


def load_postprocessing(model_dir: Path) -> PostprocessingDecision | None:
    path = Path(model_dir) / POSTPROCESSING_FILE
    return PostprocessingDecision.load(path) if path.is_file() else None


# --- finding a model in a workspace ---------------------------------------------------------------

def resolve_trained(workspace: Workspace, dataset: str | None) -> str:
    """The name of a trained dataset from its name or number; ``None`` picks the only one."""
    trained = workspace.trained_datasets()
    if dataset is None:
        if len(trained) == 1:
            return trained[0]
        if not trained:
            raise PredictorError(f"no trained model in {workspace.results}; run `autoseg train` (or `autoseg import "
                                 "model.zip`) first")
        raise PredictorError("several trained datasets, name one with -d: " + ", ".join(trained))
    text = Path(str(dataset)).name
    for name in trained:
        m = _DATASET_RE.match(name)
        if name == text or (text.isdigit() and m and int(m.group(1)) == int(text)):
            return name
    raise PredictorError(f"dataset '{dataset}' has no trained model in {workspace.results}"
                         + (f" (trained: {', '.join(trained)})" if trained else "; run `autoseg train` first"))


def find_model_dir(workspace: Workspace, dataset: str | None = None, config: str | None = None,
                   arch: str | None = None, plans: str | None = None) -> Path:
    """The configuration folder to predict with: the only trained one matching ``config``/``arch``/``plans``
    (a plans name or planner preset, :func:`~autoseg.planning.plans.matches_plans`)."""
    name = resolve_trained(workspace, dataset)
    found = workspace.model_folders(name)
    matching = [m for m in found if (config is None or m.config == config) and (arch is None or m.arch == arch)
                and (plans is None or matches_plans(m.plans_name, plans))]
    if len(matching) == 1:
        return matching[0].path
    listed = ", ".join(f"{m.config} ({m.arch}, {m.plans_name})" for m in found)
    if not matching:
        raise PredictorError(f"{name}: no trained model with"
                             + (f" --config {config}" if config else "") + (f" --arch {arch}" if arch else "")
                             + (f" --plans {plans}" if plans else "") + f"; trained: {listed}")
    raise PredictorError(f"{name}: several trained models ({listed}); choose one with --config, --arch and --plans "
                         "(`autoseg find-best` recommends one)")
