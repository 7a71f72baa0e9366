"""CPU inference backends on trained weights: time per case and Dice, against torch fp32.

Decides ``cpu_auto`` in autoseg/inference/backends.py (what ``--backend auto --precision auto``
runs on the CPU). For each path (torch fp32, torch bf16 autocast, OpenVINO f32 / bf16 with the
LATENCY hint) it predicts the same cases with the same model through ``predict_folder`` and prints
the wall time per case, the foreground-mean Dice (and each class's) against the reference labels,
the share of voxels whose label differs from the first path's and from the same backend's fp32 run,
and the machine's 1-minute load average after the path.

    OMP_NUM_THREADS=2 python benchmarks/predict_backends.py MODEL_DIR IMAGES_DIR LABELS_DIR \
        [--cases 10] [--splits splits.json --fold 0] [--folds 0] [--no-tta] \
        [--paths torch:fp32 torch:bf16 openvino:fp32 openvino:bf16]

``--splits``/``--fold`` take the cases of that fold's validation set (cases the fold did not train on).

MODEL_DIR is a trained model folder (results/<Dataset>/<arch>__<plans>__<config>); IMAGES_DIR holds
``{case}_0000`` files and LABELS_DIR ``{case}`` label maps (e.g. a dataset's imagesTr/labelsTr, using
cases the model did not train on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from autoseg.core.runtime import cpu_supports_bf16
from autoseg.dataset import DatasetSpec
from autoseg.evaluation.metrics import evaluation_targets
from autoseg.inference.crossval import mean_dice
from autoseg.inference.pipeline import find_inputs, predict_folder
from autoseg.inference.predictor import load_predictor
from autoseg.io import read_volume

DEFAULT_PATHS = ("torch:fp32", "openvino:fp32", "openvino:fp32", "torch:bf16", "openvino:bf16")


def _subset(images: Path, cases: list[str], into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for src in sorted(images.glob(f"{case}_*")):
            (into / src.name).symlink_to(src.resolve())
    return into


def _labels(folder: Path, cases: list[str], ending: str) -> dict[str, np.ndarray]:
    return {c: np.asarray(read_volume(folder / f"{c}{ending}")[0]) for c in cases}


def _differs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Share of all voxels (over every case) whose label differs between two sets of predictions."""
    return float(sum(int(np.sum(a[c] != b[c])) for c in a) / sum(a[c].size for c in a))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("images", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("--cases", type=int, default=None,
                    help="number of cases (the last ones, sorted by name; default 10, or all of --splits' fold)")
    ap.add_argument("--splits", type=Path, default=None, help="splits.json: use --fold's validation cases")
    ap.add_argument("--fold", type=int, default=0, help="with --splits: whose validation cases (default 0)")
    ap.add_argument("--folds", nargs="+", default=None)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS),
                    help="backend:precision pairs, run in this order (repeat one to see the spread, or OpenVINO "
                         "with its conversion cached)")
    args = ap.parse_args()

    model = load_predictor(args.model_dir, args.folds)
    inputs = find_inputs(args.images, model.spec.channel_names)
    cases = [c.case_id for c in inputs if not c.problem]
    if args.splits is not None:
        wanted = set(json.loads(args.splits.read_text())["folds"][args.fold]["val"])
        cases = [c for c in cases if c in wanted]
    cases = cases[-(args.cases or (len(cases) if args.splits is not None else 10)):]
    ending = inputs[0].ending
    spec = DatasetSpec(model.spec.name, model.spec.channel_names, model.spec.labels, 0, ending,
                       model.spec.regions_class_order, model.spec.ignore_label)
    work = Path(tempfile.mkdtemp(prefix="predict_backends_"))
    try:
        images = _subset(args.images, cases, work / "in")
        print(f"{model.describe()}, {len(cases)} case(s), TTA {'off' if args.no_tta else 'on'}; CPU {_cpu_name()}, "
              f"native bf16: {cpu_supports_bf16()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        print(f"{'path':<16} {'s/case':>8} {'Dice':>8}  {' '.join(evaluation_targets(spec.labels)):<24} {'differs':>9} {'vs fp32':>9} {'load':>5}")
        reference, fp32 = None, {}
        for i, path in enumerate(args.paths):
            backend, precision = path.split(":")
            out = work / f"{i}_{path.replace(':', '_')}"
            model = load_predictor(args.model_dir, args.folds)  # fresh CPU networks for every path
            started = time.perf_counter()
            report = predict_folder(model, images, out, tta=not args.no_tta, device="cpu", backend=backend,
                                    precision=precision, progress=False)
            seconds = (time.perf_counter() - started) / max(1, len(cases))
            if not report.ok:
                print(f"{path:<16} failed: {report.failed[0][1]}")
                continue
            per_class, dice = mean_dice(args.labels, out, cases, spec)
            preds = _labels(out, cases, ending)
            reference = preds if reference is None else reference
            fp32.setdefault(backend, preds if precision == "fp32" else None)
            same = fp32[backend] if fp32[backend] is not None else preds
            classes = " ".join(f"{v:.4f}" if v is not None else "-" for v in per_class.values())
            print(f"{path:<16} {seconds:>8.2f} {dice:>8.4f}  {classes:<24} {_differs(preds, reference):>8.3%} "
                  f"{_differs(preds, same):>8.3%} {os.getloadavg()[0]:>5.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
