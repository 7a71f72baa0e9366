"""CPU inference backends on trained weights: time per case and Dice, against torch fp32.

Decides ``cpu_auto`` in autoseg/inference/backends.py (what ``--backend auto --precision auto``
runs on the CPU). For each path (torch fp32, torch bf16 autocast, OpenVINO f32 / bf16 with the
LATENCY hint) it predicts the same cases with the same model through ``predict_folder`` and prints
the wall time per case, the foreground-mean Dice against the reference labels, and the share of
voxels whose label differs from torch fp32.

    OMP_NUM_THREADS=2 python benchmarks/predict_backends.py MODEL_DIR IMAGES_DIR LABELS_DIR \
        [--cases 10] [--folds 0] [--no-tta] [--paths torch:fp32 torch:bf16 openvino:fp32 openvino:bf16]

MODEL_DIR is a trained model folder (results/<Dataset>/<arch>__<plans>__<config>); IMAGES_DIR holds
``{case}_0000`` files and LABELS_DIR ``{case}`` label maps (e.g. a dataset's imagesTr/labelsTr, using
cases the model did not train on).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from autoseg.dataset import DatasetSpec
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("images", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("--cases", type=int, default=10, help="number of cases (the last ones, sorted by name)")
    ap.add_argument("--folds", nargs="+", default=None)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS),
                    help="backend:precision pairs, run in this order (repeat one to see the spread, or OpenVINO "
                         "with its conversion cached)")
    args = ap.parse_args()

    model = load_predictor(args.model_dir, args.folds)
    inputs = find_inputs(args.images, model.spec.channel_names)
    cases = [c.case_id for c in inputs if not c.problem][-args.cases:]
    ending = inputs[0].ending
    spec = DatasetSpec(model.spec.name, model.spec.channel_names, model.spec.labels, 0, ending,
                       model.spec.regions_class_order, model.spec.ignore_label)
    work = Path(tempfile.mkdtemp(prefix="predict_backends_"))
    try:
        images = _subset(args.images, cases, work / "in")
        print(f"{model.describe()}, {len(cases)} case(s), TTA {'off' if args.no_tta else 'on'}")
        print(f"{'path':<16} {'s/case':>8} {'Dice':>8} {'differs':>9}")
        reference = None
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
            _, dice = mean_dice(args.labels, out, cases, spec)
            preds = _labels(out, cases, ending)
            if reference is None:
                reference = preds
            differs = np.mean([np.mean(preds[c] != reference[c]) for c in cases])
            print(f"{path:<16} {seconds:>8.2f} {dice:>8.4f} {differs:>8.3%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
