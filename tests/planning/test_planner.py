import numpy as np
import pytest

from autoseg.dataset import DatasetSpec
from autoseg.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.models import get_architecture
from autoseg.planning.planner import PlanningError, plan_experiment
from autoseg.planning.plans import Plans
from autoseg.planning.settings import PlannerSettings, load_preset

STATS = IntensityStats(40.0, 35.0, 120.0, -1000.0, 3000.0, -950.0, 1500.0)


def _spec(channels=("MRI",), n_labels=3):
    labels = {"background": 0, **{f"l{i}": i for i in range(1, n_labels)}}
    return DatasetSpec(name="Dataset001_T", channel_names=tuple(channels), labels=labels, num_training=0,
                       file_ending=".nii.gz")


def _plan(fp, spec, settings, **kwargs):
    return plan_experiment(fp, spec, settings, arch=get_architecture(settings.architecture), **kwargs)


def _fingerprint(spacings, shapes, channels=("MRI",), relative=1.0):
    cases = tuple(CaseFingerprint(f"c{i}", tuple(sp), tuple(sh), tuple(sh), relative)
                  for i, (sp, sh) in enumerate(zip(spacings, shapes)))
    return Fingerprint("Dataset001_T", tuple(channels), cases, (STATS,) * len(channels), 100, 1234)


def test_small_isotropic_dataset_gets_2d_and_fullres():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 208, [(35, 50, 35)] * 208)
    p = _plan(fp, _spec(), PlannerSettings())
    assert sorted(p.configurations) == ["2d", "3d_fullres"]
    assert p.default_configuration == "3d_fullres"
    full, two = p.configurations["3d_fullres"], p.configurations["2d"]
    assert (full.patch_size, full.batch_size, full.num_pools_per_axis) == ((40, 56, 40), 7, (3, 3, 3))
    assert (two.patch_size, two.batch_size) == ((56, 40), 284)
    assert full.batch_dice is False and two.batch_dice is True
    assert full.data_identifier == two.data_identifier == "3d_fullres"
    assert full.architecture == "unet" and full.blocks_per_stage == (2, 2, 2, 2)
    assert p.settings["preset"] == "default" and p.planner == "default"
    assert p.plans_name == "autosegPlans"


def test_large_images_get_lowres_and_cascade():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 50, [(400, 420, 380)] * 50)
    p = _plan(fp, _spec(), PlannerSettings())
    assert sorted(p.configurations) == ["2d", "3d_cascade_fullres", "3d_fullres", "3d_lowres"]
    full, low, casc = (p.configurations[k] for k in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert full.batch_dice is True and low.batch_dice is False and casc.batch_dice is True
    assert low.data_identifier == "3d_lowres" and casc.data_identifier == "3d_fullres"
    assert casc.previous_stage == "3d_lowres" and casc.patch_size == full.patch_size
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing))
    low_cover = (low.patch_size[0] * low.patch_size[1] * low.patch_size[2]) / (
        low.median_shape[0] * low.median_shape[1] * low.median_shape[2])
    assert low_cover >= 0.25 * 0.97  # median shape is rounded in the plan


def test_lowres_dropped_when_too_close_to_fullres():
    # fullres patch covers just under 25%: the lowres image would be < 2x smaller -> dropped
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 50, [(160, 260, 260)] * 50)
    p = _plan(fp, _spec(), PlannerSettings())
    assert "3d_lowres" not in p.configurations and p.configurations["3d_fullres"].batch_dice is False


def test_2d_like_data_defaults_to_2d():
    fp = _fingerprint([(0.5, 0.5, 1.0)] * 20, [(200, 180, 1)] * 20)
    p = _plan(fp, _spec(), PlannerSettings())
    assert list(p.configurations) == ["2d"] and p.default_configuration == "2d"
    assert p.transpose_forward[0] == 2 and p.configurations["2d"].median_shape == (180, 200)


def test_anisotropic_ct():
    spacings = [(0.8, 0.8, s) for s in [2, 3, 4, 5, 5, 5, 5, 5, 6, 6]]
    fp = _fingerprint(spacings, [(256, 256, 30)] * 10, channels=("CT",), relative=0.5)
    p = _plan(fp, _spec(channels=("CT",)), PlannerSettings())
    assert p.transpose_forward == (2, 1, 0)
    full = p.configurations["3d_fullres"]
    assert full.spacing == pytest.approx((2.9, 0.8, 0.8))
    assert full.kernel_sizes[0] == (1, 3, 3)
    assert p.configurations["2d"].spacing == pytest.approx((0.8, 0.8))
    (norm,) = p.normalization
    assert norm.scheme == "ct" and not norm.use_mask and norm.clip_high == 1500.0


def test_cropped_mri_uses_masked_zscore():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 5, [(100, 100, 100)] * 5, channels=("T1", "T2"), relative=0.6)
    p = _plan(fp, _spec(channels=("T1", "T2")), PlannerSettings())
    assert [(n.scheme, n.use_mask) for n in p.normalization] == [("zscore", True), ("zscore", True)]


@pytest.mark.parametrize("shape", [(35, 50, 35), (400, 420, 380), (30, 500, 500), (155, 240, 240), (32, 40, 36)])
def test_swin_unetr_patches_are_divisible_by_32(shape):
    s = load_preset("swin_unetr")
    fp = _fingerprint([(1.0, 0.8, 0.8) if shape[0] == 30 else (1.0, 1.0, 1.0)] * 20, [shape] * 20)
    p = _plan(fp, _spec(), s)
    for c in p.configurations.values():
        assert c.architecture == "swin_unetr"
        assert all(x % 32 == 0 for x in c.patch_size), (c.name, c.patch_size)
        assert max(c.patch_size) >= 64, (c.name, c.patch_size)  # the bottleneck keeps more than one voxel
    assert p.settings["preset"] == "swin_unetr"


def test_swin_unetr_patches_stay_divisible_by_32_whatever_the_preset_asks():
    # the entry's divisor 32 is combined with the preset's (lcm), never replaced by it
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 20, [(35, 50, 35)] * 20)
    p = _plan(fp, _spec(), load_preset("swin_unetr").replace(patch_divisible_by=16))
    assert all(x % 32 == 0 for c in p.configurations.values() for x in c.patch_size)
    p = _plan(fp, _spec(), load_preset("swin_unetr").replace(patch_divisible_by=3))
    assert all(x % 96 == 0 for c in p.configurations.values() for x in c.patch_size)


def test_resenc_preset_records_blocks_and_architecture():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 208, [(35, 50, 35)] * 208)
    p = _plan(fp, _spec(), load_preset("resenc_l"))
    full = p.configurations["3d_fullres"]
    assert full.architecture == "resenc_unet" and full.blocks_per_stage == (1, 3, 4, 6)
    assert full.batch_size == 142  # nnU-Net v2 nnUNetPlannerResEncL on the same data
    assert p.settings["gpu_memory_gb"] == 24.0 and p.planner == "resenc_l"


def test_plans_json_round_trip(tmp_path):
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 50, [(400, 420, 380)] * 50)
    p = _plan(fp, _spec(channels=("CT",)), PlannerSettings(), plans_name="myPlans")
    assert Plans.from_dict(p.to_dict()) == p
    assert Plans.load(p.save(tmp_path / "plans.json")) == p


def test_errors_name_the_fix():
    with pytest.raises(PlanningError, match="no cases"):
        _plan(_fingerprint([], []), _spec(), PlannerSettings())
    fp = _fingerprint([(1.0, 1.0, 1.0)], [(30, 30, 30)])
    with pytest.raises(PlanningError, match="declares 2"):
        _plan(fp, _spec(channels=("T1", "T2")), PlannerSettings())


def test_the_rules_given_must_be_those_of_the_presets_architecture():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 20, [(35, 50, 35)] * 20)
    with pytest.raises(PlanningError, match="plans for architecture 'resenc_unet' but the rules of 'unet'"):
        plan_experiment(fp, _spec(), load_preset("resenc_l"), arch=get_architecture("unet"))


def test_the_planner_follows_whatever_rules_the_architecture_states():
    # an architecture the planner has never heard of: fixed 4 downsamplings, edges multiples of 16, and
    # a memory estimate of 1 element per patch voxel, so the patch never shrinks
    from dataclasses import replace

    from autoseg.planning.topology import Topology

    def layout(spacing, patch, settings):
        edges = tuple(max(16, int(round(p / 16)) * 16) for p in patch)
        dims = len(patch)
        return Topology(((3,) * dims,) * 5, ((1,) * dims,) + ((2,) * dims,) * 4, (4,) * dims, edges, (16,) * dims)

    fake = replace(get_architecture("unet"), name="fake", layout=layout, features=lambda n, d, s: (7,) * n,
                   estimate=lambda topo, f, c, e, d: int(np.prod(topo.patch_size)))
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 20, [(35, 50, 35)] * 20)
    p = plan_experiment(fp, _spec(), PlannerSettings(architecture="fake"), arch=fake)
    full = p.configurations["3d_fullres"]
    assert (full.patch_size, full.features, full.architecture) == ((32, 48, 32), (7,) * 5, "fake")
    assert full.strides == ((1, 1, 1),) + ((2, 2, 2),) * 4
