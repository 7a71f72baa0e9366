"""A tiny planned workspace for training tests, built directly (no planner, no preprocessing).

Raw cases are 16^3 NIfTI volumes with an identity affine; the preprocessed cases are the same
arrays (no crop, no transpose, spacing 1), so validation maps back trivially. Images are
learnable: class 1 is a bright box, class 2 a dim one, on a noisy background.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from autoseg.planning.plans import ConfigurationPlan, NormalizationPlan, Plans
from autoseg.splits import make_splits
from autoseg.storage import CaseProperties, write_case
from autoseg.workspace import Workspace

DATASET = "Dataset990_Tiny"
SIZE = 16


def tiny_plan(patch=(SIZE,) * 3, features=(4, 8, 8), batch_size=2, name="3d_fullres",
              batch_dice=False) -> ConfigurationPlan:
    n = len(features)
    dims = len(patch)
    return ConfigurationPlan(
        name=name, spatial_dims=dims, spacing=(1.0,) * dims, median_shape=tuple(patch), patch_size=tuple(patch),
        batch_size=batch_size, kernel_sizes=((3,) * dims,) * n, strides=((1,) * dims,) + ((2,) * dims,) * (n - 1),
        features=tuple(features), batch_dice=batch_dice, data_identifier="3d_fullres")


def toy_case(seed: int, shape=(SIZE,) * 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.int8)
    a = [int(rng.integers(1, s // 2 - 2)) for s in shape]
    seg[a[0]:a[0] + shape[0] // 3, a[1]:a[1] + shape[1] // 3, a[2]:a[2] + shape[2] // 3] = 1
    b = [int(rng.integers(s // 2, s - s // 4)) for s in shape]
    seg[b[0]:b[0] + shape[0] // 4, b[1]:b[1] + shape[1] // 4, b[2]:b[2] + shape[2] // 4] = 2
    image = rng.normal(0, 0.3, shape).astype(np.float32) + 2.0 * (seg == 1) + 1.0 * (seg == 2)
    return image.astype(np.float32), seg


LABELS = {"background": 0, "bright": 1, "dim": 2}
REGIONS = {"background": 0, "any": [1, 2], "dim": [2]}  # region labels; regions_class_order [1, 2]
IGNORE = {"background": 0, "bright": 1, "dim": 2, "ignore": 3}  # the last slab of every case is unlabelled


def make_workspace(root: Path, n_cases: int = 4, plan: ConfigurationPlan | None = None,
                   shape=(SIZE,) * 3, name: str = DATASET, labels: dict | None = None,
                   extra_plans: tuple[ConfigurationPlan, ...] = ()) -> Workspace:
    ws = Workspace(Path(root))
    plan = plan or tiny_plan()
    raw = ws.raw / name
    pre = ws.preprocessed_dir(name)
    labels = labels or LABELS
    dataset_json = {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": n_cases, "file_ending": ".nii.gz"}
    if labels == REGIONS:
        dataset_json["regions_class_order"] = [1, 2]
    for d in (raw / "imagesTr", raw / "labelsTr", pre):
        d.mkdir(parents=True, exist_ok=True)
    for folder in (raw, pre):
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
    data_dir = pre / f"autosegPlans_{plan.data_identifier}"
    ids = [f"case_{i:03d}" for i in range(n_cases)]
    for i, cid in enumerate(ids):
        image, seg = toy_case(i, shape)
        if "ignore" in labels:
            seg[-3:] = labels["ignore"]
        nib.save(nib.Nifti1Image(image, np.eye(4)), raw / "imagesTr" / f"{cid}_0000.nii.gz")
        nib.save(nib.Nifti1Image(seg.astype(np.uint8), np.eye(4)), raw / "labelsTr" / f"{cid}.nii.gz")
        props = CaseProperties(case_id=cid, original_shape=shape, original_spacing=(1.0,) * 3,
                               original_affine=tuple(tuple(map(float, r)) for r in np.eye(4)),
                               bbox=tuple((0, s) for s in shape), shape_after_crop=shape, spacing_after_crop=(1.0,) * 3,
                               shape_after_resample=shape, spacing=(1.0,) * 3, classes_present=(1, 2))
        locations = {c: np.argwhere(seg == c).astype(np.int32) for c in (1, 2)}  # (N, 3) voxels per class
        write_case(data_dir, props, image[None], seg[None], locations)
    plans = Plans(dataset_name=name, plans_name="autosegPlans", planner="test", transpose_forward=(0, 1, 2),
                  transpose_backward=(0, 1, 2), channel_names=("MR",), labels=labels,
                  normalization=(NormalizationPlan("MR", "zscore"),),
                  configurations={p.name: p for p in (plan, *extra_plans)},
                  default_configuration=plan.name)
    plans.save(pre / "plans.json")
    make_splits(ids, 2 if n_cases < 5 else 5).save(pre / "splits.json")
    return ws


FAST = {"epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "num_workers": 0, "val_mirroring": False}
