"""Peak memory of ``autoseg plan`` (preprocessing) and ``autoseg predict`` on one large CT.

Generates (seeded) a CT-like int16 volume of 512x512x600 voxels at 0.8x0.8x1.5 mm (300 MB of raw
voxels in an uncompressed ``.nii``) with a 3-class label, plus two 256x256x200 companion cases at
0.8x0.8x1.0 mm, so that the planner's median target spacing (0.8x0.8x1.0 mm) makes preprocessing
*upsample* the large case along Z to 512x512x900 voxels (236 M voxels, 0.94 GB as float32), the
harder direction for memory. Then, each in its own measured process tree
(``benchmarks/proctree.py``, ``/proc`` sampled every 0.25 s):

1. ``autoseg plan`` of the 3-case dataset (integrity checks, fingerprint, plans, preprocessing of
   ``3d_fullres``), default workers;
2. ``autoseg predict`` of the large case on the CPU without TTA, with a model folder holding the
   plan's own ``3d_fullres`` network (random weights). Predicting all ~670 windows of this case with
   that network takes hours on 2 cores, so the network runs for real on the first few batches of
   windows and later batches reuse its last output (:class:`FirstWindowsOnly`): every whole-volume
   buffer, the network's working memory (converted model included) and the resampling back are
   those of a full run, so the peak is; the written labels are not meaningful.
3. with ``--small-network``, also a complete prediction of every window by a network with the
   plan's patch, strides and kernels but few features (about half an hour on 2 cores).

Prints wall time, CPU time and peak memory of each (sum of PSS over the tree, sum of RSS and the
largest single process' high-water mark) and PASS/FAIL against the bounds of issue 5: 4 GB for
preprocessing, 6 GB for CPU prediction with a 3D U-Net (GB = 1e9 bytes, compared with the larger
of the RSS-sum and the single-process high-water mark).

    OMP_NUM_THREADS=2 python benchmarks/large_volume.py [--work DIR] [--slices 600] [--backend auto] [--skip-plan] [--small-network]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from proctree import TreeRun, run_measured  # noqa: E402

DATASET = "Dataset991_LargeCT"
LABELS = {"background": 0, "liver": 1, "kidney": 2}
LARGE_SPACING = (0.8, 0.8, 1.5)
COMPANION_SPACING = (0.8, 0.8, 1.0)
COMPANION_SHAPE = (256, 256, 200)
PREPROCESS_BOUND = 4e9  # issue 5: preprocessing <= 4 GB
PREDICT_BOUND = 6e9     # issue 5: CPU prediction with a 3D U-Net <= 6 GB
REAL_WINDOWS = 3        # batches of windows the full-size network really runs on (predict)
SMALL_FEATURES = 4      # features of the first stage of the benchmark network (doubling, capped at 16)


def ct_slab(shape_xy: tuple[int, int], z: np.ndarray, n_z: int, rng: np.random.Generator):
    """CT-like int16 HU values and a uint8 label for the slices ``z`` of a volume of ``n_z`` slices:
    air outside an elliptic body, soft tissue with noise, a spine, lungs in the upper third, a liver
    (label 1) and two kidneys (label 2) as ellipsoids."""
    nx, ny = shape_xy
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    t = (z.astype(np.float32) / max(n_z - 1, 1))[None, None, :]  # 0 = feet, 1 = head
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    ct = np.full((nx, ny, len(z)), -1000, dtype=np.int16)
    ct[np.broadcast_to(body, ct.shape)] = 40
    ct += rng.integers(-25, 26, size=ct.shape, dtype=np.int16)
    lungs = (((np.abs(x) - 0.4) / 0.28) ** 2 + (y / 0.4) ** 2 + ((t - 0.85) / 0.18) ** 2) < 1
    ct[lungs] = -850 + rng.integers(-30, 31, size=int(lungs.sum()), dtype=np.int16)
    spine = ((x / 0.1) ** 2 + ((y - 0.45) / 0.1) ** 2 < 1) & np.ones_like(t, dtype=bool)
    ct[spine] = 700
    label = np.zeros(ct.shape, dtype=np.uint8)
    liver = ((x + 0.35) / 0.35) ** 2 + ((y + 0.05) / 0.3) ** 2 + ((t - 0.6) / 0.12) ** 2 < 1
    kidneys = ((np.abs(x) - 0.35) / 0.1) ** 2 + ((y - 0.25) / 0.12) ** 2 + ((t - 0.45) / 0.08) ** 2 < 1
    for mask, value, hu in ((liver, 1, 110), (kidneys, 2, 180)):
        label[mask] = value
        ct[mask] = hu + rng.integers(-20, 21, size=int(mask.sum()), dtype=np.int16)
    return ct, label


def write_case(images: Path, labels: Path, case: str, shape, spacing, seed: int, slab: int = 40) -> None:
    """Write ``{case}_0000.nii`` and ``{case}.nii``, drawing ``slab`` slices at a time (seeded per slab)."""
    import nibabel as nib

    ct = np.empty(shape, dtype=np.int16)
    label = np.empty(shape, dtype=np.uint8)
    for z0 in range(0, shape[2], slab):
        z = np.arange(z0, min(shape[2], z0 + slab))
        ct[..., z0:z0 + len(z)], label[..., z0:z0 + len(z)] = ct_slab(shape[:2], z, shape[2],
                                                                     np.random.default_rng([seed, z0]))
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), str(images / f"{case}_0000.nii"))
    nib.save(nib.Nifti1Image(label, affine), str(labels / f"{case}.nii"))


def make_dataset(raw: Path, slices: int, seed: int) -> Path:
    """The raw dataset (large case + 2 companions) and ``imagesTs`` holding the large case."""
    root = raw / DATASET
    images, labels, test = root / "imagesTr", root / "labelsTr", root / "imagesTs"
    for d in (images, labels, test):
        d.mkdir(parents=True, exist_ok=True)
    write_case(images, labels, "large_000", (512, 512, slices), LARGE_SPACING, seed)
    for i in (1, 2):
        write_case(images, labels, f"companion_{i:03d}", COMPANION_SHAPE, COMPANION_SPACING, seed + i)
    os.link(images / "large_000_0000.nii", test / "large_000_0000.nii")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                   "numTraining": 3, "file_ending": ".nii"}, indent=1))
    return root


def small_features(n_stages: int) -> tuple[int, ...]:
    return tuple(min(SMALL_FEATURES * 2 ** i, 16) for i in range(n_stages))


def make_model(work: Path, small: bool, folds: int = 1) -> Path:
    """A model folder from the plan's ``3d_fullres`` configuration with random weights: the plan's
    own network, or (``small``) the same patch, strides and kernels with few features."""
    import torch

    from autoseg.models import build_model
    from autoseg.planning.plans import Plans
    from autoseg.core.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
    from autoseg.workspace import Workspace

    plans = Plans.load(Workspace(work).plans_file(DATASET, "autosegPlans"))
    cfg = plans.configuration("3d_fullres")
    if small:
        cfg = dataclasses.replace(cfg, features=small_features(len(cfg.features)))
        plans = dataclasses.replace(plans, configurations={**plans.configurations, "3d_fullres": cfg})
    torch.manual_seed(0)
    net = build_model("unet", cfg, 1, len(LABELS), False)
    model = work / ("model_small" if small else "model") / "unet__autosegPlans__3d_fullres"
    dataset = {"name": DATASET, "labels": LABELS, "channel_names": ["CT"], "file_ending": ".nii"}
    save_checkpoint({"format": FORMAT, "format_version": FORMAT_VERSION, "model": net.state_dict(),
                     "settings": {"deep_supervision": False}, "plans": plans.to_dict(), "configuration": "3d_fullres",
                     "arch": "unet", "fold": 0, "dataset": dataset}, model / "fold_0" / "checkpoint_final.pt")
    for k in range(1, folds):  # more folds: the same weights (memory does not depend on their values)
        (model / f"fold_{k}").mkdir(exist_ok=True)
        shutil.copyfile(model / "fold_0" / "checkpoint_final.pt", model / f"fold_{k}" / "checkpoint_final.pt")
    for stale in [f for f in model.glob("fold_*") if int(f.name[5:]) >= folds]:  # from a run with more folds
        shutil.rmtree(stale)
    n_params = sum(p.numel() for p in net.parameters())
    which = "small" if small else "the plan's"
    print(f"model: 3d_fullres patch {cfg.patch_size}, spacing {cfg.spacing}, {len(cfg.features)} stages "
          f"{tuple(cfg.features)}, {n_params / 1e6:.1f} M parameters ({which}), {folds} fold(s)")
    return model


class FirstWindowsOnly:
    """Stands in for a network in ``predict``: runs the real one on the first ``real`` batches of
    windows, then returns its last output for every later batch. The whole-volume buffers, the
    network's working memory and the resampling back are all as in a full run; only the hours of
    identical forward passes are skipped (the written labels are meaningless)."""

    def __init__(self, net, real: int):
        self.net, self.real, self.calls, self.last = net, real, 0, None

    def eval(self):
        self.net.eval()
        return self

    def __call__(self, x):
        if self.calls < self.real or self.last is None or self.last.shape[0] != x.shape[0]:
            self.last = self.net(x)
        self.calls += 1
        return self.last


def drive_predict(argv: list[str], real: int) -> int:
    """``autoseg predict argv`` in this process, each network wrapped in :class:`FirstWindowsOnly`."""
    from autoseg import cli
    from autoseg.inference import backends

    make_engine = backends.make_engine

    def wrapped(*args, **kwargs):
        engine = make_engine(*args, **kwargs)
        print(f"network stand-in: the real network runs on the first {real} batches of windows", flush=True)
        return dataclasses.replace(engine, networks=tuple(FirstWindowsOnly(n, real) for n in engine.networks))

    backends.make_engine = wrapped
    return cli.main(argv)


def report(name: str, run: TreeRun, bound: float, log: Path) -> bool:
    peak = max(run.peak_rss_sum, run.max_single_rss)
    ok = run.returncode == 0 and peak <= bound
    pss = f"{run.peak_pss_sum / 1e9:.2f}" if run.peak_pss_sum is not None else "n/a"
    print(f"{name:8} exit {run.returncode}  wall {run.wall_s:7.1f} s  CPU {run.cpu_s:7.1f} s  "
          f"peak RSS sum {run.peak_rss_sum / 1e9:.2f} GB  PSS sum {pss} GB  largest process "
          f"{run.max_single_rss / 1e9:.2f} GB  processes {run.max_processes}  load {run.load_before:.1f}->"
          f"{run.load_after:.1f}  bound {bound / 1e9:.0f} GB: {'PASS' if ok else 'FAIL'}")
    if run.returncode != 0:
        print(f"         see {log}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--slices", type=int, default=600, help="slices of the large case (600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino"))
    ap.add_argument("--skip-plan", action="store_true", help="reuse the planned dataset in --work")
    ap.add_argument("--real-windows", type=int, default=REAL_WINDOWS,
                    help=f"batches of windows the plan's network really runs on ({REAL_WINDOWS})")
    ap.add_argument("--folds", type=int, default=1, help="folds of the model (copies of one network; default 1)")
    ap.add_argument("--small-network", action="store_true",
                    help="also predict every window with a small network (about half an hour on 2 cores)")
    ap.add_argument("--drive-predict", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # internal
    args = ap.parse_args()
    if args.drive_predict is not None:
        raise SystemExit(drive_predict(args.drive_predict, args.real_windows))
    work = args.work or Path(tempfile.mkdtemp(prefix="large_volume_"))
    work.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "autoseg"]
    print(f"work folder {work}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs")
    results = []
    if not args.skip_plan:
        t0 = time.perf_counter()
        root = make_dataset(work / "raw", args.slices, args.seed)
        print(f"generated 512x512x{args.slices} int16 CT at {LARGE_SPACING} mm "
              f"({512 * 512 * args.slices * 2 / 1e6:.0f} MB of voxels) + 2 companions in "
              f"{time.perf_counter() - t0:.0f} s")
        run = run_measured(python + ["plan", str(root), "--workdir", str(work), "--configs", "3d_fullres",
                                     "--no-progress"], log=work / "plan.log")
        results.append(report("plan", run, PREPROCESS_BOUND, work / "plan.log"))
        if run.returncode != 0:
            raise SystemExit(1)
        props = json.loads((work / "preprocessed" / DATASET / "autosegPlans_3d_fullres" / "large_000.json").read_text())
        print(f"         large case preprocessed to {props.get('shape_after_resample')} at {props.get('spacing')} mm")

    def predict_args(model: Path, out: str) -> list[str]:
        return ["predict", "-i", str(work / "raw" / DATASET / "imagesTs"), "-o", str(work / out), "--model", str(model),
                "--device", "cpu", "--no-tta", "--backend", args.backend, "--overwrite", "--no-progress"]

    model = make_model(work, small=False, folds=args.folds)
    run = run_measured([sys.executable, __file__, "--real-windows", str(args.real_windows), "--drive-predict",
                        *predict_args(model, "predicted")], log=work / "predict.log")
    results.append(report("predict", run, PREDICT_BOUND, work / "predict.log"))
    if args.small_network:
        model = make_model(work, small=True)
        run = run_measured(python + predict_args(model, "predicted_small"), log=work / "predict_small.log")
        results.append(report("predict (small network, every window)", run, PREDICT_BOUND, work / "predict_small.log"))
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
