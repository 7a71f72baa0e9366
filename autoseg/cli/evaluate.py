"""CLI commands ``autoseg evaluate`` and ``autoseg show`` (registered in :mod:`autoseg.cli`; SciPy and the
metrics are imported inside the commands only)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from autoseg.cli import EXIT_OK, command, dataset_spec, out

# autoseg.evaluation.metrics.DEFAULT_TOLERANCE_MM (not imported here: SciPy; a test checks they agree)
DEFAULT_TOLERANCE_MM = 2.0


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("gt_dir", metavar="GT_DIR", type=Path, help="folder of reference label maps {case}{file_ending}")
    p.add_argument("pred_dir", metavar="PRED_DIR", type=Path, help="folder of predicted label maps")
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset (folder, name, number or dataset.json); default: GT_DIR/../dataset.json")
    p.add_argument("--tolerance-mm", type=float, default=DEFAULT_TOLERANCE_MM,
                   help=f"surface Dice tolerance in mm (default {DEFAULT_TOLERANCE_MM:g})")
    p.add_argument("-o", "--output-dir", type=Path, default=None,
                   help="where to write summary.json and summary.csv (default: PRED_DIR)")
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="parallel worker processes (default: up to 4)")
    p.add_argument("--allow-missing", action="store_true", help="skip reference cases that have no prediction")
    p.add_argument("--statistics", action="store_true",
                   help="also write reference_statistics.json/.csv: per reference case and label volume (mL), "
                        "voxels, bounding box (mm) and, with --images, intensity of each channel")
    p.add_argument("--images", type=Path, default=None, metavar="IMAGES_DIR",
                   help="with --statistics: the images of the references ({case}_0000{ending} ...)")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


@command("evaluate", "Dice, IoU, HD95 and surface Dice of predictions against references", _evaluate_arguments,
         "Evaluate every reference case in GT_DIR against the file of the same name in PRED_DIR; write "
         "summary.json and summary.csv (one row per case and class) and print the means.")
def run_evaluate(args: argparse.Namespace) -> int:
    from autoseg.evaluation import evaluate_folders, print_summary

    spec = dataset_spec(args.dataset, args, near=args.gt_dir)
    summary = evaluate_folders(args.gt_dir, args.pred_dir, spec, tolerance_mm=args.tolerance_mm,
                               workers=args.workers, progress=not args.no_progress,
                               output_dir=args.output_dir, allow_missing=args.allow_missing)
    print_summary(summary)
    folder = args.output_dir or args.pred_dir
    out(f"written: {folder / 'summary.json'}, {folder / 'summary.csv'}")
    if summary.missing_predictions:
        out(f"skipped {len(summary.missing_predictions)} case(s) without prediction")
    if args.statistics:
        _reference_statistics(args, spec, folder)
    return EXIT_OK


def _reference_statistics(args: argparse.Namespace, spec, folder: Path) -> None:
    from autoseg.evaluation.evaluate import match_cases
    from autoseg.evaluation.statistics import folder_statistics, summary_lines, write_statistics

    pairs, missing = match_cases(args.gt_dir, args.pred_dir, spec.file_ending)
    refs = {c: ref for c, (ref, _) in pairs.items()}
    refs.update({c: Path(args.gt_dir) / f"{c}{spec.file_ending}" for c in missing})
    report = folder_statistics(refs, spec, args.images)
    for line in summary_lines(report):
        out(f"reference {line}")
    json_path, csv_path = write_statistics(report, folder, "reference_statistics")
    out(f"written: {json_path}, {csv_path}")


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", type=Path,
                   help="image file (one channel), or a folder or .zip of DICOM files (one series, or --series)")
    p.add_argument("seg", metavar="SEG", type=Path, nargs="?", default=None, help="label map to overlay")
    p.add_argument("-o", "--output", type=Path, default=Path("preview.png"), help="PNG to write (default preview.png; must end in .png)")
    p.add_argument("-d", "--dataset", default=None, help="dataset whose label names label the legend")
    p.add_argument("--series", type=int, default=None, metavar="NUMBER",
                   help="SeriesNumber of the series to show when the DICOM folder holds several")


@command("show", "write a PNG with axial, coronal and sagittal views and the label overlay", _show_arguments)
def run_show(args: argparse.Namespace) -> int:
    from autoseg.preview import render_preview

    names = None
    if args.dataset is not None:
        spec = dataset_spec(args.dataset, args)
        names = {int(v): k for k, v in spec.labels.items() if not isinstance(v, (list, tuple))}
    path = render_preview(args.image, args.seg, args.output, names, series_number=args.series)
    out(f"written: {path}")
    return EXIT_OK
