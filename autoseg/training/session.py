"""``autoseg train``: train one configuration on one or more folds of a planned dataset.

Run folder: ``<workdir>/results/<Dataset>/<arch>__<plans_name>__<config>/fold_<k>/`` with
checkpoints, ``log.jsonl``, ``training_log.txt``, ``progress.png`` and ``validation/`` (end-of-training
full-volume predictions of the fold's validation cases and ``summary.json``). Folds run one after
another; ``all`` trains on every case. Under torchrun every rank calls :func:`train` with its
:class:`~autoseg.training.ddp.DistContext`; rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoseg.workspace import Workspace

# Settings that may change when resuming; any other difference would make the resumed run differ
# from the uninterrupted one, so it is refused.
RESUMABLE_CHANGES = frozenset({"epochs", "early_stop", "device", "num_workers", "compile", "save_probabilities",
                               "val_mirroring"})


class TrainError(ValueError):
    """A training request that cannot run as given (the message says what to change)."""


def run_dir_for(workspace: Workspace, dataset_name: str, arch: str, plans_name: str, config: str,
                fold: int | str) -> Path:
    return workspace.results_dir(dataset_name) / f"{arch}__{plans_name}__{config}" / f"fold_{fold}"


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


def train(workspace: Workspace, dataset_name: str | None = None, folds: Sequence[int | str] = (0,),
          config: str | None = None, arch: str | None = None, settings: Mapping[str, Any] | None = None,
          resume: bool = False, pretrained: Path | None = None, dist=None, progress: bool = True,
          callbacks: Sequence = (), plans_name: str | None = None) -> list[Path]:
    """Train ``config`` (default: the plans') with ``arch`` (default: the plan's) on each fold.

    ``plans_name`` picks the dataset's plans by plans name or planner preset (``resenc_m``); default:
    the default preset's plans, or the only plans there (:func:`~autoseg.planning.plans.find_plans`).

    ``settings`` holds the :class:`~autoseg.training.trainer.TrainSettings` fields chosen
    explicitly; on ``resume`` the run's stored settings are used and only fields in
    :data:`RESUMABLE_CHANGES` may differ. Returns the run folders."""
    from autoseg.models import MODELS
    from autoseg.planning.plans import Plans, find_plans
    from autoseg.splits import Splits
    from autoseg.training import ddp

    dist = dist or ddp.SINGLE
    name = workspace.resolve_planned(dataset_name)
    pre = workspace.preprocessed_dir(name)
    try:
        plans_file = find_plans(pre, plans_name)
    except ValueError as e:
        raise TrainError(str(e)) from None
    plans = Plans.load(plans_file)
    config = config or plans.default_configuration
    if config not in plans.configurations:
        raise TrainError(f"configuration '{config}' is not planned for {name}; choices: "
                         f"{', '.join(plans.configurations)}")
    arch = arch or plans.configurations[config].architecture
    if arch not in MODELS:
        raise TrainError(f"unknown architecture '{arch}'; choices: {', '.join(MODELS)}")
    splits = Splits.load(pre / "splits.json")
    fold_list = parse_folds(folds, len(splits.folds))
    if resume and pretrained is not None:
        raise TrainError("--resume continues a run and --pretrained starts a new one from other weights; "
                         "use one of them")
    runs = []
    for fold in fold_list:
        run_dir = run_dir_for(workspace, name, arch, plans.plans_name, config, fold)
        runs.append(train_fold(workspace, name, plans, config, arch, splits.fold(fold), fold, run_dir,
                               dict(settings or {}), resume, pretrained, dist, progress, callbacks))
    return runs


def resolve_settings(given: dict[str, Any], run_dir: Path, resume: bool):
    """Fresh run: the given settings over the defaults. Resume: the checkpoint's settings with the
    allowed changes, plus the checkpoint to continue from; a run folder without a checkpoint yet
    starts anew (checkpoint None)."""
    from autoseg.training.checkpoint import FINAL, LATEST, load_checkpoint
    from autoseg.training.trainer import TrainSettings

    unknown = set(given) - {f.name for f in dataclasses.fields(TrainSettings)}
    if unknown:
        raise TrainError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    if not resume:
        if (run_dir / LATEST).is_file() or (run_dir / FINAL).is_file():
            raise TrainError(f"{run_dir} already holds a training run; add --resume to continue it, or delete "
                             f"the folder to start over")
        return TrainSettings(**given), None
    path = run_dir / LATEST if (run_dir / LATEST).is_file() else run_dir / FINAL
    if not path.is_file():  # killed before its first checkpoint (or never started): start it anew, so
        return TrainSettings(**given), None  # a scheduler can resubmit the same command at any time
    ckpt = load_checkpoint(path)
    stored = TrainSettings.from_dict(ckpt["settings"])
    changed = {k for k, v in given.items() if getattr(stored, k) != v}
    refused = changed - RESUMABLE_CHANGES
    if refused:
        detail = ", ".join(f"{k} (run: {getattr(stored, k)!r}, given: {given[k]!r})" for k in sorted(refused))
        raise TrainError(f"--resume cannot change {detail}: the resumed run would differ from the interrupted "
                         f"one; drop these options or start a new run")
    settings = dataclasses.replace(stored, **{k: given[k] for k in changed})
    return settings, ckpt


def _meta(plans, config: str, arch: str, fold, spec) -> dict[str, Any]:
    """What a checkpoint needs to describe itself (primitives only)."""
    return {
        "plans": plans.to_dict(), "configuration": config, "arch": arch, "fold": fold,
        "dataset": {"name": plans.dataset_name, "labels": dict(spec.labels), "channel_names": list(spec.channel_names),
                    "regions_class_order": list(spec.regions_class_order) if spec.regions_class_order else None,
                    "ignore_label": spec.ignore_label, "file_ending": spec.file_ending},
    }


def train_fold(workspace: Workspace, name: str, plans, config: str, arch: str, fold_cases, fold, run_dir: Path,
               given: dict[str, Any], resume: bool, pretrained: Path | None, dist, progress: bool,
               callbacks: Sequence) -> Path:
    """Build, (resume,) fit and validate one fold; returns its run folder."""
    from autoseg.training import ddp
    from autoseg.training.runlock import RunLock

    if dist.is_main:
        RunLock(run_dir).check()  # "another process trains this fold" before any other complaint
    settings, ckpt = resolve_settings(given, run_dir, resume)
    trained_on = (ckpt or {}).get("dataset", {}).get("name")
    if ckpt is not None and trained_on not in (None, plans.dataset_name):
        raise TrainError(f"--resume: {run_dir} holds a checkpoint of dataset {trained_on}, not {name}; move it to "
                         f"results/{trained_on} or delete it to train {name} anew")
    if ckpt is not None and ckpt["plans"] != plans.to_dict():
        from autoseg.planning.plans import plans_path

        raise TrainError(f"--resume: {plans_path(workspace.preprocessed_dir(name), plans.plans_name).name} of {name} "
                         f"changed since {run_dir} was started; train a new run (delete the folder) or restore the "
                         "old plans")
    lock = RunLock(run_dir).acquire() if dist.is_main else None
    try:
        if lock is not None:
            remove_temporaries(run_dir)
        run, loaders = build_run(workspace, name, plans, config, arch, fold_cases, fold, run_dir, settings, dist)
        if ckpt is not None:
            from autoseg.training.checkpoint import restore

            restore(run, ckpt)
        elif pretrained is not None:
            load_pretrained(run.model, pretrained)
        run.network = _wrap(run, dist)
        history = run.state.history
        # an early-stopped run is finished; continue it as a new run with --pretrained
        finished = run.state.epoch >= settings.epochs or bool(history and history[-1].get("early_stopped"))
        if not finished:
            _fit(run, loaders, progress, callbacks)
        elif dist.is_main:
            _finish_checkpoints(run)
        ddp.barrier(dist)
        if dist.is_main and (not finished or not (run_dir / "validation" / "summary.json").is_file()):
            _final_validation(workspace, name, plans, config, run, fold_cases, progress)
    finally:
        if lock is not None:
            lock.release()
    return run_dir


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files (``.name.XXXX.tmp``, ``.case.nii.gz.XXXX.nii.gz``) a killed run left in
    its folder and ``validation/``; only while holding the run's lock, so no live writer owns them."""
    from autoseg.training.runlock import LOCK_NAME

    for folder in (run_dir, run_dir / "validation"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith(".") and not p.name.startswith(LOCK_NAME) and p.is_file():
                    p.unlink(missing_ok=True)


def _finish_checkpoints(run) -> None:
    """A run killed after its last epoch but before ``checkpoint_final.pt`` was written (or before the
    latest checkpoint was removed) gets both done now, as the end of training would have."""
    from autoseg.training.checkpoint import FINAL, LATEST, CheckpointCallback

    if not (run.run_dir / FINAL).is_file():
        CheckpointCallback().on_train_end(run)
    (run.run_dir / LATEST).unlink(missing_ok=True)


def build_run(workspace, name, plans, config, arch, fold_cases, fold, run_dir, settings, dist):
    """The :class:`~autoseg.training.trainer.Run` of a fold (fresh weights) and its batch factories."""
    import torch

    from autoseg.dataset import DatasetSpec
    from autoseg.models import build_model
    from autoseg.preprocessing import data_folder
    from autoseg.training import ddp
    from autoseg.training.losses import make_loss
    from autoseg.training.trainer import Run, Targets, make_optimizer, resolve_amp, resolve_device, seed_everything

    spec = DatasetSpec.load(workspace.preprocessed_dir(name))
    cfg = plans.configuration(config)
    device = ddp.local_device(dist, resolve_device(settings.device))
    ddp.init(dist, device)
    seed_everything(settings.seed)
    regions = tuple(spec.regions) if spec.has_regions else None
    model = build_model(arch, cfg, spec.num_channels, spec.num_outputs, settings.deep_supervision).to(device)
    loss = make_loss(spec.num_outputs, cfg.batch_dice, regions, spec.ignore_label)
    amp_dtype, use_scaler = resolve_amp(settings.amp, device)
    run = Run(model=model, network=model, loss_fn=loss, optimizer=make_optimizer(model, settings),
              scaler=torch.amp.GradScaler(device.type) if use_scaler else None, settings=settings,
              targets=Targets(spec.num_outputs, regions, spec.ignore_label), device=device, amp_dtype=amp_dtype,
              run_dir=run_dir, dist=dist, meta=_meta(plans, config, arch, fold, spec))
    folder = data_folder(workspace.preprocessed_dir(name), plans, config)
    batch = ddp.batch_share(settings.batch_size or cfg.batch_size, dist)
    loaders = make_batch_factories(folder, fold_cases, cfg, spec, settings, batch, dist, device)
    return run, loaders


def make_batch_factories(folder: Path, fold_cases, cfg, spec, settings, batch_size: int, dist, device):
    """``(train_batches(start_iteration), val_batches(epoch))`` over the preprocessed cases."""
    from autoseg.training.loader import make_train_loader, make_val_loader

    common = dict(batch_size=batch_size, seed=settings.seed, oversample_foreground=settings.oversample_foreground,
                  rank=dist.rank, world_size=dist.world_size, num_workers=settings.num_workers,
                  pin_memory=device.type == "cuda", foreground_classes=spec.foreground_classes or None,
                  ignore_label=spec.ignore_label, regions=tuple(spec.regions) if spec.has_regions else None)
    val_loader = make_val_loader(folder, list(fold_cases.val), cfg, num_batches=settings.val_iters, **common)

    def train_batches(start_iteration: int):
        return make_train_loader(folder, list(fold_cases.train), cfg, start_iteration=start_iteration, **common)

    return train_batches, (lambda epoch: val_loader)


def _wrap(run, dist):
    import torch

    from autoseg.training import ddp

    network = torch.compile(run.model) if run.settings.compile else run.model
    return ddp.wrap(network, dist, run.device)


def _fit(run, loaders, progress: bool, extra_callbacks: Sequence) -> None:
    from autoseg.training.checkpoint import CheckpointCallback
    from autoseg.training.logging import LogCallback, ProgressBarCallback
    from autoseg.training.trainer import fit

    bar = ProgressBarCallback() if progress else None
    callbacks = [LogCallback(), CheckpointCallback(), *([bar] if bar else []), *extra_callbacks]
    try:
        fit(run, loaders[0], loaders[1], callbacks)
    finally:
        if bar is not None and bar._progress is not None:
            bar._progress.stop()


def _final_validation(workspace, name, plans, config, run, fold_cases, progress: bool) -> Path:
    from autoseg.api import find_raw_dir
    from autoseg.dataset import DatasetSpec
    from autoseg.preprocessing import data_folder
    from autoseg.progress import progress_bar
    from autoseg.training.validation import ValidationJob, validate

    spec = DatasetSpec.load(workspace.preprocessed_dir(name))
    cfg = plans.configuration(config)
    job = ValidationJob(plans=plans, config=cfg, spec=spec,
                        data_folder=data_folder(workspace.preprocessed_dir(name), plans, config),
                        raw_folder=find_raw_dir(workspace, name), out_folder=run.run_dir / "validation",
                        case_ids=tuple(fold_cases.val))
    axes = tuple(range(len(cfg.patch_size))) if run.settings.val_mirroring else ()
    with progress_bar("validation", len(job.case_ids), enabled=progress) as advance:
        return validate([run.model], job, run.device, run.amp_dtype, axes, run.settings.save_probabilities,
                        progress=advance)


def load_pretrained(model, source: Path) -> None:
    """Fine-tuning: copy weights from a run folder (its final, else best, else latest checkpoint) or
    a checkpoint file. Output heads whose shape differs (another number of classes) keep their fresh
    weights; any other shape difference is an error."""
    from autoseg.training.checkpoint import BEST, FINAL, LATEST, load_checkpoint

    source = Path(source)
    path = source
    if source.is_dir():
        found = [source / n for n in (FINAL, BEST, LATEST) if (source / n).is_file()]
        if not found:
            raise TrainError(f"--pretrained {source}: no checkpoint there (checkpoint_final.pt, _best.pt, _latest.pt)")
        path = found[0]
    weights = load_checkpoint(path)["model"]
    own = model.state_dict()
    mismatched = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    heads = [k for k in mismatched if "output_block" in k or "super_head" in k or k.startswith("out.")]
    others = [k for k in mismatched if k not in heads]
    missing = [k for k in own if k not in weights] + [k for k in weights if k not in own]
    if others or missing:
        bad = (others or missing)[0]
        what = (f"{tuple(weights[bad].shape)} there, {tuple(own[bad].shape)} here" if bad in weights and bad in own
                else "missing there" if bad in own else "missing here")
        raise TrainError(f"--pretrained {path}: incompatible network ({len(others) + len(missing)} tensor(s) differ, "
                         f"e.g. {bad}: {what}); it needs the same architecture and plan")
    model.load_state_dict({k: (own[k] if k in heads else weights[k]) for k in own})
