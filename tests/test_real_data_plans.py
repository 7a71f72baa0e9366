"""Optional: plans of the real datasets in ../shared/data equal nnU-Net v2's (docs/planning.md).

Skipped when the shared data folder is absent (it is never part of the project)."""

from pathlib import Path

import pytest

from autoseg.fingerprint import extract_fingerprint
from autoseg.integrity import check_dataset
from autoseg.models import get_architecture
from autoseg.planning.planner import plan_experiment
from autoseg.planning.settings import load_preset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# nnU-Net v2 2.8.1's plans (default planner, 8 GB), as tabulated in docs/planning.md:
# configuration -> (spacing, patch size, batch size, pools per axis, normalisation per channel)
NNUNET = {
    "Dataset004_Hippocampus": {
        "2d": ((1.0, 1.0), (56, 40), 284, (3, 3), ("zscore",)),
        "3d_fullres": ((1.0, 1.0, 1.0), (40, 56, 40), 7, (3, 3, 3), ("zscore",)),
    },
    "Dataset011_OpenKBPHeadNeckCT": {
        "2d": ((2.5, 4.688), (128, 128), 195, (5, 5), ("ct",)),
        "3d_fullres": ((4.688, 2.5, 4.688), (128, 128, 128), 2, (5, 5, 5), ("ct",)),
    },
    "Dataset001_BraTS2015": {
        "2d": ((1.0, 1.0), (256, 256), 41, (6, 6), ("zscore", "zscore")),
        "3d_fullres": ((1.0, 1.0, 1.0), (96, 160, 160), 2, (4, 5, 5), ("zscore", "zscore")),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NNUNET))
def test_plans_equal_nnunet_v2(name):
    root = SHARED / name
    if not (root / "dataset.json").is_file():
        pytest.skip(f"{root} is absent")
    spec, cases = check_dataset(root, workers=2, progress=False)
    plans = plan_experiment(extract_fingerprint(spec, cases, workers=2, progress=False), spec,
                            load_preset("default"), "autosegPlans", arch=get_architecture("unet"))
    assert "3d_lowres" not in plans.configurations  # the full-res patch covers enough of each image
    for config, (spacing, patch, batch, pools, schemes) in NNUNET[name].items():
        got = plans.configurations[config]
        assert tuple(round(s, 3) for s in got.spacing) == spacing, config
        assert (got.patch_size, got.batch_size, got.num_pools_per_axis) == (patch, batch, pools), config
        assert tuple(n.scheme for n in plans.normalization) == schemes


# nnU-Net v2 2.8.1's nnUNetPlannerResEncL plans (nnUNetResEncUNetLPlans.json; benchmarks/resenc_vs_nnunet.py):
# configuration -> (patch size, batch size, pools per axis, features per stage)
NNUNET_RESENC_L = {
    "Dataset004_Hippocampus": {
        "2d": ((56, 40), 4554, (3, 3), (32, 64, 128, 256)),
        "3d_fullres": ((40, 56, 40), 142, (3, 3, 3), (32, 64, 128, 256)),
    },
    "Dataset011_OpenKBPHeadNeckCT": {
        "2d": ((128, 128), 561, (5, 5), (32, 64, 128, 256, 512, 512)),
        "3d_fullres": ((128, 128, 128), 7, (5, 5, 5), (32, 64, 128, 256, 320, 320)),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NNUNET_RESENC_L))
def test_resenc_l_plans_equal_nnunet_v2(name):
    root = SHARED / name
    if not (root / "dataset.json").is_file():
        pytest.skip(f"{root} is absent")
    spec, cases = check_dataset(root, workers=2, progress=False)
    settings = load_preset("resenc_l")
    plans = plan_experiment(extract_fingerprint(spec, cases, workers=2, progress=False), spec, settings,
                            "autosegPlans_resenc_l", arch=get_architecture(settings.architecture))
    for config, (patch, batch, pools, features) in NNUNET_RESENC_L[name].items():
        got = plans.configurations[config]
        assert (got.patch_size, got.batch_size, got.num_pools_per_axis) == (patch, batch, pools), config
        assert got.features == features and got.blocks_per_stage == (1, 3, 4, 6, 6, 6)[:len(features)], config
