"""autoseg's residual-encoder U-Net (``--planner resenc_l``) against nnU-Net v2's ``nnUNetPlannerResEncL``.

Usage (from the repository root; nnU-Net v2 lives in its own virtual environment, never in autoseg's)::

    OMP_NUM_THREADS=1 python benchmarks/resenc_vs_nnunet.py [--dataset PATH ...] [--preset resenc_l] \
        [--nnunet-venv /opt/nnunet-venv] [-j 2] [--json out.json]

For every dataset (default: ``../shared/data/Dataset004_Hippocampus`` and
``Dataset011_OpenKBPHeadNeckCT``) it

1. runs nnU-Net in a temporary folder (``nnUNet_raw`` holds a link to the dataset, which nnU-Net only
   reads; ``nnUNet_preprocessed`` and ``nnUNet_results`` are fresh): ``nnUNetv2_extract_fingerprint``
   and ``nnUNetv2_plan_experiment -pl nnUNetPlannerResEnc{M,L,XL}``; then, in the nnU-Net venv, builds
   each configuration's network from its plans (``get_network_from_plans``) and records its parameter
   count, ``compute_conv_feature_map_size`` of the patch and the state-dict names and shapes;
2. plans the dataset with autoseg (integrity check, fingerprint, planner with ``planners/<preset>.toml``)
   and builds each configuration's network (``build_model``);
3. prints, per configuration, both side by side: patch, batch, pools per axis, features, blocks per
   stage, parameter count and feature-map estimate, and whether the state-dict names and shapes are
   identical (what importing an nnU-Net checkpoint needs).

Networks are built on PyTorch's ``meta`` device (no memory, no initialisation) on both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_vs_nnunet import dataset_id, nnunet_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_DATASETS = (DATA / "Dataset004_Hippocampus", DATA / "Dataset011_OpenKBPHeadNeckCT")
NNUNET_PLANNERS = {"resenc_m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans"),
                   "resenc_l": ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans"),
                   "resenc_xl": ("nnUNetPlannerResEncXL", "nnUNetResEncUNetXLPlans")}
# run in the nnU-Net venv: argv = plans.json, dataset.json; prints one JSON object per configuration
NNUNET_NETWORKS = """import json, sys, torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
plans, dataset = (json.load(open(p)) for p in sys.argv[1:3])
n_in, n_out = len(dataset["channel_names"]), len(dataset["labels"])
out = {}
for name, cfg in plans["configurations"].items():
    if "architecture" not in cfg:
        continue
    a = cfg["architecture"]
    with torch.device("meta"):
        net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                                     n_in, n_out, allow_init=False)
    out[name] = {"params": sum(p.numel() for p in net.parameters()),
                 "estimate": int(net.compute_conv_feature_map_size(cfg["patch_size"])),
                 "state": [[k, list(v.shape)] for k, v in net.state_dict().items()]}
print(json.dumps(out))
"""


def run_nnunet(dataset: Path, root: Path, preset: str, args) -> tuple[dict, dict]:
    """nnU-Net's plans for ``dataset`` and, per configuration, its network's figures."""
    for sub in ("raw", "preprocessed", "results"):
        (root / sub).mkdir(parents=True)
    (root / "raw" / dataset.name).symlink_to(dataset.resolve())
    env = nnunet_env(args.nnunet_venv, root)
    ident = str(dataset_id(dataset.name))
    planner, plans_name = NNUNET_PLANNERS[preset]
    for cmd in (["nnUNetv2_extract_fingerprint", "-d", ident, "-np", str(args.workers)],
                ["nnUNetv2_plan_experiment", "-d", ident, "-pl", planner]):
        _run([str(args.nnunet_venv / "bin" / cmd[0]), *cmd[1:]], env)
    plans_file = root / "preprocessed" / dataset.name / f"{plans_name}.json"
    nets = _run([str(args.nnunet_venv / "bin" / "python"), "-c", NNUNET_NETWORKS, str(plans_file),
                 str(dataset / "dataset.json")], env)
    return json.loads(plans_file.read_text()), json.loads(nets)


def _run(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def run_autoseg(dataset: Path, preset: str, workers: int):
    """autoseg's plans for ``dataset`` and, per configuration, its network's figures."""
    import torch

    from autoseg.api import planner_architecture
    from autoseg.fingerprint import extract_fingerprint
    from autoseg.integrity import check_dataset
    from autoseg.models import build_model
    from autoseg.planning.planner import plan_experiment
    from autoseg.planning.settings import load_preset

    settings = load_preset(preset)
    arch = planner_architecture(settings)
    spec, cases = check_dataset(dataset, workers=workers, progress=False)
    fp = extract_fingerprint(spec, cases, workers=workers, progress=False)
    plans = plan_experiment(fp, spec, settings, arch=arch)
    nets = {}
    for name, cfg in plans.configurations.items():
        with torch.device("meta"):
            net = build_model(cfg.architecture, cfg, spec.num_channels, spec.num_outputs, True)
        nets[name] = {"params": sum(p.numel() for p in net.parameters()),
                      "estimate": int(net.compute_conv_feature_map_size(cfg.patch_size)),
                      "state": [[k, list(v.shape)] for k, v in net.state_dict().items()]}
    return plans, nets


def _x(values) -> str:
    return "×".join(str(int(v)) for v in values)


def rows_for(name: str, ours, our_nets: dict, theirs: dict, their_nets: dict) -> list[list[str]]:
    rows = []
    for config in ("3d_fullres", "2d", "3d_lowres"):
        if config not in theirs["configurations"] and config not in ours.configurations:
            continue
        t, o = theirs["configurations"].get(config), ours.configurations.get(config)
        tn, on = their_nets.get(config), our_nets.get(config)
        if t is None or o is None:
            rows.append([name, config, "only in " + ("autoseg" if t is None else "nnU-Net")] + [""] * 7)
            continue
        ta = t["architecture"]["arch_kwargs"]
        pools = [sum(1 for s in ta["strides"] if s[a] > 1) for a in range(len(t["patch_size"]))]
        cells = [(_x(t["patch_size"]), _x(o.patch_size)), (str(t["batch_size"]), str(o.batch_size)),
                 (_x(pools), _x(o.num_pools_per_axis)), (_x(ta["features_per_stage"]), _x(o.features)),
                 (_x(ta["n_blocks_per_stage"]), _x(o.blocks_per_stage)),
                 (f"{tn['params']:,}", f"{on['params']:,}"), (f"{tn['estimate']:,}", f"{on['estimate']:,}")]
        same_state = tn["state"] == on["state"]
        all_same = same_state and all(a == b for a, b in cells)
        rows.append([name, config] + [f"{a} / {b}" if a != b else a for a, b in cells]
                    + [f"{'yes' if same_state else 'NO'} ({len(on['state'])} tensors)", "equal" if all_same else "DIFFERS"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", type=Path, default=None, help="raw dataset folder (repeatable)")
    ap.add_argument("--preset", default="resenc_l", choices=sorted(NNUNET_PLANNERS))
    ap.add_argument("--nnunet-venv", type=Path, default=Path("/opt/nnunet-venv"))
    ap.add_argument("-j", "--workers", type=int, default=2, help="worker processes for both tools' fingerprints")
    ap.add_argument("--json", type=Path, default=None, help="also save the figures here")
    args = ap.parse_args(argv)
    datasets = args.dataset or list(DEFAULT_DATASETS)
    missing = [str(d) for d in datasets if not (d / "dataset.json").is_file()]
    if missing:
        raise SystemExit(f"no dataset.json in {', '.join(missing)}; give the raw dataset folders with --dataset")
    header = ["dataset", "config", "patch", "batch", "pools/axis", "features", "blocks/stage", "parameters",
              "feature-map estimate", "state-dict names+shapes equal", "verdict"]
    rows, saved = [], {}
    with tempfile.TemporaryDirectory(prefix="resenc_vs_nnunet_") as tmp:
        for dataset in datasets:
            theirs, their_nets = run_nnunet(dataset, Path(tmp) / dataset.name, args.preset, args)
            ours, our_nets = run_autoseg(dataset, args.preset, args.workers)
            rows += rows_for(dataset.name, ours, our_nets, theirs, their_nets)
            saved[dataset.name] = {"nnunet": {k: {**v, "state": len(v["state"])} for k, v in their_nets.items()},
                                   "autoseg": {k: {**v, "state": len(v["state"])} for k, v in our_nets.items()}}
    print(f"`--planner {args.preset}` (autoseg) vs `{NNUNET_PLANNERS[args.preset][0]}` (nnU-Net v2); "
          "cells show 'nnU-Net / autoseg' where they differ, one value where equal.\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.json:
        args.json.write_text(json.dumps(saved, indent=1))
    return 0 if all(r[-1] == "equal" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
