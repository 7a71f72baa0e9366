"""Optional: plans of the real datasets in ../shared/data equal nnU-Net v2's (docs/planning.md).

Skipped when the shared data folder is absent (it is never part of the project)."""

from pathlib import Path

import pytest

from autoseg.fingerprint import extract_fingerprint
from autoseg.integrity import check_dataset
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
                            load_preset("default"), "autosegPlans")
    assert "3d_lowres" not in plans.configurations  # the full-res patch covers enough of each image
    for config, (spacing, patch, batch, pools, schemes) in NNUNET[name].items():
        got = plans.configurations[config]
        assert tuple(round(s, 3) for s in got.spacing) == spacing, config
        assert (got.patch_size, got.batch_size, got.num_pools_per_axis) == (patch, batch, pools), config
        assert tuple(n.scheme for n in plans.normalization) == schemes
