"""A model trained with nnU-Net v2, imported into autoseg: do both predict the same labels, and how fast?

Steps (each skipped when its output exists, so a rerun only predicts again):

1. in nnU-Net's own virtual environment: ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres`` on the raw
   dataset (linked into ``WORKDIR/nnunet/raw``), then a very short training of fold 0 with the trainer of
   ``benchmarks/nnunet_trainer_budget.py`` (copied into nnU-Net's package as ``nnUNetTrainer_Budget``;
   ``--epochs`` x ``--iters`` iterations, no final validation, ``-device cpu``);
2. ``nnUNetv2_predict`` on ``--cases`` validation cases of fold 0 (``-device cpu``), with and without TTA;
3. ``autoseg import`` of the results folder (``--allow-trainer nnUNetTrainer_Budget``: the budget
   trainer changes only the schedule), ``autoseg predict`` of the same cases with each ``--backends``
   entry (fp32), with and without TTA;
4. prints, per autoseg run, the share of voxels (all cases together, and the worst case) whose label
   equals nnU-Net's, the share of foreground in nnU-Net's labels, and the wall-time ratio
   autoseg / nnU-Net (whole commands, model loading included).

A model trained this briefly predicts background everywhere, which makes label agreement trivial. So
the comparison is also run (``--foreground-shift S``, default 3; 0 skips it) on a copy of the results
folder whose checkpoint has ``S`` added to the foreground biases of the output layer (run in nnU-Net's
environment): both tools then load the same weights, which label part of each image as foreground
along the network's own logit landscape, so the labels test the whole pipelines (normalisation,
transposition, padding, sliding window, TTA, resampling, export) at many class boundaries.

    OMP_NUM_THREADS=2 python benchmarks/import_nnunet.py --dataset /path/Dataset004_Hippocampus \\
        --workdir /tmp/import_nnunet --nnunet-venv /opt/nnunet-venv [--cases 10] [--epochs 1] [--iters 20] \\
        [--backends torch openvino]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from proctree import run_measured  # noqa: E402

CONFIG = "3d_fullres"
TRAINER = "nnUNetTrainer_Budget"
TRAINER_SOURCE = Path(__file__).parent / "nnunet_trainer_budget.py"
REPO = Path(__file__).resolve().parent.parent


def _nnunet_env(work: Path, args) -> dict:
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_n_proc_DA="1", OMP_NUM_THREADS=str(args.threads),
               NNUNET_BUDGET_EPOCHS=str(args.epochs), NNUNET_BUDGET_ITERS=str(args.iters),
               NNUNET_BUDGET_VAL_ITERS="2", NNUNET_BUDGET_SKIP_FINAL_VALIDATION="1",
               NNUNET_BUDGET_THREADS=str(args.threads))
    return env


def _run(cmd: list[str], env: dict, log: Path):
    run = run_measured([str(c) for c in cmd], env=env, log=log)
    if run.returncode:
        raise SystemExit(f"`{' '.join(map(str, cmd))}` failed (exit {run.returncode}); see {log}")
    return run


def train_nnunet(args, work: Path, dataset_id: int) -> Path:
    """Plan, preprocess and briefly train fold 0 with nnU-Net; returns the results folder."""
    bin_dir = args.nnunet_venv / "bin"
    env = _nnunet_env(work, args)
    (work / "raw").mkdir(parents=True, exist_ok=True)
    link = work / "raw" / args.dataset.name
    if not link.exists():
        link.symlink_to(args.dataset.resolve())
    if not (work / "preprocessed" / args.dataset.name / "nnUNetPlans.json").is_file():
        _run([bin_dir / "nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", CONFIG, "-np", "1", "-npfp", "1"],
             env, work / "plan.log")
    found = subprocess.run([str(bin_dir / "python"), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                           capture_output=True, text=True, check=True)
    target = Path(found.stdout.strip()) / "training" / "nnUNetTrainer" / f"{TRAINER}.py"
    if not target.is_file() or target.read_text() != TRAINER_SOURCE.read_text():
        shutil.copyfile(TRAINER_SOURCE, target)
    results = work / "results" / args.dataset.name / f"{TRAINER}__nnUNetPlans__{CONFIG}"
    if not (results / "fold_0" / "checkpoint_final.pth").is_file():
        run = _run([bin_dir / "nnUNetv2_train", dataset_id, CONFIG, "0", "-tr", TRAINER, "-device", "cpu"], env,
                   work / "train.log")
        print(f"nnU-Net training ({args.epochs} epoch(s) x {args.iters} iterations): {run.wall_s:.0f} s")
    return results


SHIFT_SCRIPT = """
import sys, torch
src, dst, shift = sys.argv[1], sys.argv[2], float(sys.argv[3])
ckpt = torch.load(src, map_location="cpu", weights_only=False)
w = ckpt["network_weights"]
last = max(int(k.split(".")[2]) for k in w if k.startswith("decoder.seg_layers.") and k.endswith(".bias"))
w[f"decoder.seg_layers.{last}.bias"][1:] += shift
torch.save(ckpt, dst)
"""


def shifted_results(args, results: Path, work: Path, shift: float) -> Path:
    """A copy of the results folder under ``work/results_shifted`` with ``shift`` added to the
    foreground biases of the final output layer (nnU-Net's environment writes the checkpoint)."""
    root = work / "results_shifted"
    target = root / results.parent.name / results.name
    if not (target / "fold_0" / "checkpoint_final.pth").is_file():
        (target / "fold_0").mkdir(parents=True, exist_ok=True)
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            if (results / name).is_file():
                shutil.copyfile(results / name, target / name)
        subprocess.run([str(args.nnunet_venv / "bin" / "python"), "-c", SHIFT_SCRIPT,
                        str(results / "fold_0" / "checkpoint_final.pth"),
                        str(target / "fold_0" / "checkpoint_final.pth"), str(shift)], check=True)
    return target


def validation_cases(work: Path, dataset: Path, n: int) -> list[str]:
    """The first ``n`` validation cases of fold 0, from nnU-Net's splits_final.json."""
    splits = json.loads((work / "preprocessed" / dataset.name / "splits_final.json").read_text())
    return splits[0]["val"][:n]


def input_folder(work: Path, dataset: Path, cases: list[str]) -> Path:
    folder = work / "input"
    folder.mkdir(exist_ok=True)
    ending = json.loads((dataset / "dataset.json").read_text())["file_ending"]
    for case in cases:
        for src in sorted((dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")):
            if not (folder / src.name).exists():
                (folder / src.name).symlink_to(src.resolve())
    return folder


def predict_nnunet(args, work: Path, results: Path, dataset_id: int, inp: Path, tta: bool, tag: str):
    out = work / f"nnunet_{tag}_{'tta' if tta else 'notta'}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.nnunet_venv / "bin" / "nnUNetv2_predict", "-i", inp, "-o", out, "-d", dataset_id, "-c", CONFIG,
           "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    env = dict(_nnunet_env(work, args), nnUNet_results=str(results.parent.parent))
    run = _run(cmd + ([] if tta else ["--disable_tta"]), env, out.with_suffix(".log"))
    return out, run.wall_s


def import_into_autoseg(work: Path, results: Path, env: dict, tag: str) -> Path:
    ws = work / f"autoseg_{tag}"
    cmd = [sys.executable, "-m", "autoseg", "import", str(results), "--workdir", str(ws), "--allow-trainer", TRAINER,
           "--overwrite"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{done.stdout}{done.stderr}")
    return Path(done.stdout.split("installed ", 1)[1].split("\n", 1)[0])


def predict_autoseg(work: Path, model: Path, inp: Path, backend: str, tta: bool, env: dict, tag: str):
    out = work / f"autoseg_{tag}_{backend}_{'tta' if tta else 'notta'}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "autoseg", "predict", "-i", inp, "-o", out, "--model", model, "--workdir",
           work / f"autoseg_{tag}", "--device", "cpu", "--backend", backend, "--precision", "fp32", "--no-progress"]
    run = _run(cmd + ([] if tta else ["--no-tta"]), env, out.with_suffix(".log"))
    return out, run.wall_s


def agreement(a: Path, b: Path, cases: list[str], ending: str) -> tuple[float, float, int, float]:
    """(share of equal voxels over all cases, worst case's share, differing voxels, foreground share of a)."""
    equal = total = foreground = 0
    worst = 1.0
    for case in cases:
        x = np.asarray(nib.load(str(a / f"{case}{ending}")).dataobj)
        y = np.asarray(nib.load(str(b / f"{case}{ending}")).dataobj)
        same = int((x == y).sum())
        equal, total, foreground = equal + same, total + x.size, foreground + int((x > 0).sum())
        worst = min(worst, same / x.size)
    return equal / total, worst, total - equal, foreground / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="raw dataset folder DatasetXXX_Name")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--nnunet-venv", type=Path, default=Path("/opt/nnunet-venv"))
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["torch", "openvino"])
    p.add_argument("--foreground-shift", type=float, default=3.0,
                   help="also compare on a copy whose output layer's foreground biases are raised by this (0: no)")
    args = p.parse_args()
    work = args.workdir.resolve()
    dataset_id = int(args.dataset.name[7:10])
    trained = train_nnunet(args, work, dataset_id)
    cases = validation_cases(work, args.dataset, args.cases)
    inp = input_folder(work, args.dataset, cases)
    ending = json.loads((args.dataset / "dataset.json").read_text())["file_ending"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
    runs = [("trained", trained, [False], args.backends[:1])]
    if args.foreground_shift:
        shifted = shifted_results(args, trained, work, args.foreground_shift)
        runs.append((f"shift{args.foreground_shift:g}", shifted, [True, False], args.backends))
    print(f"cases: {len(cases)} validation cases of fold 0; load average before: {os.getloadavg()[0]:.1f}\n")
    print("| weights | run | TTA | nnU-Net s | autoseg s | autoseg / nnU-Net | voxels equal | worst case | "
          "voxels differing | nnU-Net foreground |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tag, results, ttas, backends in runs:
        model = import_into_autoseg(work, results, env, tag)
        for tta in ttas:
            nn_out, nn_s = predict_nnunet(args, work, results, dataset_id, inp, tta, tag)
            for backend in backends:
                out, s = predict_autoseg(work, model, inp, backend, tta, env, tag)
                share, worst, diff, fg = agreement(nn_out, out, cases, ending)
                print(f"| {tag} | autoseg {backend} fp32 | {'yes' if tta else 'no'} | {nn_s:.1f} | {s:.1f} | "
                      f"{s / nn_s:.2f} | {100 * share:.4f}% | {100 * worst:.4f}% | {diff} | {100 * fg:.2f}% |",
                      flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
