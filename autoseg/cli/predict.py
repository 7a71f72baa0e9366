"""CLI commands ``predict``, ``ensemble``, ``export``, ``import``, ``postprocess`` and ``find-best``
(registered in :mod:`autoseg.cli`; torch is imported inside the commands only).

``predict`` and ``ensemble`` exit with 1 when any case failed (the others are still written) and
list the failed cases on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from autoseg.cli import EXIT_FAILURE, EXIT_OK, command, dataset_spec, out, workspace_from
from autoseg.models.registry import ARCHITECTURES, IMPORTED

BACKEND_CHOICES = ("auto", "torch", "openvino")  # autoseg.inference.backends.BACKENDS (not imported: torch)
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")


def _model_options(p: argparse.ArgumentParser, dataset_positional: bool = False) -> None:
    if dataset_positional:
        p.add_argument("dataset", metavar="DATASET", nargs="?", default=None,
                       help="trained dataset (name or number); may be left out when only one is trained")
    else:
        p.add_argument("-d", "--dataset", default=None,
                       help="trained dataset (name or number); may be left out when only one is trained")
    p.add_argument("--config", default=None, help="configuration (3d_fullres, 2d, ...) when several are trained")
    p.add_argument("--arch", default=None,
                   help=f"architecture when several are trained ({', '.join([*ARCHITECTURES, *IMPORTED])})")
    p.add_argument("--plans", default=None, metavar="NAME",
                   help="plans (planner preset such as resenc_m, or plans name) when several are trained")


def _model_choice(args: argparse.Namespace):
    """The :class:`~autoseg.inference.choice.ModelChoice` that ``_model_options``/``_folds_option``/``--model`` give."""
    from autoseg.inference.choice import ModelChoice

    return ModelChoice(dataset=args.dataset, config=args.config, arch=args.arch, plans=args.plans,
                       model=getattr(args, "model", None), folds=args.folds, checkpoint=args.checkpoint)


def _folds_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", nargs="+", default=None, metavar="K",
                   help="folds to use (numbers or 'all'; default: every fold whose training finished)")
    p.add_argument("--checkpoint", default="final", choices=["final", "best"],
                   help="final (default) or best (highest moving-average pseudo Dice) checkpoint")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", dest="in_dir", required=True, type=Path, metavar="IN_DIR",
                   help="folder of {case}_0000 ... channel files (.nii.gz, .nrrd, .mha; {case}.nii.gz for one channel)")
    p.add_argument("-o", "--output", dest="out_dir", required=True, type=Path, metavar="OUT_DIR",
                   help="folder for the {case} label maps (same geometry and format as the input)")
    _model_options(p)
    _folds_option(p)
    p.add_argument("--model", type=Path, default=None, metavar="RUN_DIR|ZIP",
                   help="predict with this model folder, fold folder or exported .zip instead of -d")
    p.add_argument("--step", type=float, default=0.5, help="sliding-window step as a fraction of the patch (0.5)")
    p.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster)")
    p.add_argument("--save-probabilities", action="store_true", help="also write {case}.npz probabilities (ensembles)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto (CPU: openvino when installed, else torch; GPU: torch), torch, or openvino "
                        "(CPU only; pip install openvino)")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="auto (fp16 on CUDA; on the CPU int8 when `autoseg quantize` made and passed it for every "
                        "fold, else bf16 on CPUs with native bf16 (AVX-512 BF16, AMX), else fp32), fp32, bf16, "
                        "fp16 (GPU) or int8 (OpenVINO on the CPU; not exact)")
    p.add_argument("--overwrite", action="store_true", help="predict cases whose outputs exist already")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _source_arguments(p)


OUTPUT_TYPES = ("nifti", "nrrd", "seg.nrrd", "dicom-seg", "rtstruct")  # autoseg.inference.outputs.OUTPUT_TYPES


def _source_arguments(p: argparse.ArgumentParser) -> None:
    """DICOM input, output types, statistics and sharding (autoseg.inference.sources)."""
    p.add_argument("--output-type", default=None, choices=OUTPUT_TYPES,
                   help="label-map format: nifti ({case}.nii.gz), nrrd, seg.nrrd (3D Slicer segmentation), dicom-seg "
                        "({case}.seg.dcm) or rtstruct ({case}.rtstruct.dcm; both for DICOM input); default: the "
                        "input's format, nifti for DICOM input")
    p.add_argument("--series-channels", nargs="+", default=(), metavar="PATTERN",
                   help="multi-channel models and DICOM folders/zips of several series: one pattern per model "
                        "channel, in channel order: a glob on SeriesDescription (case-insensitive) or a SeriesNumber")
    p.add_argument("--statistics", action="store_true",
                   help="write statistics.json/.csv: per case and label volume (mL), voxels, intensity of each "
                        "channel (mean/std/min/max), bounding box (mm)")
    p.add_argument("--num-parts", type=int, default=1, metavar="N",
                   help="split the sorted cases into N parts and predict only --part-id's (default 1: all)")
    p.add_argument("--part-id", type=int, default=0, metavar="K", help="which part to predict, 0 to N-1 (default 0)")


def _report(report, what: str) -> int:
    parts = [f"{len(report.written)} written"]
    if report.skipped:
        parts.append(f"{len(report.skipped)} skipped (outputs exist; --overwrite to redo)")
    if report.failed:
        parts.append(f"{len(report.failed)} failed")
    engine = f" with {report.engine}" if report.engine and report.engine != "ensemble" else ""
    out(f"{what}: {', '.join(parts)} in {report.seconds:.1f} s{engine} -> {report.out_dir}")
    for case, message in report.failed:
        print(f"failed: {case}: {message}", file=sys.stderr)
    for note in getattr(report, "notes", ()):
        print(f"note: {note}", file=sys.stderr)
    for line in getattr(report, "summary", ()):
        out(line)
    return EXIT_OK if report.ok else EXIT_FAILURE


@command("predict", "segment a folder of images with a trained model", _predict_arguments,
         "Predict every case of IN_DIR with the trained model of a dataset (or --model) into OUT_DIR: same "
         "preprocessing as training, sliding window with mirroring, softmax averaged over folds, written with the "
         "input's exact geometry. Exit code 1 when any case failed (the others are written).")
def run_predict(args: argparse.Namespace) -> int:
    from autoseg import api
    from autoseg.inference.choice import PredictOptions
    from autoseg.inference.sources import check_shard

    check_shard(args.num_parts, args.part_id)  # before the model is loaded
    options = PredictOptions(step=args.step, tta=not args.no_tta, save_probabilities=args.save_probabilities,
                             device=args.device, backend=args.backend, precision=args.precision,
                             overwrite=args.overwrite, progress=not args.no_progress, output_type=args.output_type,
                             series_channels=tuple(args.series_channels), num_parts=args.num_parts,
                             part_id=args.part_id, statistics=args.statistics)
    report = api.predict(workspace_from(args), args.in_dir, args.out_dir, _model_choice(args), options)
    return _report(report, "predicted")


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    # defaults: autoseg.inference.quantize.DEFAULT_* (not imported here: it imports torch)
    _model_options(p, dataset_positional=True)
    _folds_option(p)
    p.add_argument("--model", type=Path, default=None, metavar="RUN_DIR",
                   help="quantize this model folder or fold folder instead of DATASET's")
    p.add_argument("--patches", type=int, default=64, help="calibration patches per fold (default 64)")
    p.add_argument("--check-cases", type=int, default=10,
                   help="validation cases per fold on which int8 is checked against f32 (default 10)")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="largest Dice loss per class that passes the check (default 0.005)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration patches (default 0)")
    p.add_argument("--raw-data", type=Path, default=None, metavar="DATASET_DIR",
                   help="raw dataset to preprocess with the model's plans first (models imported from nnU-Net, "
                        "which come without preprocessed data)")


@command("quantize", "make int8 networks for fast CPU prediction, checked against fp32", _quantize_arguments,
         "Per fold: calibrate int8 quantization of the network (OpenVINO + NNCF; pip install -e '.[quantize]') "
         "on patches of the fold's training cases, then predict the fold's validation cases with int8 and f32 and "
         "compare their Dice. A network that passes is used by `autoseg predict` on the CPU (--precision auto or "
         "int8); --precision fp32 keeps the exact path.")
def run_quantize(args: argparse.Namespace) -> int:
    from autoseg import api

    results = api.quantize(workspace_from(args), _model_choice(args), raw_data=args.raw_data, patches=args.patches,
                           check_cases=args.check_cases, tolerance=args.tolerance, seed=args.seed, progress=out)
    passed = True
    for r in results:
        c = r.record["check"]
        dice = ", ".join(f"{k} {_fmt(c['dice_int8'][k])} (f32 {_fmt(c['dice_fp32'][k])})" for k in c["dice_int8"])
        verdict = "passed" if c["passed"] else f"FAILED (tolerance {c['tolerance']})"
        agreement = f"{100 * c['voxel_agreement']:.2f}%" if c["voxel_agreement"] is not None else "n/a"
        out(f"fold {r.fold}: int8 Dice {dice}; labels agree on {agreement} of voxels; largest Dice loss "
            f"{c['max_dice_drop']:.4f}: {verdict} -> {r.model}")
        passed = passed and c["passed"]
    if passed:
        out("`autoseg predict` on the CPU now runs these int8 networks (--precision fp32 for the exact path)")
        return EXIT_OK
    out("some folds failed the check: `autoseg predict` keeps f32 (bf16 on CPUs with native bf16) for this model "
        "(--precision int8 is refused)")
    return EXIT_FAILURE


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("in_dirs", nargs="+", type=Path, metavar="IN_DIR",
                   help="folders predicted with --save-probabilities ({case}.npz next to {case} label maps)")
    p.add_argument("-o", "--output", dest="out_dir", required=True, type=Path, help="folder for the ensemble")
    p.add_argument("--postprocessing", type=Path, default=None, metavar="JSON",
                   help="postprocessing.json to apply (find-best writes one for a winning ensemble)")
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset whose regions_class_order to use (only for region models' validation files)")
    p.add_argument("--save-probabilities", action="store_true", help="also write the averaged {case}.npz")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist already")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("ensemble", "average the saved probabilities of several predictions", _ensemble_arguments)
def run_ensemble(args: argparse.Namespace) -> int:
    from autoseg import api

    rco = None
    if args.dataset is not None:
        spec = dataset_spec(args.dataset, args)
        rco = tuple(spec.regions_class_order) if spec.has_regions else ()
    report = api.ensemble(args.in_dirs, args.out_dir, postprocessing=args.postprocessing,
                                  regions_class_order=rco, save_probabilities=args.save_probabilities,
                                  overwrite=args.overwrite, progress=not args.no_progress)
    return _report(report, "ensembled")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="model folder (results/<Dataset>/<arch>__<plans>__<config>), fold "
                                              "folder, or a trained dataset's name or number")
    p.add_argument("-o", "--output", dest="out_zip", required=True, type=Path, help="zip file to write (must end in .zip)")
    p.add_argument("--config", default=None, help="configuration, when RUN is a dataset with several")
    p.add_argument("--arch", default=None, help="architecture, when RUN is a dataset with several")
    p.add_argument("--plans", default=None, metavar="NAME", help="plans (preset or plans name), when RUN is a "
                                                                 "dataset with several")
    _folds_option(p)
    p.add_argument("--onnx", action="store_true",
                   help="also export each fold's network as ONNX, checked with onnxruntime (pip install -e '.[onnx]')")


@command("export", "write a trained model to a self-contained zip", _export_arguments)
def run_export(args: argparse.Namespace) -> int:
    from autoseg import api
    from autoseg.inference.choice import ModelChoice

    choice = ModelChoice(config=args.config, arch=args.arch, plans=args.plans, folds=args.folds,
                         checkpoint=args.checkpoint)
    path = api.export(workspace_from(args), args.run, args.out_zip, choice, onnx=args.onnx)
    out(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    out(f"on another machine: autoseg import {path.name}  (or: autoseg predict --model {path.name} -i IN -o OUT)")
    return EXIT_OK


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("zip", type=Path, metavar="MODEL",
                   help="zip written by `autoseg export`, an nnU-Net v2 results folder "
                        "(<Trainer>__<Plans>__<configuration>) or a zip of nnUNetv2_export_model_to_zip")
    p.add_argument("--overwrite", action="store_true", help="replace a model installed at the same place")
    p.add_argument("--allow-trainer", action="append", default=[], metavar="NAME",
                   help="nnU-Net models: accept this custom trainer (one that changes only training, not the "
                        "network); repeatable")


@command("import", "install an exported model (autoseg or nnU-Net v2) into the workspace", _import_arguments)
def run_import(args: argparse.Namespace) -> int:
    from autoseg import api

    targets = api.import_(workspace_from(args), args.zip, overwrite=args.overwrite,
                          allowed_trainers=args.allow_trainer)
    for target in targets:
        out(f"installed {target}")
    out(f"next: autoseg predict -i IN_DIR -o OUT_DIR --model {targets[0]}")
    return EXIT_OK


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="worker processes for scoring (default: up to 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _postprocess_arguments(p: argparse.ArgumentParser) -> None:
    _model_options(p, dataset_positional=True)
    _workers(p)


@command("postprocess", "decide largest-component post-processing on cross-validation", _postprocess_arguments,
         "Merge the validation predictions of all folds of a trained model, decide per class whether keeping only "
         "the largest connected component improves Dice, and save postprocessing.json in the model folder; "
         "`autoseg predict` applies it.")
def run_postprocess(args: argparse.Namespace) -> int:
    from autoseg import api
    from autoseg.postprocessing import PostprocessingDecision

    path = api.postprocess(workspace_from(args), args.dataset, config=args.config, arch=args.arch,
                           workers=args.workers, progress=not args.no_progress, plans=args.plans)
    d = PostprocessingDecision.load(path)
    kept = [", ".join(map(str, g)) for g in d.keep_largest_per_target]
    out(f"largest foreground component: {'yes' if d.keep_largest_foreground else 'no'}; per class/region: "
        f"{'; '.join(kept) if kept else 'none'}")
    out(f"written: {path}")
    return EXIT_OK


def _find_best_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", nargs="?", default=None,
                   help="trained dataset (name or number); may be left out when only one is trained")
    p.add_argument("--configs", nargs="+", default=None, metavar="CONFIG", help="only these configurations")
    p.add_argument("--no-ensembles", action="store_true", help="do not try pairwise ensembles")
    _workers(p)


@command("find-best", "rank trained configurations and ensembles on cross-validation", _find_best_arguments,
         "Compare every trained model (all folds finished) and every pair of them (validation probabilities "
         "averaged) by foreground-mean Dice on cross-validation; decide post-processing for the best and write "
         "results/<Dataset>/inference_instructions.txt with the predict command.")
def run_find_best(args: argparse.Namespace) -> int:
    from autoseg import api
    from autoseg.inference.crossval import INSTRUCTIONS

    ws = workspace_from(args)
    result = api.find_best(ws, args.dataset, configs=args.configs, ensembles=not args.no_ensembles,
                           workers=args.workers, progress=not args.no_progress)
    for c in result.candidates:
        out(f"  {c.foreground_dice:.4f}  {c.name}{'  <- best' if c.name == result.best else ''}")
    for note in result.notes:
        out(f"note: {note}")
    out("predict with:")
    for cmd in result.commands:
        out(f"  {cmd}")
    out(f"written: {ws.results_dir(result.dataset_name) / INSTRUCTIONS}")
    return EXIT_OK
