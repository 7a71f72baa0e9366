"""A training run put together: resolve what ``autoseg train`` was asked into one :class:`TrainJob` per
fold, then build, (resume,) fit and validate each.

Run folder (:meth:`~autoseg.workspace.Workspace.run_dir`):
``<workdir>/results/<Dataset>/<arch>__<plans_name>__<config>/fold_<k>/`` with checkpoints, ``log.jsonl``,
``training_log.txt``, ``progress.png`` and ``validation/`` (end-of-training full-volume predictions of
the fold's validation cases and ``summary.json``). Folds run one after another; ``all`` trains on
every case. Under torchrun every rank calls :func:`train` with its
:class:`~autoseg.training.ddp.DistContext`; rank 0 alone writes.

The cascade (:mod:`autoseg.cascade`): a ``3d_lowres`` fold's validation also leaves its cases'
segmentations for each next stage in the model folder's ``predicted_next_stage/<next_config>/``; a
``3d_cascade_fullres`` job is refused before any run folder is made unless those exist for every
training and validation case of its fold, and its network takes them as extra input channels.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoseg.core.checkpoint import (BEST, FINAL, LATEST, DatasetRecord, ModelRecord, NonFiniteWeightsError,
                                     load_checkpoint)
from autoseg.core.runlock import LOCK_NAME, RunLock
from autoseg.core.runtime import guard_tiny_convolutions, resolve_amp, resolve_device, seed_everything
from autoseg.cascade import PreviousStage, foreground_labels, input_channels, missing_previous_stage, next_stages
from autoseg.dataset import DatasetSpec
from autoseg.inference.sliding import window_starts
from autoseg.models import ARCHITECTURES, build_model
from autoseg.models.registry import check_buildable, get_architecture
from autoseg.planning.planner import unplanned_configurations
from autoseg.planning.plans import Plans
from autoseg.progress import progress_bar
from autoseg.splits import Fold, Splits
from autoseg.storage import CaseProperties
from autoseg.training import ddp
from autoseg.training.budget import TimeBudget
from autoseg.training.checkpoint import CheckpointCallback, restore
from autoseg.training.loader import Sampling, Workers, make_train_loader, make_val_loader
from autoseg.training.durations import format_duration
from autoseg.training.logging import LogCallback, ProgressBarCallback, log_line
from autoseg.training.losses import make_loss
from autoseg.training.trainer import NonFiniteLossError, Run, Targets, TrainSettings, fit, make_optimizer
from autoseg.training.validation import NextStage, ValidationJob, validate
from autoseg.workspace import Workspace, model_folder_name

# Settings that may change when resuming; any other difference would make the resumed run differ
# from the uninterrupted one, so it is refused.
RESUMABLE_CHANGES = frozenset({"epochs", "early_stop", "device", "num_workers", "compile", "save_probabilities",
                               "val_mirroring", "time_budget"})


class TrainError(ValueError):
    """A training request that cannot run as given (the message says what to change)."""


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN/inf; the run stopped and its last good checkpoints are kept."""


def _kept_checkpoints(run_dir: Path) -> str:
    kept = [n for n in (LATEST, BEST, FINAL) if (run_dir / n).is_file()]
    return f"kept from earlier epochs: {', '.join(kept)}" if kept else "no checkpoint had been written yet"


@dataclass(frozen=True)
class TrainRequest:
    """What ``autoseg train`` is asked, names not yet resolved (None: the default or the only one)."""

    dataset: str | None = None  # planned dataset: name or number
    folds: tuple[int | str, ...] = (0,)  # fold numbers and/or "all", trained in this order
    config: str | None = None  # default: the plans' default configuration
    arch: str | None = None  # default: the configuration's architecture
    plans: str | None = None  # plans name or planner preset (resenc_m); default: the default preset's
    settings: Mapping[str, Any] = field(default_factory=dict)  # TrainSettings fields chosen explicitly
    resume: bool = False  # continue the run's latest checkpoint (its stored settings, RESUMABLE_CHANGES aside)
    pretrained: Path | None = None  # start from another run's weights


@dataclass(frozen=True)
class TrainJob:
    """One fold's training run with every choice resolved; its folders come from the workspace."""

    workspace: Workspace
    dataset_name: str
    plans: Plans
    config: str
    arch: str
    fold: int | str
    fold_cases: Fold  # the fold's training and validation case ids
    settings: Mapping[str, Any] = field(default_factory=dict)  # TrainSettings fields chosen explicitly
    resume: bool = False
    pretrained: Path | None = None
    previous: PreviousStage | None = None  # a cascade stage: the previous stage's segmentations

    @property
    def run_dir(self) -> Path:
        return self.workspace.run_dir(self.dataset_name, self.arch, self.plans.plans_name, self.config, self.fold)

    @property
    def next_stages(self) -> tuple[NextStage, ...]:
        """The cascade stages this configuration's validation predictions feed (none for fold ``all``,
        whose validation cases are its training cases)."""
        if self.fold == "all":
            return ()
        return tuple(NextStage(n, self.workspace.data_dir(self.dataset_name, self.plans, n),
                               self.workspace.next_stage_dir(self.dataset_name, self.arch, self.plans.plans_name,
                                                             self.config, n))
                     for n in next_stages(self.plans, self.config))

    def missing_next_stage(self) -> bool:
        """Whether a next stage lacks the segmentation of one of the fold's validation cases."""
        return any(missing_previous_stage(n.out_folder, self.fold_cases.val) for n in self.next_stages)

    @property
    def preprocessed_dir(self) -> Path:
        return self.workspace.preprocessed_dir(self.dataset_name)

    @property
    def data_folder(self) -> Path:
        return self.workspace.data_dir(self.dataset_name, self.plans, self.config)


def parse_folds(folds: Sequence[int | str], n_folds: int) -> list[int | str]:
    """Fold numbers 0..n_folds-1 or ``all``, in the given order, duplicates removed."""
    out: list[int | str] = []
    for f in folds:
        if str(f) == "all":
            value: int | str = "all"
        else:
            try:
                value = int(f)
            except (TypeError, ValueError):
                raise TrainError(f"unknown fold '{f}': use 0-{n_folds - 1} or 'all'") from None
            if not 0 <= value < n_folds:
                raise TrainError(f"unknown fold {value}: splits.json has folds 0-{n_folds - 1} (or 'all')")
        if value not in out:
            out.append(value)
    if not out:
        raise TrainError("no fold given; use --fold 0 (or several, or 'all')")
    return out


def train(workspace: Workspace, request: TrainRequest, dist=None, progress: bool = True,
          callbacks: Sequence = (), stop=None) -> list[Path]:
    """Train each fold of ``request`` (:func:`jobs_for`) one after another; returns the run folders.

    ``dist``: this process's :class:`~autoseg.training.ddp.DistContext` (default: a single process);
    ``callbacks``: extra trainer hooks (:class:`~autoseg.training.trainer.Callback`) for every fold;
    ``stop``: the installed :class:`~autoseg.training.stopping.StopSignals` (SIGTERM/SIGINT end
    training after the current step with :class:`~autoseg.training.stopping.TrainingStopped`)."""
    dist = dist or ddp.SINGLE
    return [run_job(job, dist, progress, callbacks, stop) for job in jobs_for(workspace, request)]


def jobs_for(workspace: Workspace, request: TrainRequest) -> list[TrainJob]:
    """One job per fold: the planned dataset, plans, configuration (default: the plans') and
    architecture (default: the plan's) that ``request`` names, checked before any training starts.

    ``request.plans`` picks the dataset's plans by plans name or planner preset (``resenc_m``); default:
    the default preset's plans, or the only plans there (:meth:`~autoseg.workspace.Workspace.find_plans`).
    ``request.settings`` holds the :class:`~autoseg.training.trainer.TrainSettings` fields chosen
    explicitly; on ``resume`` the run's stored settings are used and only fields in
    :data:`RESUMABLE_CHANGES` may differ."""
    name = workspace.resolve_planned(request.dataset)
    try:
        plans_file = workspace.find_plans(name, request.plans)
    except ValueError as e:
        raise TrainError(str(e)) from None
    plans = Plans.load(plans_file)
    config = request.config or plans.default_configuration
    if config not in plans.configurations:
        why = unplanned_configurations(plans).get(config)
        raise TrainError(f"configuration '{config}' is not planned for {name}{f' ({why})' if why else ''}; choices: "
                         f"{', '.join(plans.configurations)}")
    arch = request.arch or plans.configurations[config].architecture
    if arch not in ARCHITECTURES:
        raise TrainError(f"unknown architecture '{arch}'; choices: {', '.join(ARCHITECTURES)}")
    check_buildable(arch, plans.configurations[config])  # before any run folder is made
    splits = Splits.load(workspace.splits_file(name))
    fold_list = parse_folds(request.folds, len(splits.folds))
    if request.resume and request.pretrained is not None:
        raise TrainError("--resume continues a run and --pretrained starts a new one from other weights; "
                         "use one of them")
    previous = None
    if plans.configurations[config].previous_stage:
        previous = previous_stage_of(workspace, name, plans, config, arch, splits, fold_list, request)
    return [TrainJob(workspace, name, plans, config, arch, fold, splits.fold(fold), dict(request.settings),
                     request.resume, request.pretrained, previous) for fold in fold_list]


def previous_stage_of(workspace: Workspace, name: str, plans: Plans, config: str, arch: str, splits: Splits,
                      folds: Sequence[int | str], request: TrainRequest) -> PreviousStage:
    """The previous-stage segmentations a cascade configuration trains on, checked to exist for every
    training and validation case of ``folds``; otherwise a :class:`TrainError` naming what is missing and
    the command that makes it (the low-res folds that validate the missing cases)."""
    prev = plans.configurations[config].previous_stage
    if prev not in plans.configurations:
        raise TrainError(f"configuration '{config}' needs the stage '{prev}', which the plans of {name} do not hold; "
                         "plan the dataset again with `autoseg plan`")
    folder = workspace.next_stage_dir(name, arch, plans.plans_name, prev, config)
    needed = sorted({c for f in folds for c in splits.fold(f).train + splits.fold(f).val})
    missing = missing_previous_stage(folder, needed)
    if missing:
        low_folds = [k for k, f in enumerate(splits.folds) if set(f.val) & set(missing)] or range(len(splits.folds))
        started = any(workspace.run_dir(name, arch, plans.plans_name, prev, k).is_dir() for k in low_folds)
        command = (f"autoseg train {name} --config {prev} --fold {' '.join(str(k) for k in low_folds)}"
                   + (f" --arch {request.arch}" if request.arch else "")
                   + (f" --plans {request.plans}" if request.plans else "") + (" --resume" if started else ""))
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise TrainError(f"configuration '{config}' is the second stage of a cascade: it trains on the '{prev}' "
                         f"stage's segmentations of every training and validation case, and {len(missing)} of "
                         f"{len(needed)} are missing in {folder} ({shown}); make them first with `{command}` "
                         f"(each finished {prev} fold leaves its validation cases' segmentations there)")
    spec = DatasetSpec.load(workspace.preprocessed_dir(name))
    return PreviousStage(folder, foreground_labels(spec))


def resolve_settings(given: dict[str, Any], run_dir: Path, resume: bool, arch: str = "unet",
                     pretrained: bool = False):
    """Fresh run: the given settings over the architecture's own (``Architecture.training``, e.g. the
    transformers' AdamW; not used when ``optimizer`` is given) over the defaults; a time-budget run
    from scratch with neither optimiser nor learning rate chosen (by the user or the architecture)
    gets ``optimizer="auto"``, which the budget settles before the first step
    (:data:`autoseg.training.budget.SHORT_SCHEDULE_ITERATIONS`). Resume: the
    checkpoint's settings with the allowed changes, plus the checkpoint to continue from; a run folder
    without a checkpoint yet starts anew (checkpoint None)."""
    unknown = set(given) - {f.name for f in dataclasses.fields(TrainSettings)}
    if unknown:
        raise TrainError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    if given.get("optimizer") == "auto" and "lr" in given:
        raise TrainError("--optimizer auto picks the learning rate with the optimiser (AdamW 1e-3 or SGD 1e-2); "
                         "drop --lr, or choose --optimizer sgd or adamw with it")
    if given.get("optimizer") == "auto" and given.get("time_budget") is None:
        given = {k: v for k, v in given.items() if k != "optimizer"}  # auto means a budget's choice: none here
    # the architecture's recipe as a whole (its optimizer with its lr), unless another optimizer is chosen
    fresh = dict(given) if "optimizer" in given else {**dict(get_architecture(arch).training), **given}
    if (fresh.get("time_budget") is not None and "optimizer" not in fresh and "lr" not in fresh
            and not pretrained):  # the budget picks nnU-Net's SGD or, for a short schedule, AdamW
        fresh["optimizer"] = "auto"
    if not resume:
        if (run_dir / LATEST).is_file() or (run_dir / FINAL).is_file():
            raise TrainError(f"{run_dir} already holds a training run; add --resume to continue it, or delete "
                             f"the folder to start over")
        return TrainSettings(**fresh), None
    path = run_dir / LATEST if (run_dir / LATEST).is_file() else run_dir / FINAL
    if not path.is_file():  # killed before its first checkpoint (or never started): start it anew, so
        return TrainSettings(**fresh), None  # a scheduler can resubmit the same command at any time
    ckpt = load_checkpoint(path)
    stored = TrainSettings.from_dict(ModelRecord.of(ckpt, path).settings)
    if given.get("optimizer") == "auto":  # "the budget's choice": the run made it at its start
        given = {k: v for k, v in given.items() if k != "optimizer"}
    changed = {k for k, v in given.items() if getattr(stored, k) != v}
    refused = changed - RESUMABLE_CHANGES
    if refused:
        detail = ", ".join(f"{k} (run: {getattr(stored, k)!r}, given: {given[k]!r})" for k in sorted(refused))
        raise TrainError(f"--resume cannot change {detail}: the resumed run would differ from the interrupted "
                         f"one; drop these options or start a new run")
    settings = dataclasses.replace(stored, **{k: given[k] for k in changed})
    return settings, ckpt


def model_record(plans, config: str, arch: str, fold, spec, settings) -> ModelRecord:
    """What the run's checkpoints say the model is (for a cascade stage: which stage and model it needs)."""
    dataset = DatasetRecord(name=plans.dataset_name, labels=dict(spec.labels), channel_names=tuple(spec.channel_names),
                            regions_class_order=tuple(spec.regions_class_order) if spec.regions_class_order else None,
                            ignore_label=spec.ignore_label, file_ending=spec.file_ending)
    prev = plans.configuration(config).previous_stage
    return ModelRecord(plans=plans.to_dict(), configuration=config, arch=arch, fold=fold, dataset=dataset,
                       settings=settings.to_dict(), previous_stage=prev,
                       previous_model=model_folder_name(arch, plans.plans_name, prev) if prev else None)


def run_job(job: TrainJob, dist, progress: bool = True, callbacks: Sequence = (), stop=None) -> Path:
    """Build, (resume,) fit and validate one fold; returns its run folder (``stop``: see :func:`train`)."""
    started = time.monotonic()  # a time budget counts from here
    run_dir = job.run_dir
    if dist.is_main:
        RunLock(run_dir).check()  # "another process trains this fold" before any other complaint
    settings, ckpt = resolve_settings(dict(job.settings), run_dir, job.resume, job.arch, job.pretrained is not None)
    record = ModelRecord.of(ckpt, run_dir) if ckpt is not None else None
    trained_on = record.dataset.name if record is not None else None
    if record is not None and trained_on not in ("", job.plans.dataset_name):
        raise TrainError(f"--resume: {run_dir} holds a checkpoint of dataset {trained_on}, not {job.dataset_name}; "
                         f"move it to results/{trained_on} or delete it to train {job.dataset_name} anew")
    if record is not None and record.plans != job.plans.to_dict():
        plans_file = job.workspace.plans_file(job.dataset_name, job.plans.plans_name)
        raise TrainError(f"--resume: {plans_file.name} of {job.dataset_name} changed since {run_dir} was started; "
                         "train a new run (delete the folder) or restore the old plans")
    made = missing_folders(run_dir, job.workspace.root) if dist.is_main else []
    lock = RunLock(run_dir, notify=_tell).acquire() if dist.is_main else None
    done = False  # a failure removes the folders this call made, when they are still empty
    try:
        if lock is not None:
            remove_temporaries(run_dir)
        run, loaders = build_run(job, settings, dist)
        if ckpt is not None:
            restore(run, ckpt)
        elif job.pretrained is not None:
            load_pretrained(run.model, job.pretrained)
        run.network = _wrap(run, dist)
        if stop is not None:
            run.stop = stop
        if settings.time_budget is not None:
            run.budget = make_time_budget(job, run, dist, started)
        history = run.state.history
        # an early-stopped run is finished; continue it as a new run with --pretrained
        finished = run.state.epoch >= settings.epochs or bool(history and history[-1].get("early_stopped"))
        if not finished:
            _fit(run, loaders, progress, callbacks)
        elif dist.is_main:
            _finish_checkpoints(run)
        ddp.barrier(dist)
        validated = (run_dir / "validation" / "summary.json").is_file() and not job.missing_next_stage()
        if dist.is_main and (not finished or not validated):
            validation_started = time.monotonic()
            _final_validation(job, run, progress)
            if run.budget is not None:
                _log_budget_use(run, time.monotonic() - validation_started)
        done = True
    finally:
        if lock is not None:
            lock.release()
        if not done:
            remove_empty(made)
    return run_dir


def _tell(line: str) -> None:
    """A line for the user while the command works (stderr, so stdout keeps only results)."""
    print(line, file=sys.stderr, flush=True)


def missing_folders(folder: Path, root: Path) -> list[Path]:
    """``folder`` and those of its parents below ``root`` that do not exist yet, deepest first: what
    a start that fails before training must remove again."""
    root = Path(root).resolve()
    out = []
    for p in (folder, *folder.parents):
        if p.exists() or p.resolve() == root or root not in p.resolve().parents:
            break
        out.append(p)
    return out


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty: a failed start leaves no half-made run
    folder, and a folder holding anything (an earlier run's files) is never touched."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:  # not empty, or already gone
            return


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files (``.name.XXXX.tmp``, ``.case.nii.gz.XXXX.nii.gz``) a killed run left in
    its folder and ``validation/``; only while holding the run's lock, so no live writer owns them."""
    for folder in (run_dir, run_dir / "validation"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith(".") and not p.name.startswith(LOCK_NAME) and p.is_file():
                    p.unlink(missing_ok=True)


def _finish_checkpoints(run) -> None:
    """A run killed after its last epoch but before ``checkpoint_final.pt`` was written (or before the
    latest checkpoint was removed) gets both done now, as the end of training would have."""
    if not (run.run_dir / FINAL).is_file():
        CheckpointCallback().on_train_end(run)
    (run.run_dir / LATEST).unlink(missing_ok=True)


def build_run(job: TrainJob, settings: TrainSettings, dist) -> tuple[Run, tuple]:
    """The :class:`~autoseg.training.trainer.Run` of a fold (fresh weights) and its batch factories."""
    spec = DatasetSpec.load(job.preprocessed_dir)
    cfg = job.plans.configuration(job.config)
    device = ddp.local_device(dist, resolve_device(settings.device))
    ddp.init(dist, device)
    seed_everything(settings.seed)
    regions = tuple(spec.regions) if spec.has_regions else None
    channels = input_channels(spec, job.previous is not None)  # image (+ previous-stage one-hot) channels
    model = build_model(job.arch, cfg, channels, spec.num_outputs, settings.deep_supervision).to(device)
    loss = make_loss(spec.num_outputs, cfg.batch_dice, regions, spec.ignore_label)
    amp_dtype, use_scaler = resolve_amp(settings.amp, device)
    if device.type == "cpu" and amp_dtype is not None:
        guard_tiny_convolutions(model)  # PyTorch's CPU bf16 gradients of 2-voxel-deep convolutions are wrong
    run = Run(model=model, network=model, loss_fn=loss, optimizer=make_optimizer(model, settings),
              scaler=torch.amp.GradScaler(device.type) if use_scaler else None, settings=settings,
              targets=Targets(spec.num_outputs, regions, spec.ignore_label), device=device, amp_dtype=amp_dtype,
              run_dir=job.run_dir, dist=dist,
              record=model_record(job.plans, job.config, job.arch, job.fold, spec, settings))
    batch = ddp.batch_share(settings.batch_size or cfg.batch_size, dist)
    loaders = make_batch_factories(job.data_folder, job.fold_cases, cfg, spec, settings, batch, dist, device,
                                   job.previous)
    return run, loaders


def make_batch_factories(folder: Path, fold_cases, cfg, spec, settings, batch_size: int, dist, device,
                         previous: PreviousStage | None = None):
    """``(train_batches(start_iteration), val_batches(epoch))`` over the preprocessed cases (with the
    previous-stage channels of a cascade stage)."""
    sampling = Sampling(batch_size=batch_size, seed=settings.seed, oversample_foreground=settings.oversample_foreground,
                        foreground_classes=spec.foreground_classes or None, ignore_label=spec.ignore_label,
                        regions=tuple(spec.regions) if spec.has_regions else None)
    workers = Workers(rank=dist.rank, world_size=dist.world_size, num_workers=settings.num_workers,
                      pin_memory=device.type == "cuda")
    val_loader = make_val_loader(folder, list(fold_cases.val), cfg, sampling, settings.val_iters, workers, previous)

    def train_batches(start_iteration: int):
        return make_train_loader(folder, list(fold_cases.train), cfg, sampling, workers,
                                 start_iteration=start_iteration, previous=previous)

    return train_batches, (lambda epoch: val_loader)


def make_time_budget(job: TrainJob, run: Run, dist, started: float) -> TimeBudget:
    """The run's :class:`~autoseg.training.budget.TimeBudget`: the final validation's network
    evaluations counted from the validation cases' preprocessed shapes (sliding-window patches at
    the validation's step, times the mirrorings), the epoch cap from the run's settings (or the
    plan an interrupted run stored)."""
    cfg = job.plans.configuration(job.config)
    windows = 0
    for case in job.fold_cases.val:
        shape = CaseProperties.load(job.data_folder / f"{case}.json").shape_after_resample
        windows += math.prod(len(window_starts(n, p, 0.5)) for n, p in zip(shape[-len(cfg.patch_size):],
                                                                             cfg.patch_size))
    mirrorings = 2 ** len(cfg.patch_size) if run.settings.val_mirroring else 1
    stored = run.state.budget_plan or {}
    cap = int(stored.get("cap") or run.settings.epochs)
    batch = ddp.batch_share(run.settings.batch_size or cfg.batch_size, dist)
    budget = TimeBudget(run.settings.time_budget, windows * mirrorings, cap, batch)
    budget.session_start = started
    return budget


def _log_budget_use(run: Run, validation_seconds: float) -> None:
    """How the budget was spent, beside its plan: the final validation's actual time and the total."""
    plan = run.state.budget_plan or {}
    used = run.budget.elapsed()
    log_line(run.run_dir, f"time budget {format_duration(run.budget.seconds)}: used {format_duration(used)} "
                          f"({100 * used / run.budget.seconds:.0f}%); final validation took "
                          f"{format_duration(validation_seconds)} (estimated "
                          f"{format_duration(plan.get('final_validation', 0.0))})")


def _wrap(run, dist):
    network = torch.compile(run.model) if run.settings.compile else run.model
    return ddp.wrap(network, dist, run.device)


def _fit(run, loaders, progress: bool, extra_callbacks: Sequence) -> None:
    bar = ProgressBarCallback() if progress else None
    callbacks = [LogCallback(), CheckpointCallback(), *([bar] if bar else []), *extra_callbacks]
    try:
        fit(run, loaders[0], loaders[1], callbacks)
    except (NonFiniteLossError, NonFiniteWeightsError) as e:
        raise TrainingDivergedError(f"{run.run_dir}: {e}; {_kept_checkpoints(run.run_dir)}. Check the data "
                                    "(`autoseg plan --check-only` on the raw dataset; preprocessed files changed by "
                                    "hand: delete the preprocessed folder and rerun `autoseg plan`), or start a new "
                                    "run with --amp fp32 or another --seed") from e
    finally:
        if bar is not None and bar._progress is not None:
            bar._progress.stop()


def _final_validation(job: TrainJob, run: Run, progress: bool) -> Path:
    spec = DatasetSpec.load(job.preprocessed_dir)
    cfg = job.plans.configuration(job.config)
    vjob = ValidationJob(plans=job.plans, config=cfg, spec=spec, data_folder=job.data_folder,
                         raw_folder=job.workspace.raw_dir(job.dataset_name), out_folder=run.run_dir / "validation",
                         case_ids=tuple(job.fold_cases.val), previous=job.previous, next_stages=job.next_stages)
    axes = tuple(range(len(cfg.patch_size))) if run.settings.val_mirroring else ()
    with progress_bar("validation", len(vjob.case_ids), enabled=progress) as advance:
        return validate([run.model], vjob, run.device, run.amp_dtype, axes, run.settings.save_probabilities,
                        progress=advance)


def load_pretrained(model, source: Path) -> None:
    """Fine-tuning: copy weights from a run folder (its final, else best, else latest checkpoint) or
    a checkpoint file. Output heads (the head names of the checkpoint's architecture entry) whose shape
    differs (another number of classes) keep their fresh weights; any other shape difference is an error."""
    source = Path(source)
    path = source
    if source.is_dir():
        found = [source / n for n in (FINAL, BEST, LATEST) if (source / n).is_file()]
        if not found:
            raise TrainError(f"--pretrained {source}: no checkpoint there (checkpoint_final.pt, _best.pt, _latest.pt)")
        path = found[0]
    ckpt = load_checkpoint(path)
    weights = ckpt["model"]
    own = model.state_dict()
    mismatched = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    arch = ARCHITECTURES.get(ModelRecord.of(ckpt, path).arch)
    heads = [k for k in mismatched if arch is not None and arch.is_head(k)]
    others = [k for k in mismatched if k not in heads]
    missing = [k for k in own if k not in weights] + [k for k in weights if k not in own]
    if others or missing:
        bad = (others or missing)[0]
        what = (f"{tuple(weights[bad].shape)} there, {tuple(own[bad].shape)} here" if bad in weights and bad in own
                else "missing there" if bad in own else "missing here")
        raise TrainError(f"--pretrained {path}: incompatible network ({len(others) + len(missing)} tensor(s) differ, "
                         f"e.g. {bad}: {what}); it needs the same architecture and plan")
    model.load_state_dict({k: (own[k] if k in heads else weights[k]) for k in own})
