"""Label-map resampling: each class inside its bounding box against every class over the whole volume.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/label_resampling.py [DATASET_DIR ...] [--cases N] [--spacing X Y Z]

For every label map of each dataset (default: the three datasets in ``../shared/data`` when present)
it resamples the map to the target spacing (``--spacing``, else the median spacing of the dataset's
labels, the default rule of nnU-Net's planner for data that is not anisotropic) twice, with the same
settings that preprocessing uses (order 1, nearest along a thick axis):

- ``dense``: every class's one-hot mask interpolated over the whole volume (autoseg before the change),
- ``boxed``: each class interpolated only inside the box its voxels can reach (``resample_label`` now),

checks that both give the same labels voxel for voxel, and prints the time of each and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autoseg import resampling  # noqa: E402
from autoseg.io.images import read_volume  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATASETS = ("Dataset004_Hippocampus", "Dataset011_OpenKBPHeadNeckCT", "Dataset001_BraTS2015")


def dense_resample_label(seg, current, target):
    """``resample_label`` with every class interpolated over the whole volume (the old computation)."""
    boxed = resampling._label_block
    resampling._label_block = resampling._label_block_dense
    try:
        return resampling.resample_label(seg, current, target)
    finally:
        resampling._label_block = boxed


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run_dataset(folder: Path, n_cases: int | None, spacing) -> tuple[float, float, int, int]:
    labels = sorted((folder / "labelsTr").glob("*.nii*"))[:n_cases]
    volumes = []
    for path in labels:
        seg, geometry = read_volume(path)
        volumes.append((path.name, np.asarray(seg).astype(np.int16), tuple(float(s) for s in geometry.spacing[:3])))
    target = tuple(spacing) if spacing else tuple(np.median([v[2] for v in volumes], axis=0))
    t_dense = t_boxed = 0.0
    differing = voxels = 0
    for name, seg, current in volumes:
        a, ta = timed(dense_resample_label, seg, current, target)
        b, tb = timed(resampling.resample_label, seg, current, target)
        t_dense, t_boxed = t_dense + ta, t_boxed + tb
        differing += int((a != b).sum())
        voxels += a.size
    print(f"| {folder.name} | {len(volumes)} | {target[0]:.3g} x {target[1]:.3g} x {target[2]:.3g} | "
          f"{t_dense:.2f} | {t_boxed:.2f} | {t_boxed / t_dense:.2f} | {differing} of {voxels} |")
    return t_dense, t_boxed, differing, voxels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path)
    parser.add_argument("--cases", type=int, default=None, help="first N label maps of each dataset")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="target spacing (mm), X Y Z")
    args = parser.parse_args()
    datasets = args.datasets or [SHARED / d for d in DEFAULT_DATASETS if (SHARED / d).is_dir()]
    print(f"CPU: {platform.processor() or platform.machine()}; numpy {np.__version__}")
    print("| dataset | labels | target spacing (mm) | dense s | boxed s | boxed / dense | differing voxels |")
    print("|---|---|---|---|---|---|---|")
    differing = sum(run_dataset(d, args.cases, args.spacing)[2] for d in datasets)
    if differing:
        sys.exit(f"{differing} voxels differ between the dense and the boxed computation")


if __name__ == "__main__":
    main()
