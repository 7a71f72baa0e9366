"""autoseg predict vs nnUNetv2_predict on the CPU: same cases, same network, same weights.

The autoseg model's U-Net (MONAI DynUNet) has the same layers as nnU-Net's PlainConvUNet for the
same plan (2 conv-instance norm-leaky ReLU per stage, strided-conv downsampling, transposed-conv
upsampling, skip concatenation), so its weights are converted into an nnU-Net model folder
(conv biases 0: they sit before instance norms) and checked to give the same logits. Both tools
then predict the same cases from the raw files (5 folds with mirroring TTA, then without TTA) and
the script prints wall time per case, peak memory (process tree, ``proctree.py``), the ratio and
the Dice of each against the reference labels. ``--repeats N`` runs the tools N times in turn and
prints medians, and the ratio of each repeat's two adjacent runs (their median as the ratio).

    OMP_NUM_THREADS=2 python benchmarks/predict_vs_nnunet.py --workdir WS --dataset Dataset004_Hippocampus \
        --nnunet-root /tmp/nnunet_ref --nnunet-bin /work/nnunet_venv/bin [--cases 5] [--folds 5] [--large-ct] \
        [--precisions fp32 int8] [--repeats 3] [--tta-only]

``--workdir`` holds the trained autoseg model (results/<Dataset>/unet__autosegPlans__3d_fullres) and
the planned dataset (splits: the cases come from fold 0's validation set); ``--nnunet-root`` holds
nnU-Net's raw/ and preprocessed/ (nnUNetPlans.json of the same dataset; results/ is written).
``--folds 5`` runs five networks in both tools, copying the trained folds when fewer exist.
``--precisions`` times autoseg once per ``--precision`` (int8: the trained folds are quantized
first, ``autoseg quantize``, and their Dice check printed).
``--large-ct`` also predicts one synthetic 512x512x400 CT with autoseg and reports its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from proctree import run_measured  # noqa: E402

CONFIG = "3d_fullres"
NNUNET_TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


# --- weights -----------------------------------------------------------------------------------------

def _stage_blocks(n: int) -> list[str]:
    """DynUNet module names of the encoder stages (input block, downsamples, bottleneck)."""
    return ["net.input_block"] + [f"net.downsamples.{i}" for i in range(n - 2)] + ["net.bottleneck"]


def _conv_pair(src: dict, block: str, dst: str, perm: tuple[int, ...], out: dict) -> None:
    """A DynUNet basic block (conv1/norm1, conv2/norm2) -> nnU-Net ``dst.convs.{0,1}`` (+ aliases)."""
    for i in (0, 1):
        w = src[f"{block}.conv{i + 1}.conv.weight"].permute(0, 1, *(2 + p for p in perm)).contiguous()
        tensors = {"conv.weight": w, "conv.bias": torch.zeros(w.shape[0]),
                   "norm.weight": src[f"{block}.norm{i + 1}.weight"], "norm.bias": src[f"{block}.norm{i + 1}.bias"]}
        for key, t in tensors.items():
            out[f"{dst}.convs.{i}.{key}"] = t
            alias = {"conv": "all_modules.0", "norm": "all_modules.1"}[key.split(".")[0]]
            out[f"{dst}.convs.{i}.{alias}.{key.split('.')[1]}"] = t


def dynunet_to_plainconvunet(src: dict, n_stages: int, perm: tuple[int, ...], num_classes: int) -> dict:
    """State dict of nnU-Net's PlainConvUNet (deep supervision off) from autoseg's DynUNet weights.
    ``perm[j]`` is the autoseg axis that nnU-Net's axis ``j`` corresponds to."""
    out: dict = {}
    for s, block in enumerate(_stage_blocks(n_stages)):
        _conv_pair(src, block, f"encoder.stages.{s}.0", perm, out)
    for key in list(out):
        out[f"decoder.{key}"] = out[key]  # the decoder keeps a reference to the encoder
    spatial = tuple(2 + p for p in perm)
    for i in range(n_stages - 1):
        w = src[f"net.upsamples.{i}.transp_conv.conv.weight"].permute(0, 1, *spatial).contiguous()
        out[f"decoder.transpconvs.{i}.weight"] = w
        out[f"decoder.transpconvs.{i}.bias"] = torch.zeros(w.shape[1])
        _conv_pair(src, f"net.upsamples.{i}.conv_block", f"decoder.stages.{i}", perm, out)
        features = out[f"decoder.stages.{i}.convs.1.conv.weight"].shape[0]
        last = i == n_stages - 2
        out[f"decoder.seg_layers.{i}.weight"] = src["net.output_block.conv.conv.weight"] if last else \
            torch.zeros(num_classes, features, 1, 1, 1)
        out[f"decoder.seg_layers.{i}.bias"] = src["net.output_block.conv.conv.bias"] if last else torch.zeros(num_classes)
    return out


def axis_map(autoseg_tf, nnunet_tf) -> tuple[int, ...]:
    """nnU-Net internal axis j (SimpleITK z,y,x order, then its transpose) -> autoseg internal axis
    (nibabel x,y,z order, then its transpose)."""
    return tuple(list(autoseg_tf).index(2 - nnunet_tf[j]) for j in range(3))


# --- model folders -----------------------------------------------------------------------------------

def benchmark_models(model_dir: Path, nnunet_root: Path, dataset: str, n_folds: int, work: Path):
    """(autoseg model folder with ``n_folds`` folds, nnU-Net model folder with the same weights)."""
    from autoseg.core.checkpoint import load_checkpoint
    from autoseg.workspace import fold_dirs

    trained = [d / "checkpoint_final.pt" for f, d in fold_dirs(model_dir).items()
               if f != "all" and (d / "checkpoint_final.pt").is_file()]
    if not trained:
        raise SystemExit(f"{model_dir}: no finished fold")
    ours = work / "autoseg_model" / model_dir.name
    pre = nnunet_root / "preprocessed" / dataset
    theirs = nnunet_root / "results" / dataset / NNUNET_TRAINER
    shutil.rmtree(theirs, ignore_errors=True)
    theirs.mkdir(parents=True)
    nn_plans = json.loads((pre / "nnUNetPlans.json").read_text())
    shutil.copy(pre / "nnUNetPlans.json", theirs / "plans.json")
    shutil.copy(pre / "dataset.json", theirs / "dataset.json")
    for k in range(n_folds):
        ckpt = load_checkpoint(trained[k % len(trained)])
        (ours / f"fold_{k}").mkdir(parents=True)
        (ours / f"fold_{k}" / "checkpoint_final.pt").symlink_to(trained[k % len(trained)].resolve())
        plans, cfg = ckpt["plans"], ckpt["plans"]["configurations"][ckpt["configuration"]]
        nn_cfg = nn_plans["configurations"][CONFIG]
        perm = axis_map(plans["transpose_forward"], nn_plans["transpose_forward"])
        if [cfg["patch_size"][p] for p in perm] != nn_cfg["patch_size"] or \
                list(cfg["features"]) != nn_cfg["architecture"]["arch_kwargs"]["features_per_stage"]:
            raise SystemExit(f"plans differ: autoseg patch {cfg['patch_size']} features {cfg['features']}, nnU-Net "
                             f"patch {nn_cfg['patch_size']} features "
                             f"{nn_cfg['architecture']['arch_kwargs']['features_per_stage']}")
        weights = dynunet_to_plainconvunet(ckpt["model"], len(cfg["features"]), perm,
                                           ckpt["model"]["net.output_block.conv.conv.bias"].shape[0])
        (theirs / f"fold_{k}").mkdir()
        torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer",
                    "init_args": {"plans": nn_plans, "configuration": CONFIG, "fold": k,
                                  "dataset_json": json.loads((pre / "dataset.json").read_text())},
                    "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0},
                   theirs / f"fold_{k}" / "checkpoint_final.pth")
    return ours, theirs, perm


CHECK = """
import json, sys, numpy as np, torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
plans = json.load(open(sys.argv[1] + '/plans.json'))
arch = plans['configurations']['3d_fullres']['architecture']
x, ref = np.load(sys.argv[2]), np.load(sys.argv[3])
net = get_network_from_plans(arch['network_class_name'], arch['arch_kwargs'], arch['_kw_requires_import'],
                             x.shape[1], ref.shape[1], deep_supervision=False)
net.load_state_dict(torch.load(sys.argv[1] + '/fold_0/checkpoint_final.pth', weights_only=False)['network_weights'])
with torch.no_grad():
    out = net.eval()(torch.from_numpy(x)).numpy()
print(float(np.abs(out - ref).max()))
"""


def check_same_network(ours: Path, theirs: Path, perm, python: Path, work: Path) -> float:
    """Max |logits| difference of the two networks on one random patch (in nnU-Net's axis order)."""
    from autoseg.inference.predictor import load_predictor

    model = load_predictor(ours, folds=[0])
    x = torch.randn(1, model.num_channels, *model.config.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.networks[0](x)
    spatial = tuple(2 + p for p in perm)
    np.save(work / "x.npy", x.permute(0, 1, *spatial).contiguous().numpy())
    np.save(work / "ref.npy", ref.permute(0, 1, *spatial).contiguous().numpy())
    result = subprocess.run([str(python), "-c", CHECK, str(theirs), str(work / "x.npy"), str(work / "ref.npy")],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


# --- runs --------------------------------------------------------------------------------------------

def case_folders(workdir: Path, dataset: str, n_cases: int, work: Path) -> tuple[Path, Path, list[str]]:
    """Input folder (links to fold 0's first validation cases) and the raw label folder."""
    from autoseg.splits import Splits
    from autoseg.workspace import Workspace

    ws = Workspace(workdir)
    raw = ws.raw_dir(dataset)
    cases = list(Splits.load(ws.splits_file(dataset)).folds[0].val)[:n_cases]
    images = work / "images"
    images.mkdir()
    for case in cases:
        for src in sorted((raw / "imagesTr").glob(f"{case}_*")):
            (images / src.name).symlink_to(src.resolve())
    return images, raw / "labelsTr", cases


def dice(labels: Path, pred: Path, cases: list[str], model_dir: Path) -> float:
    from autoseg.inference.crossval import mean_dice
    from autoseg.inference.predictor import load_predictor

    spec = load_predictor(model_dir, folds=[0]).spec
    return mean_dice(labels, pred, cases, spec)[1]


def warm_up(ours: Path, precision: str) -> str:
    """Resolve autoseg's default CPU backend and, for OpenVINO, convert the networks once (cached next
    to the checkpoints, as on any first use of a model), so the timed runs show steady-state speed."""
    import time

    from autoseg.inference.backends import make_engine
    from autoseg.inference.predictor import load_predictor

    model = load_predictor(ours)
    started = time.perf_counter()
    engine = make_engine(model.networks, "auto", precision, torch.device("cpu"),
                         (1, model.num_channels, *model.config.patch_size), model.checkpoint_paths)
    return f"{engine.describe()} (first-use preparation {time.perf_counter() - started:.1f} s, not timed below)"


def quantize_trained(workdir: Path, dataset: str, model_dir: Path) -> None:
    """``autoseg quantize`` on the trained folds (the benchmark's folds link to them, so they share the
    int8 networks); prints the Dice check of each."""
    from autoseg import api
    from autoseg.inference.choice import ModelChoice
    from autoseg.workspace import Workspace

    for r in api.quantize(Workspace(workdir), ModelChoice(dataset, model=model_dir)):
        c = r.record["check"]
        print(f"int8 fold {r.fold}: Dice {c['dice_int8']} vs f32 {c['dice_fp32']} on {len(c['cases'])} validation "
              f"cases, voxel agreement {c['voxel_agreement']:.4%}, passed: {c['passed']}")


def run_both(images: Path, ours: Path, dataset: str, n_folds: int, tta: bool, nnunet_root: Path, nnunet_bin: Path,
             work: Path, precisions: list[str]) -> dict[str, tuple]:
    """Both tools on the same cases; autoseg once per ``--precision`` (rows named ``autoseg <precision>``)."""
    tag = "tta" if tta else "notta"
    env = dict(os.environ, nnUNet_raw=str(nnunet_root / "raw"), nnUNet_preprocessed=str(nnunet_root / "preprocessed"),
               nnUNet_results=str(nnunet_root / "results"))
    cmds = {f"autoseg {p}": [sys.executable, "-m", "autoseg", "predict", "-i", str(images), "-o",
                             str(work / f"autoseg_{p}_{tag}"), "--model", str(ours), "--device", "cpu",
                             "--precision", p, "--no-progress", "--overwrite"] + ([] if tta else ["--no-tta"])
            for p in precisions}
    cmds.update({
        "nnU-Net": [str(nnunet_bin / "nnUNetv2_predict"), "-i", str(images), "-o", str(work / f"nnunet_{tag}"),
                    "-d", dataset, "-c", CONFIG, "-f", *map(str, range(n_folds)), "-device", "cpu",
                    "--disable_progress_bar"] + ([] if tta else ["--disable_tta"]),
    })
    out = {}
    for name, cmd in cmds.items():
        log = work / f"{name.replace(' ', '_')}_{tag}.log"
        run = run_measured(cmd, env=env, log=log)
        if run.returncode != 0:
            raise SystemExit(f"{name} failed; see {log}")
        out[name] = (run, Path(cmd[cmd.index("-o") + 1]))
    return out


def large_ct(work: Path) -> None:
    """Peak memory of autoseg predicting one 512x512x400 CT (tiny random network, 128^3 patch, no TTA)."""
    import nibabel as nib

    from autoseg.models import build_model
    from autoseg.planning.plans import ConfigurationPlan, NormalizationPlan, Plans
    from autoseg.core.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint

    cfg = ConfigurationPlan("3d_fullres", 3, (1.0, 0.8, 0.8), (400, 512, 512), (128, 128, 128), 2, ((3, 3, 3),) * 4,
                            ((1, 1, 1),) + ((2, 2, 2),) * 3, (8, 16, 32, 64), False, "3d_fullres")
    labels = {"background": 0, "liver": 1, "spleen": 2}
    plans = Plans("Dataset990_LargeCT", "autosegPlans", "bench", (2, 0, 1), (1, 2, 0), ("CT",), labels,
                  (NormalizationPlan("CT", "ct", False, -1000.0, 1000.0, 40.0, 200.0),), {"3d_fullres": cfg},
                  "3d_fullres")
    net = build_model("unet", cfg, 1, 3, False)
    model = work / "large_model" / "unet__autosegPlans__3d_fullres"
    save_checkpoint({"format": FORMAT, "format_version": FORMAT_VERSION, "model": net.state_dict(),
                     "settings": {"deep_supervision": False}, "plans": plans.to_dict(), "configuration": "3d_fullres",
                     "arch": "unet", "fold": 0, "dataset": {"name": plans.dataset_name, "labels": labels,
                                                            "channel_names": ["CT"], "file_ending": ".nii.gz"}},
                    model / "fold_0" / "checkpoint_final.pt")
    rng = np.random.default_rng(0)
    ct = rng.normal(-800, 50, size=(512, 512, 400)).astype(np.int16)
    ct[96:416, 96:416, 40:360] += 850
    (work / "large_in").mkdir()
    nib.save(nib.Nifti1Image(ct, np.diag([0.7, 0.7, 1.25, 1.0])), str(work / "large_in" / "ct_0000.nii.gz"))
    del ct
    run = run_measured([sys.executable, "-m", "autoseg", "predict", "-i", str(work / "large_in"), "-o",
                        str(work / "large_out"), "--model", str(model), "--device", "cpu", "--no-tta", "--no-progress"],
                       log=work / "large.log")
    print(f"large CT 512x512x400 (0.7x0.7x1.25 mm -> 0.8x0.8x1.0 mm), no TTA: exit {run.returncode}, "
          f"{run.wall_s:.0f} s, peak RSS {run.max_single_rss / 2**30:.2f} GiB "
          f"(input int16 {512 * 512 * 400 * 2 / 2**30:.2f} GiB, as float32 {512 * 512 * 400 * 4 / 2**30:.2f} GiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--nnunet-root", type=Path, required=True)
    ap.add_argument("--nnunet-bin", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--large-ct", action="store_true")
    ap.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16", "int8"],
                    help="autoseg --precision values to time (int8: `autoseg quantize` runs first on the "
                         "trained folds)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the tools this many times in turn (autoseg, nnU-Net, autoseg, ...): medians and "
                         "the ratio of each repeat's adjacent runs are printed (a shared machine's load drifts)")
    ap.add_argument("--tta-only", action="store_true", help="time only the runs with TTA")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="predict_vs_nnunet_"))
    from autoseg.workspace import Workspace

    model_dir = Workspace(args.workdir).model_dir(args.dataset, "unet", "autosegPlans", "3d_fullres")
    ours, theirs, perm = benchmark_models(model_dir, args.nnunet_root, args.dataset, args.folds, work)
    diff = check_same_network(ours, theirs, perm, args.nnunet_bin / "python", work)
    images, labels, cases = case_folders(args.workdir, args.dataset, args.cases, work)
    if "int8" in args.precisions:
        quantize_trained(args.workdir, args.dataset, model_dir)
    warm = "; ".join(f"{p}: {warm_up(ours, p)}" for p in args.precisions)
    print(f"{args.dataset}: {len(cases)} case(s), {args.folds} fold(s), same weights (max logit difference "
          f"{diff:.2e}), threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"autoseg backend: {warm}")
    print(f"{'':8} {'tool':13} {'s/case':>8} {'peak GiB':>9} {'Dice':>7}")
    for tta in (True,) if args.tta_only else (True, False):
        repeats = [run_both(images, ours, args.dataset, args.folds, tta, args.nnunet_root, args.nnunet_bin, work,
                            args.precisions) for _ in range(args.repeats)]
        for name, (run, pred) in repeats[-1].items():
            walls = [r[name][0].wall_s / len(cases) for r in repeats]
            spread = f"  ({', '.join(f'{w:.2f}' for w in walls)})" if len(walls) > 1 else ""
            peak = max((r[name][0].peak_pss_sum or r[name][0].peak_rss_sum) for r in repeats)
            print(f"{'TTA' if tta else 'no TTA':8} {name:13} {float(np.median(walls)):>8.2f} "
                  f"{peak / 2**30:>9.2f} {dice(labels, pred, cases, ours):>7.4f}{spread}")
        for p in args.precisions:
            ratios = [r[f"autoseg {p}"][0].wall_s / r["nnU-Net"][0].wall_s for r in repeats]
            each = f" (each repeat: {', '.join(f'{x:.3f}' for x in ratios)})" if len(ratios) > 1 else ""
            print(f"{'':8} autoseg {p} / nnU-Net wall time: {float(np.median(ratios)):.3f}{each}")
    if args.large_ct:
        large_ct(work)
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
