"""``autoseg train``: command-line options -> :func:`autoseg.api.train` (torch imported inside the command)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from autoseg.cli import EXIT_OK, command, out, workspace_from
from autoseg.models.registry import ARCHITECTURES


def _fold(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown fold '{text}': use 0-4 or 'all'") from None


def _duration(text: str) -> float:
    from autoseg.training.durations import BudgetError, parse_duration

    try:
        return parse_duration(text)
    except BudgetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", nargs="?", default=None,
                   help="planned dataset (name or number); may be left out when only one is planned")
    p.add_argument("--fold", nargs="+", type=_fold, default=[0], metavar="K",
                   help="fold(s) 0-4 trained one after another, or 'all' (every case); default 0")
    p.add_argument("--config", default=None, help="3d_fullres | 3d_lowres | 3d_cascade_fullres (after the 5 "
                   "3d_lowres folds) | 2d (default: the plans' default)")
    p.add_argument("--arch", default=None, help=f"{' | '.join(ARCHITECTURES)} (default: the plan's, the one its "
                                                 "planner preset plans for)")
    p.add_argument("--plans", default=None, metavar="NAME",
                   help="which plans, when the dataset was planned with several presets: the preset (resenc_m) or "
                        "plans name (autosegPlans_resenc_m); default: the default preset's, or the only ones")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 1000; with --time-budget, the most)")
    p.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                   help="wall-clock time for training plus the final validation of each fold (90m, 8h, 2d): the "
                        "run times its first epochs and fits the number of epochs (and the learning-rate schedule) to it")
    p.add_argument("--iters-per-epoch", type=int, default=None, help="training iterations per epoch (default 250)")
    p.add_argument("--val-iters", type=int, default=None, help="validation batches per epoch (default 50)")
    p.add_argument("--early-stop", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better moving-average pseudo Dice")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--amp", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="mixed precision (default auto: fp16 on CUDA, bf16 on CPUs with native bf16)")
    p.add_argument("--optimizer", default=None, choices=["sgd", "adamw", "auto"],
                   help="default: the architecture's (nnU-Net's SGD, momentum 0.99; AdamW for swin_unetr and unetr); "
                        "with --time-budget and no --lr, auto: AdamW 1e-3 when the fitted schedule is shorter than "
                        "1000 iterations, else SGD")
    p.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="initial learning rate of the poly schedule (default: the architecture's: 1e-2 with SGD, "
                        "1e-4 for the transformers)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 12345)")
    p.add_argument("--num-workers", type=int, default=None, metavar="N",
                   help="data augmentation worker processes per GPU/process (default: spare CPU cores)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint; a run without one yet starts "
                        "anew, so a killed job can be resubmitted with the same command")
    p.add_argument("--pretrained", type=Path, default=None, metavar="RUN_DIR",
                   help="start from the weights of another run (fine-tuning)")
    p.add_argument("--save-probabilities", action="store_true", default=None,
                   help="also save validation probabilities (.npz) for ensembling")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--no-val-tta", dest="val_mirroring", action="store_false", default=None,
                   help="final validation without mirroring test-time augmentation (about 8x faster in 3d; the "
                        "Dice is then that of `predict --no-tta`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--logger", default=None, choices=["tensorboard", "mlflow"],
                   help="experiment tracking of settings, per-epoch scalars and the progress plot: tensorboard "
                        "(<run folder>/tensorboard/) or mlflow (the store MLFLOW_TRACKING_URI names); "
                        "pip install -e '.[tracking]'; default: none")


EXIT_SIGNAL = 128  # exit status 128 + signal number, as a shell reports a process ended by a signal

OPTION_TO_SETTING = {"epochs": "epochs", "iters_per_epoch": "iters_per_epoch", "val_iters": "val_iters",
                     "early_stop": "early_stop", "device": "device", "amp": "amp", "seed": "seed",
                     "num_workers": "num_workers", "save_probabilities": "save_probabilities",
                     "compile": "compile", "time_budget": "time_budget",
                     "val_mirroring": "val_mirroring", "optimizer": "optimizer", "lr": "lr"}


def _callbacks(args: argparse.Namespace) -> list:
    """The warning for long CPU schedules, and the experiment tracker of --logger."""
    from autoseg.training.tracking import CpuScheduleWarning, make_logger

    return [CpuScheduleWarning(), *([make_logger(args.logger)] if args.logger else [])]


@command("train", "train a network on a planned dataset (one or more cross-validation folds)", _train_arguments,
         "Train a configuration of a planned dataset on the given folds; writes checkpoints, logs, progress.png "
         "and validation/summary.json to <workdir>/results/<Dataset>/<arch>__<plans>__<config>/fold_<k>/. "
         "Multi-GPU: torchrun --nproc-per-node N -m autoseg train ...")
def run_train(args: argparse.Namespace) -> int:
    from autoseg import api
    from autoseg.training import ddp
    from autoseg.training.session import TrainRequest
    from autoseg.training.stopping import StopSignals, TrainingStopped

    settings = {key: getattr(args, opt) for opt, key in OPTION_TO_SETTING.items() if getattr(args, opt) is not None}
    request = TrainRequest(dataset=args.dataset, folds=tuple(args.fold), config=args.config, arch=args.arch,
                           plans=args.plans, settings=settings, resume=args.resume, pretrained=args.pretrained)
    dist = ddp.detect(os.environ)
    if args.time_budget is not None and dist.is_main and (len(args.fold) > 1 or "all" in args.fold):
        from autoseg.training.durations import format_duration

        out(f"time budget {format_duration(args.time_budget)} for each fold ({len(args.fold)} folds, one after "
            f"another)")
    try:
        with StopSignals() as stop:
            runs = api.train(workspace_from(args), request, dist=dist, progress=not args.no_progress and dist.is_main,
                             callbacks=_callbacks(args), stop=stop)
    except TrainingStopped as e:
        if dist.is_main:
            print(f"autoseg train: {stopped_message(e)}; resume with: {resume_command(args, dist, e.epochs_done != 0)}",
                  file=sys.stderr)
        return EXIT_SIGNAL + e.signum
    finally:
        ddp.shutdown(dist)
    if dist.is_main:
        for run_dir in runs:
            summary = run_dir / "validation" / "summary.json"
            mean = json.loads(summary.read_text()).get("foreground_mean") if summary.is_file() else None
            dice = f", validation Dice {mean:.4f}" if isinstance(mean, float) else ""
            out(f"trained {run_dir}{dice}")
    return EXIT_OK


def stopped_message(e) -> str:
    """What a SIGTERM/SIGINT left: which epochs are saved, and where."""
    name = signal.Signals(e.signum).name
    if e.epochs_done is None:
        return f"stopped by {name} outside the training loop; every file written is whole"
    saved = (f"{e.run_dir} holds the checkpoint of epoch {e.epochs_done}" if e.epochs_done else
             f"no epoch of {e.run_dir} was finished, so it starts anew")
    return f"stopped by {name}; {saved} (the unfinished epoch is dropped and redone exactly)"


def resume_command(args: argparse.Namespace, dist, started: bool) -> str:
    """The command line that continues this run: its options and --resume; a fine-tuning run
    (--pretrained) with no finished epoch is started again as it was (--resume would start it without
    the pretrained weights)."""
    parts = ["autoseg", "train", *([args.dataset] if args.dataset else []), "--fold", *map(str, args.fold)]
    for option in ("config", "arch", "plans", "workdir"):
        if getattr(args, option, None):
            parts += [f"--{option}", str(getattr(args, option))]
    for option in OPTION_TO_SETTING:
        value = getattr(args, option)
        if value is True:
            parts.append(f"--{option.replace('_', '-')}")
        elif value is not None and value is not False:
            parts += [f"--{option.replace('_', '-')}", str(value)]
    parts += ["--no-progress"] if args.no_progress else []
    again = args.pretrained is not None and not started
    parts += ["--pretrained", str(args.pretrained)] if again else ["--resume"]
    text = shlex.join(parts)
    return f"torchrun --nproc-per-node {dist.world_size} -m {text}" if dist.is_distributed else text
