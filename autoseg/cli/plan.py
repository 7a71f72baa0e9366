"""``autoseg plan``, ``convert-msd`` and ``demo-data``: from a raw dataset to plans and preprocessed data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoseg.cli import EXIT_OK, command, out, workspace_from


# --- plan --------------------------------------------------------------------------------------------

def _plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET",
                   help="raw dataset folder, or the name or number of one under <workdir>/raw/")
    p.add_argument("--check-only", action="store_true", help="only run the integrity checks; write nothing")
    p.add_argument("--planner", default="default", metavar="NAME|PATH",
                   help="planner preset from planners/ (default, resenc_m, resenc_l, ...) or a .toml file")
    p.add_argument("--gpu-memory-gb", type=float, default=None, metavar="GB",
                   help="GPU memory to plan patch and batch size for (default: the preset's, 8)")
    p.add_argument("--configs", nargs="+", default=None, metavar="CONFIG",
                   help="preprocess only these configurations (plans.json always lists all)")
    p.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="parallel worker processes (default: CPU count, fewer when memory is short)")
    p.add_argument("--fresh", action="store_true", help="recompute the fingerprint even if the raw data look unchanged")
    p.add_argument("--no-progress", action="store_true", help="do not draw progress bars")


def _fmt(values) -> str:
    return "x".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values)


@command("plan", "check, fingerprint, plan and preprocess a raw dataset", _plan_arguments,
         "Check a raw dataset, write fingerprint.json, plans.json, the preprocessed cases and splits.json "
         "under <workdir>/preprocessed/<Dataset>/. Rerunning skips finished work.")
def run_plan(args: argparse.Namespace) -> int:
    from autoseg import api

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    ws = workspace_from(args)
    raw = ws.resolve_raw(args.dataset)
    result = api.plan(raw, ws, planner=args.planner, gpu_memory_gb=args.gpu_memory_gb, configs=args.configs,
                      check_only=args.check_only, workers=args.workers, progress=not args.no_progress,
                      fresh=args.fresh)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if result.checked_only:
        out(f"{result.dataset_name}: {result.n_cases} training case(s) checked, no problems found ({raw})")
        return EXIT_OK
    _print_plan(result)
    return EXIT_OK


def _splits_note(result) -> str:
    """What the plan summary says about splits.json: user folds, or earlier folds that were kept."""
    from autoseg.splits import RULE_EARLIER, Splits

    if result.user_splits:
        return " (user-provided)"
    if Splits.load(result.splits).rule == RULE_EARLIER:
        return " (kept from an earlier plan: not nnU-Net's folds; delete it and plan again to get them)"
    return ""


def _print_plan(result) -> None:
    from autoseg.planning.plans import DEFAULT_PLANS_NAME, Plans

    plans = Plans.load(result.plans)
    done = f"{len(result.computed)} preprocessed now, {len(result.skipped)} already done"
    out(f"{result.dataset_name}: {result.n_cases} case(s) planned and preprocessed ({done})")
    for name, cfg in plans.configurations.items():
        star = " (default)" if name == plans.default_configuration else ""
        out(f"  {name}{star}: spacing {_fmt(cfg.spacing)} mm, patch {_fmt(cfg.patch_size)}, "
            f"batch {cfg.batch_size}, {len(cfg.features)} stages")
    rows = [("fingerprint", result.fingerprint), ("plans", result.plans),
            ("splits", f"{result.splits}{_splits_note(result)}"),
            ("dataset.json", result.dataset_json), ("source", result.source)]
    rows += [(f"data {name}", folder) for name, folder in (result.data_folders or {}).items()]
    width = max(len(k) for k, _ in rows)
    out("artifacts:")
    for key, value in rows:
        out(f"  {key:<{width}}  {value}")
    if plans.plans_name != DEFAULT_PLANS_NAME:  # `train` takes the default preset's plans unless told
        out(f"next: autoseg train {result.dataset_name} --fold 0 --plans {plans.plans_name}")


# --- convert-msd, demo-data --------------------------------------------------------------------------

def _msd_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task_dir", metavar="TASK_DIR", type=Path, help="an MSD task folder such as Task04_Hippocampus")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, nargs="?", default=None,
                   help="folder to put DatasetXXX_Name in (default: <workdir>/raw)")
    p.add_argument("--dataset-id", type=int, default=None, help="dataset number (default: the task number)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing converted dataset")


@command("convert-msd", "convert a Medical Segmentation Decathlon task to the raw layout", _msd_arguments)
def run_convert_msd(args: argparse.Namespace) -> int:
    from autoseg import api

    out_dir = args.out_dir if args.out_dir is not None else workspace_from(args).raw
    target = api.convert_msd(args.task_dir, out_dir, dataset_id=args.dataset_id, overwrite=args.overwrite)
    out(f"converted {args.task_dir} -> {target}")
    out(f"next: autoseg plan {target}")
    return EXIT_OK


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", type=Path, nargs="?", default=None,
                   help="folder to put the toy dataset in (default: <workdir>/raw)")
    p.add_argument("--cases", type=int, default=8, help="number of training cases (default 8)")
    p.add_argument("--test-cases", type=int, default=0, help="extra cases in imagesTs/labelsTs (default 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--modality", default="CT", type=str.upper, choices=["CT", "MR"], help="CT or MR (default CT)")
    p.add_argument("--channels", type=int, default=1, help="MR sequences per case (default 1)")
    p.add_argument("--anisotropic", action="store_true", help="thick slices (0.8 x 0.8 x 4 mm)")
    p.add_argument("--regions", action="store_true", help="nested region labels (BraTS-like)")
    p.add_argument("--name", default=None, help="dataset folder name (default Dataset999_Toy<modality>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing toy dataset")


@command("demo-data", "write a small synthetic dataset for trying autoseg", _demo_arguments)
def run_demo_data(args: argparse.Namespace) -> int:
    from autoseg import api

    out_dir = args.out if args.out is not None else workspace_from(args).raw
    target = api.demo_data(out_dir, n_cases=args.cases, seed=args.seed, modality=args.modality,
                           anisotropic=args.anisotropic, n_channels=args.channels, regions=args.regions,
                           n_test=args.test_cases, name=args.name, overwrite=args.overwrite)
    out(f"toy dataset written to {target}")
    out(f"next: autoseg plan {target}")
    return EXIT_OK
