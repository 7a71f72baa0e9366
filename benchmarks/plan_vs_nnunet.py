"""`autoseg plan` against `nnUNetv2_plan_and_preprocess` on the same dataset, in one run.

Usage (from the repository root; nnU-Net v2 lives in its own virtual environment, never in autoseg's)::

    OMP_NUM_THREADS=1 python benchmarks/plan_vs_nnunet.py [--dataset PATH ...] [--toy-aniso] \
        [--nnunet-venv /work/nnunet_venv] [-j 2] [--repeats 2] [--presets resenc_m,resenc_l,resenc_xl]

For every dataset (default ``../shared/data/Dataset004_Hippocampus``; ``--toy-aniso`` adds an
anisotropic MR dataset made by autoseg's toy generator, see ``TOY``) it

1. runs, alternating ``--repeats`` times, ``autoseg plan DATASET -j N --configs C...`` in a fresh
   workspace and ``nnUNetv2_plan_and_preprocess -d ID -c C... -np N -npfp N`` in fresh
   ``nnUNet_raw`` (a symlink to the dataset) / ``nnUNet_preprocessed`` folders, each measured as a
   process tree (wall, CPU, peak memory; see ``benchmarks/proctree.py``), and prints the medians and
   the autoseg / nnU-Net ratios;
2. checks the preprocessing of the last pair of runs is the same: shape of every preprocessed case
   (autoseg ``.npy`` vs nnU-Net ``.b2nd``, read with the venv's blosc2 in a subprocess), and for a
   few cases the largest absolute difference of the normalised intensities and the share of
   differing label voxels;
3. prints autoseg's plans beside nnU-Net's (target spacing, normalisation, patch, batch, pools per
   axis, kernels) for the default planner and, with ``--presets``, the residual-encoder presets
   (nnU-Net side: ``nnUNetv2_plan_experiment -pl nnUNetPlannerResEnc{M,L,XL}`` on its fingerprint,
   untimed; autoseg side: the planner on autoseg's fingerprint with ``planners/<preset>.toml``).

Both tools get the same environment: one thread per process (OMP/MKL/OpenBLAS = 1) and the same
number of worker processes. nnU-Net's optional ``--verify_dataset_integrity`` is off unless
``--nnunet-verify`` (autoseg always checks), so the wall-time ratio does not favour autoseg.
Everything goes to stdout as Markdown (``--json`` also saves the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_plans import (NORM_NAMES, PLAN_FILES, compare_fingerprints, fingerprint_from_nnunet,  # noqa: E402
                           plan_with_preset)
from proctree import TreeRun, run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"
NNUNET_PLANNERS = {"resenc_m": "nnUNetPlannerResEncM", "resenc_l": "nnUNetPlannerResEncL",
                   "resenc_xl": "nnUNetPlannerResEncXL"}
# The anisotropic toy dataset: MR, ~0.8 x 0.8 x 4 mm (spacing jittered +-10 % per case), about
# 160 x 160 x 20 voxels (+-20 %), oblique affines; deterministic (seed 0).
TOY = dict(name="Dataset990_ToyAnisoMR", n_cases=10, seed=0, modality="MR", anisotropic=True, shape=(160, 160, 60))
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
EXPORT_B2ND = """import json, sys, pathlib, numpy as np, blosc2
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
shapes = {p.name[:-5]: list(blosc2.open(str(p), mode="r").shape) for p in sorted(src.glob("*.b2nd"))}
for name in sys.argv[3:]:
    np.save(dst / f"{name}.npy", blosc2.open(str(src / f"{name}.b2nd"), mode="r")[:])
print(json.dumps(shapes))
"""


# --- running the two tools ----------------------------------------------------------------------------

def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: "1" for k in THREAD_VARS})
    return env


def dataset_id(name: str) -> int:
    m = re.match(r"Dataset(\d{3})_", name)
    if not m:
        raise SystemExit(f"{name}: nnU-Net needs a folder named DatasetXXX_Name (XXX = 3-digit id); rename it")
    return int(m.group(1))


def nnunet_env(venv: Path, root: Path) -> dict[str, str]:
    env = base_env()
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    return env


def run_autoseg(dataset: Path, root: Path, args) -> TreeRun:
    cmd = [sys.executable, "-m", "autoseg", "plan", str(dataset), "--workdir", str(root), "-j", str(args.workers),
           "--no-progress", "--configs", *args.configs]
    return run_measured(cmd, env=base_env(), cwd=REPO, log=root / "log.txt")


def run_nnunet(dataset: Path, root: Path, args) -> TreeRun:
    for sub in ("raw", "preprocessed", "results"):
        (root / sub).mkdir(parents=True)
    (root / "raw" / dataset.name).symlink_to(dataset)
    n = str(args.workers)
    cmd = [str(args.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id(dataset.name)),
           "-c", *args.configs, "-np", n, "-npfp", n, "--no_pbar"]
    if args.nnunet_verify:
        cmd.append("--verify_dataset_integrity")
    return run_measured(cmd, env=nnunet_env(args.nnunet_venv, root), cwd=root, log=root / "log.txt")


TOOLS = {"autoseg": run_autoseg, "nnU-Net": run_nnunet}


def time_dataset(dataset: Path, scratch: Path, args) -> tuple[list[tuple[str, TreeRun]], dict[str, Path]]:
    """Alternate the tools ``args.repeats`` times; keep the folders of the last run of each."""
    runs, last = [], {}
    for r in range(args.repeats):
        for tool, fn in TOOLS.items():
            root = scratch / f"{dataset.name}_{tool.replace('-', '').lower()}_{r}"
            root.mkdir(parents=True)
            print(f"  run {r + 1}/{args.repeats} {tool} ...", file=sys.stderr, flush=True)
            result = fn(dataset, root, args)
            if result.returncode != 0:
                tail = (root / "log.txt").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{tool} failed on {dataset} (exit {result.returncode}); log {root}/log.txt:\n{tail}")
            runs.append((tool, result))
            if tool in last:
                shutil.rmtree(last[tool], ignore_errors=True)
            last[tool] = root
    return runs, last


# --- preprocessing: same arrays? ----------------------------------------------------------------------

def compare_preprocessed(ours: Path, theirs: Path, n_cases: int, venv: Path, tmp: Path) -> dict:
    """Shapes of all cases, values of ``n_cases`` evenly spread cases; nnU-Net's -1 (outside the
    crop mask) in label maps counts as background."""
    ids = sorted(p.stem for p in ours.glob("*.npy") if not p.stem.endswith("_seg"))
    picked = [ids[i] for i in sorted({round(k * (len(ids) - 1) / max(1, n_cases - 1)) for k in range(n_cases)})]
    names = [n for c in picked for n in (c, f"{c}_seg")]
    out = subprocess.run([str(venv / "bin" / "python"), "-c", EXPORT_B2ND, str(theirs), str(tmp), *names],
                         check=True, capture_output=True, text=True, env=base_env())
    ref_shapes = json.loads(out.stdout)
    our_shapes = {c: list(np.load(ours / f"{c}.npy", mmap_mode="r").shape) for c in ids}
    same_shape = sum(our_shapes[c] == ref_shapes.get(c) for c in ids)
    cases = []
    for c in picked:
        a, b = np.load(ours / f"{c}.npy"), np.load(tmp / f"{c}.npy")
        sa, sb = np.load(ours / f"{c}_seg.npy").astype(np.int16), np.load(tmp / f"{c}_seg.npy").astype(np.int16)
        row = {"case": c, "shape": list(a.shape), "ref_shape": list(b.shape)}
        if a.shape == b.shape:
            d = np.abs(a.astype(np.float64) - b)
            row.update(max_abs_diff=float(d.max()), mean_abs_diff=float(d.mean()),
                       value_range=[float(b.min()), float(b.max())])
        if sa.shape == sb.shape:
            row["label_voxels_differing"] = float(np.mean(sa != np.where(sb < 0, 0, sb)))
        cases.append(row)
    n_ref = sum(1 for k in ref_shapes if not k.endswith("_seg"))
    return {"n_cases": len(ids), "n_ref_cases": n_ref, "same_shape": same_shape, "cases": cases}


# --- plans side by side ---------------------------------------------------------------------------------

def _fmt_num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _x(values) -> str:
    return "×".join(_fmt_num(v) for v in values)


def _kernels(kernels) -> str:
    """Run-length form: ``(1,3,3)×2 (3,3,3)×4``."""
    parts, prev, count = [], None, 0
    for k in list(map(tuple, kernels)) + [None]:
        if k == prev:
            count += 1
            continue
        if prev is not None:
            parts.append(f"({','.join(map(str, prev))})×{count}")
        prev, count = k, 1
    return " ".join(parts)


def our_rows(plans) -> dict[str, dict[str, str]]:
    norm = ", ".join(f"{n.scheme}{'+mask' if n.use_mask else ''}" for n in plans.normalization)
    return {name: {"spacing": _x(round(s, 4) for s in c.spacing), "norm": norm, "patch": _x(c.patch_size),
                   "batch": str(c.batch_size), "pools": ",".join(map(str, c.num_pools_per_axis)),
                   "kernels": _kernels(c.kernel_sizes), "strides": _kernels(c.strides),
                   "features": _x(c.features), "batch_dice": str(c.batch_dice),
                   "cascade": str(name == "3d_lowres" and "3d_cascade_fullres" in plans.configurations)}
            for name, c in plans.configurations.items() if name != "3d_cascade_fullres"}


def nnunet_rows(ref: dict) -> dict[str, dict[str, str]]:
    rows = {}
    for name, r in ref["configurations"].items():
        if "inherits_from" in r:
            continue
        a = r["architecture"]["arch_kwargs"]
        dims = len(r["patch_size"])
        norm = ", ".join(f"{NORM_NAMES.get(s, s)}{'+mask' if m else ''}"
                         for s, m in zip(r["normalization_schemes"], r["use_mask_for_norm"]))
        rows[name] = {"spacing": _x(round(s, 4) for s in r["spacing"]), "norm": norm, "patch": _x(r["patch_size"]),
                      "batch": str(r["batch_size"]),
                      "pools": ",".join(str(sum(1 for s in a["strides"] if s[i] > 1)) for i in range(dims)),
                      "kernels": _kernels(a["kernel_sizes"]), "strides": _kernels(a["strides"]),
                      "features": _x(a["features_per_stage"]), "batch_dice": str(r["batch_dice"]),
                      "cascade": str(name == "3d_lowres" and "3d_cascade_fullres" in ref["configurations"])}
    return rows


FIELDS = ("spacing", "norm", "patch", "batch", "pools", "kernels")  # shown; the verdict also covers:
HIDDEN = ("strides", "features", "batch_dice", "cascade")  # cascade: 3d_cascade_fullres exists


def side_by_side(dataset: str, preset: str, ours: dict, theirs: dict) -> list[list[str]]:
    """Two table rows per configuration (autoseg, then nnU-Net v2 with the verdict)."""
    rows = []
    for cfg in sorted(set(ours) | set(theirs), key=["2d", "3d_fullres", "3d_lowres"].index):
        a, b = ours.get(cfg), theirs.get(cfg)
        if a is None or b is None:
            verdict = f"only {'autoseg' if b is None else 'nnU-Net'} plans {cfg}"
        else:
            diff = [f for f in FIELDS + HIDDEN if a[f] != b[f]]
            verdict = "equal" if not diff else "differs: " + ", ".join(diff)
        rows.append([dataset, preset, cfg, "autoseg", *((a or {}).get(f, "—") for f in FIELDS), ""])
        rows.append(["", "", "", "nnU-Net v2", *((b or {}).get(f, "—") for f in FIELDS), verdict])
    return rows


def plan_tables(dataset: Path, dirs: dict[str, Path], args) -> tuple[list[list[str]], list[str]]:
    from autoseg.dataset import DatasetSpec
    from autoseg.fingerprint import Fingerprint
    from autoseg.planning.plans import Plans

    name = dataset.name
    ours_dir = dirs["autoseg"] / "preprocessed" / name
    ref_dir = dirs["nnU-Net"] / "preprocessed" / name
    fp = Fingerprint.load(ours_dir / "fingerprint.json")
    notes = [f"{r[0]}: autoseg {r[1] or '—'}, nnU-Net {r[2] or '—'} ({r[3]})"
             for r in compare_fingerprints(fp, ref_dir / "dataset_fingerprint.json")]
    spec = DatasetSpec.load(dataset)
    rows = side_by_side(name, "default", our_rows(Plans.load(ours_dir / "plans.json")),
                        nnunet_rows(json.loads((ref_dir / PLAN_FILES["default"]).read_text())))
    for preset in [p for p in args.presets.split(",") if p]:
        subprocess.run([str(args.nnunet_venv / "bin" / "nnUNetv2_plan_experiment"), "-d", str(dataset_id(name)),
                        "-pl", NNUNET_PLANNERS[preset]], check=True, capture_output=True,
                       env=nnunet_env(args.nnunet_venv, dirs["nnU-Net"]))
        ours = our_rows(plan_with_preset(fp, spec, preset))
        rows += side_by_side(name, preset, ours, nnunet_rows(json.loads((ref_dir / PLAN_FILES[preset]).read_text())))
    return rows, notes


# --- planner only: made-up fingerprints of large images (3d_lowres + cascade) ----------------------------

# No dataset in ../shared/data is large enough for nnU-Net to add 3d_lowres, so these fingerprints
# (per case: spacing and shape after crop, in nnU-Net's (Z, Y, X) order) check the lowres search
# and the cascade on both planners without any image data: (channel, cases, z spacing range,
# in-plane spacing range, z size range, in-plane size range), drawn with seed 0.
SYNTHETIC = {
    "Dataset991_SynthLargeCT": ("CT", 30, (1.0, 3.0), (0.6, 0.95), (150, 450), (512, 512)),
    "Dataset992_SynthLargeAnisoMR": ("T2", 30, (4.0, 6.0), (0.5, 0.8), (30, 60), (384, 512)),
}


def synthetic_fingerprint(n, z_sp, xy_sp, z_n, xy_n, rng) -> dict:
    inplane = rng.uniform(*xy_sp, n)
    spacings = [[float(z), float(s), float(s)] for z, s in zip(rng.uniform(*z_sp, n), inplane)]
    shapes = [[int(z), int(s), int(s)] for z, s in zip(rng.integers(z_n[0], z_n[1] + 1, n),
                                                       rng.integers(xy_n[0], xy_n[1] + 1, n))]
    stats = dict(mean=60.0, median=55.0, std=120.0, min=-1000.0, max=2500.0, percentile_00_5=-800.0,
                 percentile_99_5=900.0)
    return {"spacings": spacings, "shapes_after_crop": shapes, "median_relative_size_after_cropping": 0.9,
            "foreground_intensity_properties_per_channel": {"0": stats}}


def synthetic_checks(scratch: Path, args) -> list[list[str]]:
    """Plan made-up fingerprints with both planners (nnU-Net reads one tiny image to pick its reader)."""
    import nibabel as nib

    from autoseg.dataset import DatasetSpec

    rows, root = [], scratch / "synthetic"
    for name, (channel, n, z_sp, xy_sp, z_n, xy_n) in SYNTHETIC.items():
        raw, pre = root / "raw" / name, root / "preprocessed" / name
        for d in (raw / "imagesTr", raw / "labelsTr", pre):
            d.mkdir(parents=True, exist_ok=True)
        # numTraining must equal the fingerprint's case count: nnU-Net's 5% batch cap counts cases from it
        ds_json = {"channel_names": {"0": channel}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n,
                   "file_ending": ".nii.gz"}
        (raw / "dataset.json").write_text(json.dumps(ds_json))
        for path, dtype in ((raw / "imagesTr" / "case_0000.nii.gz", np.float32), (raw / "labelsTr" / "case.nii.gz", np.uint8)):
            nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype), np.eye(4)), str(path))
        fp_path = pre / "dataset_fingerprint.json"
        fp_path.write_text(json.dumps(synthetic_fingerprint(n, z_sp, xy_sp, z_n, xy_n, np.random.default_rng(0))))
        fp = fingerprint_from_nnunet(fp_path, DatasetSpec.load(raw))
        for preset in ["default"] + [p for p in args.presets.split(",") if p]:
            planner = NNUNET_PLANNERS.get(preset, "ExperimentPlanner")
            subprocess.run([str(args.nnunet_venv / "bin" / "nnUNetv2_plan_experiment"), "-d", str(dataset_id(name)),
                            "-pl", planner], check=True, capture_output=True, env=nnunet_env(args.nnunet_venv, root))
            ours = our_rows(plan_with_preset(fp, DatasetSpec.load(raw), preset))
            rows += side_by_side(name, preset, ours, nnunet_rows(json.loads((pre / PLAN_FILES[preset]).read_text())))
    return rows


# --- report -----------------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _mb(b) -> str:
    return "—" if b is None else f"{b / 2**20:.0f}"


def timing_report(runs: list[tuple[str, TreeRun]]) -> tuple[str, dict]:
    rows = [[i // 2 + 1, tool, f"{r.wall_s:.1f}", f"{r.cpu_s:.1f}", _mb(r.peak_rss_sum), _mb(r.peak_pss_sum),
             _mb(r.max_single_rss), r.max_processes, f"{r.load_before:.2f}"] for i, (tool, r) in enumerate(runs)]
    med = {}
    for tool in TOOLS:
        rs = [r for t, r in runs if t == tool]
        med[tool] = {k: statistics.median(getattr(r, k) for r in rs)
                     for k in ("wall_s", "cpu_s", "peak_rss_sum", "max_single_rss")}
        pss = [r.peak_pss_sum for r in rs if r.peak_pss_sum is not None]
        med[tool]["peak_pss_sum"] = statistics.median(pss) if pss else None
    a, n = med["autoseg"], med["nnU-Net"]
    ratio = {k: (a[k] / n[k] if a[k] and n[k] else None) for k in a}
    summary = [[tool, f"{m['wall_s']:.1f}", f"{m['cpu_s']:.1f}", _mb(m["peak_rss_sum"]), _mb(m["peak_pss_sum"]),
                _mb(m["max_single_rss"])] for tool, m in med.items()]
    summary.append(["ratio autoseg / nnU-Net"] + [("—" if ratio[k] is None else f"{ratio[k]:.2f}")
                                                  for k in ("wall_s", "cpu_s", "peak_rss_sum", "peak_pss_sum",
                                                            "max_single_rss")])
    head = ["wall s", "CPU s", "peak RSS sum MB", "peak PSS sum MB", "max 1-process RSS MB"]
    text = (_table(["run", "tool", *head, "max processes", "load (1 min) at start"], rows)
            + "\n\nMedians:\n\n" + _table(["tool", *head], summary)
            + f"\n\nWall-time ratio {ratio['wall_s']:.2f} (target ≤ 0.15: {'met' if ratio['wall_s'] <= 0.15 else 'NOT met'})")
    return text, {"medians": med, "ratios": ratio}


def preprocessing_report(cmp: dict) -> str:
    rows = [[c["case"], _x(c["shape"]), "same" if c["shape"] == c["ref_shape"] else _x(c["ref_shape"]),
             f"{c.get('max_abs_diff', float('nan')):.2e}", f"{c.get('mean_abs_diff', float('nan')):.2e}",
             "{:.2f}..{:.2f}".format(*c.get("value_range", (float("nan"),) * 2)),
             f"{100 * c.get('label_voxels_differing', float('nan')):.3f}%"] for c in cmp["cases"]]
    return (f"Preprocessed shapes equal to nnU-Net's for {cmp['same_shape']} of {cmp['n_cases']} cases "
            f"(nnU-Net wrote {cmp['n_ref_cases']}).\n\n"
            + _table(["case", "shape (C, axes)", "nnU-Net shape", "max abs diff", "mean abs diff",
                      "nnU-Net value range", "label voxels differing"], rows))


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return f"{cpu}, {os.cpu_count()} logical CPUs, {mem / 2**20:.0f} GiB RAM, Python {platform.python_version()}"


def nnunet_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# --- main ---------------------------------------------------------------------------------------------------

def make_toy(scratch: Path) -> Path:
    from autoseg.toy import make_toy_dataset

    kw = dict(TOY)
    return make_toy_dataset(scratch / "toy_raw", name=kw.pop("name"), **kw)


def run_dataset(ds: Path, scratch: Path, args) -> tuple[dict, list[list[str]]]:
    """Time both tools on one dataset, print timings, preprocessing and fingerprint comparisons;
    return the figures and the plan-table rows."""
    print(f"{ds.name}:", file=sys.stderr, flush=True)
    runs, dirs = time_dataset(ds, scratch, args)
    text, figures = timing_report(runs)
    print(f"\n## {ds.name}\n\n{text}\n")
    data_id = "3d_fullres" if "3d_fullres" in args.configs else args.configs[0]
    cmp = compare_preprocessed(next((dirs["autoseg"] / "preprocessed").glob(f"*/autosegPlans_{data_id}")),
                               dirs["nnU-Net"] / "preprocessed" / ds.name / f"nnUNetPlans_{data_id}",
                               args.compare_cases, args.nnunet_venv, Path(tempfile.mkdtemp(dir=scratch)))
    print(f"### Preprocessing ({data_id})\n\n{preprocessing_report(cmp)}\n")
    rows, notes = plan_tables(ds, dirs, args)
    print("### Fingerprint\n\n" + "\n".join(f"- {n}" for n in notes) + "\n", flush=True)
    return {**figures, "runs": [[t, vars(r)] for t, r in runs], "preprocessing": cmp}, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", type=Path, default=None,
                    help=f"raw dataset folder DatasetXXX_Name (repeatable; default {DEFAULT_DATASET})")
    ap.add_argument("--toy-aniso", action="store_true", help="also run on the anisotropic toy dataset (see TOY)")
    ap.add_argument("--synthetic-lowres", action="store_true",
                    help="also compare the planners on made-up fingerprints of large images (see SYNTHETIC)")
    ap.add_argument("--nnunet-venv", type=Path, default=Path("/work/nnunet_venv"))
    ap.add_argument("-j", "--workers", type=int, default=2, help="worker processes for both tools")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per tool (medians reported)")
    ap.add_argument("--configs", nargs="+", default=["3d_fullres", "2d"])
    ap.add_argument("--nnunet-verify", action="store_true", help="add nnU-Net's --verify_dataset_integrity")
    ap.add_argument("--compare-cases", type=int, default=3, help="cases whose arrays are compared value by value")
    ap.add_argument("--presets", default="", help="also compare these presets, e.g. resenc_m,resenc_l,resenc_xl")
    ap.add_argument("--scratch", type=Path, default=None, help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if not (args.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess").is_file():
        raise SystemExit(f"{args.nnunet_venv}: no nnUNetv2_plan_and_preprocess; create the venv with "
                         f"`python -m venv {args.nnunet_venv} && {args.nnunet_venv}/bin/pip install nnunetv2`")
    scratch = Path(tempfile.mkdtemp(prefix="plan_vs_nnunet_", dir=args.scratch))
    only_extras = args.toy_aniso or args.synthetic_lowres
    datasets = [d.resolve() for d in (args.dataset or ([] if only_extras else [DEFAULT_DATASET]))]
    if args.toy_aniso:
        datasets.append(make_toy(scratch))
    load0 = os.getloadavg()
    print(f"# autoseg plan vs nnUNetv2_plan_and_preprocess\n\nMachine: {machine()}; nnunetv2 "
          f"{nnunet_version(args.nnunet_venv)}. Workers: {args.workers} per tool; configurations: "
          f"{' '.join(args.configs)}; repeats: {args.repeats}, alternating; nnU-Net integrity check "
          f"{'on' if args.nnunet_verify else 'off'}. Load average at start: {' / '.join(f'{x:.2f}' for x in load0)}.")
    results, all_plan_rows = {}, []
    try:
        for ds in datasets:
            results[ds.name], rows = run_dataset(ds, scratch, args)
            all_plan_rows += rows
        if args.synthetic_lowres:
            print("synthetic fingerprints:", file=sys.stderr, flush=True)
            all_plan_rows += synthetic_checks(scratch, args)
        header = ["dataset", "planner", "config", "tool", "target spacing", "normalisation", "patch", "batch",
                  "pools/axis", "kernels", "verdict"]
        print("## Plans side by side\n\n" + _table(header, all_plan_rows))
        load1 = os.getloadavg()
        print(f"\nLoad average at end: {' / '.join(f'{x:.2f}' for x in load1)}")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load_start": load0,
                                             "load_end": load1, "datasets": results}, indent=1))
    finally:
        if args.keep:
            print(f"\n(scratch kept in {scratch})", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
