"""Compare autoseg's fingerprint and plans with nnU-Net v2's for the same raw datasets.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/compare_plans.py RAW_DATASET [RAW_DATASET ...] \
        --reference /tmp/nnunet_ref/preprocessed [--workers 2] [--from-nnunet-fingerprint]

``--reference`` is nnU-Net's ``nnUNet_preprocessed`` folder holding, per dataset,
``dataset_fingerprint.json`` and ``nnUNetPlans.json`` / ``nnUNetResEncUNet{M,L,XL}Plans.json``.
With ``--from-nnunet-fingerprint`` our planner runs on nnU-Net's fingerprint (converted from its
(Z, Y, X) axis order), isolating the planner from fingerprint differences.

nnU-Net reads NIfTI through SimpleITK, so its arrays are (Z, Y, X); autoseg's transposed order is
chosen to match it physically (coarsest axis first, then the others from last to first), so the
per-axis tuples of both plans line up directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from autoseg.dataset import DatasetSpec, list_cases
from autoseg.fingerprint import CaseFingerprint, Fingerprint, IntensityStats, extract_fingerprint
from autoseg.api import planner_architecture
from autoseg.planning.planner import plan_experiment
from autoseg.planning.settings import load_preset

PLAN_FILES = {"default": "nnUNetPlans.json", "resenc_m": "nnUNetResEncUNetMPlans.json",
              "resenc_l": "nnUNetResEncUNetLPlans.json", "resenc_xl": "nnUNetResEncUNetXLPlans.json"}
NORM_NAMES = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "NoNormalization": "none",
              "RescaleTo01Normalization": "rescale_0_1"}


def plan_with_preset(fp: Fingerprint, spec: DatasetSpec, preset: str):
    """autoseg's plans of ``fp`` with ``planners/<preset>.toml`` (and the architecture it plans for)."""
    settings = load_preset(preset)
    return plan_experiment(fp, spec, settings, arch=planner_architecture(settings))


def fingerprint_from_nnunet(path: Path, spec: DatasetSpec) -> Fingerprint:
    d = json.loads(path.read_text())
    stats = tuple(IntensityStats(**d["foreground_intensity_properties_per_channel"][str(c)])
                  for c in range(spec.num_channels))
    rel = float(d["median_relative_size_after_cropping"])
    cases = tuple(CaseFingerprint(f"case{i}", tuple(sp[::-1]), tuple(sh[::-1]), tuple(sh[::-1]), rel)
                  for i, (sp, sh) in enumerate(zip(d["spacings"], d["shapes_after_crop"])))
    return Fingerprint(spec.name, spec.channel_names, cases, stats, 0, 0)


def compare_fingerprints(ours: Fingerprint, ref_path: Path) -> list[tuple[str, str, str, str]]:
    ref = json.loads(ref_path.read_text())
    rows = []
    our_sp = [tuple(round(s, 5) for s in c.spacing[::-1]) for c in ours.cases]
    ref_sp = [tuple(round(s, 5) for s in sp) for sp in ref["spacings"]]
    our_sh = [tuple(c.shape_after_crop[::-1]) for c in ours.cases]
    ref_sh = [tuple(s) for s in ref["shapes_after_crop"]]
    rows.append(("spacings (all cases)", f"{len(our_sp)} cases", f"{len(ref_sp)} cases", _same(our_sp == ref_sp)))
    rows.append(("shapes after crop (all cases)", "", "", _same(our_sh == ref_sh)))
    rows.append(("median relative size after crop", f"{ours.median_relative_size_after_crop:.4f}",
                 f"{ref['median_relative_size_after_cropping']:.4f}",
                 _same(abs(ours.median_relative_size_after_crop - ref["median_relative_size_after_cropping"]) < 1e-4)))
    for c, st in enumerate(ours.intensity):
        r = ref["foreground_intensity_properties_per_channel"][str(c)]
        for key in ("mean", "std", "median", "percentile_00_5", "percentile_99_5", "min", "max"):
            a, b = getattr(st, key), r[key]
            rel = abs(a - b) / max(abs(b), 1e-6)
            rows.append((f"ch{c} {key}", f"{a:.5g}", f"{b:.5g}", f"rel diff {rel:.2%}"))
    return rows


def compare_plans(ours, ref: dict) -> list[tuple[str, str, str, str]]:
    rows = [("transpose_forward (ZYX idx)", str(_as_zyx(ours.transpose_forward)), str(ref["transpose_forward"]),
             _same(_as_zyx(ours.transpose_forward) == list(ref["transpose_forward"])))]
    ref_cfgs = {k: v for k, v in ref["configurations"].items()}
    rows.append(("configurations", ",".join(sorted(ours.configurations)), ",".join(sorted(ref_cfgs)),
                 _same(sorted(ours.configurations) == sorted(ref_cfgs))))
    for name, c in ours.configurations.items():
        r = ref_cfgs.get(name)
        if r is None or "inherits_from" in r:
            continue
        a = r["architecture"]["arch_kwargs"]
        fields = {
            "spacing": ([round(s, 5) for s in c.spacing], [round(s, 5) for s in r["spacing"]]),
            "median shape": (list(c.median_shape), [int(round(m)) for m in r["median_image_size_in_voxels"]]),
            "patch": (list(c.patch_size), list(r["patch_size"])),
            "batch": (c.batch_size, r["batch_size"]),
            "pools/axis": (list(c.num_pools_per_axis),
                           [sum(1 for s in a["strides"] if s[i] > 1) for i in range(c.spatial_dims)]),
            "kernels": ([list(k) for k in c.kernel_sizes], [list(k) for k in a["kernel_sizes"]]),
            "strides": ([list(s) for s in c.strides], [list(s) for s in a["strides"]]),
            "features": (list(c.features), list(a["features_per_stage"])),
            "batch_dice": (c.batch_dice, r["batch_dice"]),
        }
        for key, (x, y) in fields.items():
            rows.append((f"{name} {key}", _short(x), _short(y), _same(x == y)))
        norm = [f"{n.scheme}{'+mask' if n.use_mask else ''}" for n in ours.normalization]
        ref_norm = [f"{NORM_NAMES.get(s, s)}{'+mask' if m else ''}"
                    for s, m in zip(r["normalization_schemes"], r["use_mask_for_norm"])]
        rows.append((f"{name} normalization", str(norm), str(ref_norm), _same(norm == ref_norm)))
    return rows


def _as_zyx(forward) -> list[int]:
    """Our forward (indices into X, Y, Z) as indices into nnU-Net's (Z, Y, X) arrays."""
    return [2 - a for a in forward]


def _same(ok: bool) -> str:
    return "same" if ok else "DIFFERENT"


def _short(x) -> str:
    s = str(x)
    return s if len(s) <= 60 else s[:57] + "..."


def _print(title: str, rows) -> None:
    print(f"\n### {title}\n")
    print("| item | autoseg | nnU-Net v2 | |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--reference", type=Path, default=Path("/tmp/nnunet_ref/preprocessed"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--from-nnunet-fingerprint", action="store_true")
    ap.add_argument("--presets", default="default,resenc_m,resenc_l,resenc_xl")
    args = ap.parse_args(argv)
    for root in args.datasets:
        spec = DatasetSpec.load(root)
        ref_dir = args.reference / root.name
        if args.from_nnunet_fingerprint:
            fp = fingerprint_from_nnunet(ref_dir / "dataset_fingerprint.json", spec)
        else:
            cases, problems = list_cases(root, spec)
            if problems:
                print("\n".join(problems), file=sys.stderr)
            t0 = time.perf_counter()
            fp = extract_fingerprint(spec, cases, workers=args.workers)
            print(f"\n## {root.name}: fingerprint of {len(cases)} cases in {time.perf_counter() - t0:.1f} s "
                  f"({args.workers} worker(s))")
            _print(f"{root.name} fingerprint", compare_fingerprints(fp, ref_dir / "dataset_fingerprint.json"))
        for preset in args.presets.split(","):
            ref_file = ref_dir / PLAN_FILES[preset]
            if not ref_file.is_file():
                print(f"(no {ref_file})")
                continue
            plans = plan_with_preset(fp, spec, preset)
            _print(f"{root.name} plans, preset {preset}", compare_plans(plans, json.loads(ref_file.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
