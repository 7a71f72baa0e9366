"""Peak memory of ``autoseg plan`` does not grow with the number of cases (50 vs 500).

Generates (seeded) datasets of small CT-like cases (64x64x48 int16 at 0.8x0.8x1.5 mm, a 3-class
label; the same drawing as ``large_volume.py``) of each size in ``--cases`` (default 50, 100, 500)
and runs ``autoseg plan`` (integrity checks, streamed fingerprint, plans, preprocessing of
``3d_fullres`` with the default, memory-bounded worker pool) on each in a measured process tree
(``benchmarks/proctree.py``). Prints wall time and peak memory of each.

The fingerprint's pooled intensity sample grows with the case count until it reaches its fixed
cap (``FOREGROUND_SAMPLES_TOTAL`` = 1e7 values per channel, reached at 100 cases of 1e5 samples), so
the check is: the largest dataset's peak (RSS sum over the tree) is within ``--tolerance`` plus
``--slack-mb`` of the peak of the smallest dataset at that cap (PASS/FAIL).

    OMP_NUM_THREADS=2 python benchmarks/plan_many_cases.py [--cases 50 100 500] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from large_volume import LABELS, ct_slab  # noqa: E402
from proctree import run_measured  # noqa: E402

from autoseg.fingerprint import FOREGROUND_SAMPLES_PER_CASE_MAX, FOREGROUND_SAMPLES_TOTAL  # noqa: E402

SHAPE = (64, 64, 48)
SPACING = (0.8, 0.8, 1.5)


def make_dataset(raw: Path, number: int, n_cases: int, seed: int) -> Path:
    import nibabel as nib

    root = raw / f"Dataset{number:03d}_Many{n_cases}"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([*SPACING, 1.0])
    for i in range(n_cases):
        ct, label = ct_slab(SHAPE[:2], np.arange(SHAPE[2]), SHAPE[2], np.random.default_rng([seed, i]))
        nib.save(nib.Nifti1Image(ct, affine), str(root / "imagesTr" / f"case_{i:04d}_0000.nii"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"case_{i:04d}.nii"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                   "numTraining": n_cases, "file_ending": ".nii"}, indent=1))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[50, 100, 500])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1.1, help="allowed peak ratio (1.1)")
    ap.add_argument("--slack-mb", type=float, default=30.0, help="allowed absolute growth on top (30 MB)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="plan_many_"))
    print(f"work folder {work}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs")
    peaks = {}
    for i, n in enumerate(sorted(set(args.cases))):
        t0 = time.perf_counter()
        root = make_dataset(work / "raw", 900 + i, n, args.seed)
        made = time.perf_counter() - t0
        log = work / f"plan_{n}.log"
        run = run_measured([sys.executable, "-m", "autoseg", "plan", str(root), "--workdir", str(work),
                            "--configs", "3d_fullres", "--no-progress"], log=log)
        if run.returncode != 0:
            raise SystemExit(f"autoseg plan of {n} cases failed (exit {run.returncode}); see {log}")
        peaks[n] = run.peak_rss_sum
        pss = f"{run.peak_pss_sum / 1e6:.0f}" if run.peak_pss_sum is not None else "n/a"
        print(f"{n:5d} cases ({SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, generated in {made:.0f} s): "
              f"plan wall {run.wall_s:6.1f} s "
              f"CPU {run.cpu_s:6.1f} s  peak RSS sum {run.peak_rss_sum / 1e6:6.0f} MB  PSS sum {pss} MB  largest "
              f"process {run.max_single_rss / 1e6:5.0f} MB  processes {run.max_processes}")
    capped = [n for n in peaks if n * FOREGROUND_SAMPLES_PER_CASE_MAX >= FOREGROUND_SAMPLES_TOTAL]
    if len(capped) < 2:
        at_cap = FOREGROUND_SAMPLES_TOTAL // FOREGROUND_SAMPLES_PER_CASE_MAX
        raise SystemExit(f"give at least two case counts >= {at_cap} (where the fingerprint sample is at its cap)")
    small, large = min(capped), max(capped)
    limit = peaks[small] * args.tolerance + args.slack_mb * 1e6
    ok = peaks[large] <= limit
    print(f"peak {large} / {small} cases: {peaks[large] / peaks[small]:.2f} (limit {limit / 1e6:.0f} MB): "
          f"{'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
