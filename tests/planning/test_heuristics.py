import pytest

from autoseg.fingerprint import IntensityStats
from autoseg.models import get_architecture
from autoseg.planning import heuristics
from autoseg.planning.heuristics import (initial_patch_size, median_resampled_shape, needs_lowres,
                                         next_lowres_spacing, normalization_plan, resampled_shape, resampling_plan,
                                         target_spacing, transpose_order)
from autoseg.planning.settings import PlannerSettings, load_preset


def patch_and_batch(spacing, median_shape, dataset_voxels, n_classes, settings):
    """The planner's rule for the architecture the settings plan for (its registry entry)."""
    return heuristics.patch_and_batch(spacing, median_shape, dataset_voxels, n_classes, settings,
                                      get_architecture(settings.architecture))

STATS = IntensityStats(mean=40.0, median=35.0, std=120.0, min=-1000.0, max=3000.0,
                       percentile_00_5=-950.0, percentile_99_5=1500.0)


def test_target_spacing_is_the_per_axis_median():
    spacings = [(1.0, 1.0, 1.0), (0.8, 0.9, 1.2), (0.7, 1.1, 1.5)]
    assert target_spacing(spacings, [(100, 100, 100)] * 3) == (0.8, 1.0, 1.2)


def test_thick_short_axis_uses_its_10th_percentile():
    z = [2, 3, 4, 5, 5, 5, 5, 5, 6, 6]
    spacings = [(0.8, 0.8, s) for s in z]
    shapes = [(256, 256, 30)] * 10
    assert target_spacing(spacings, shapes) == pytest.approx((0.8, 0.8, 2.9))


def test_thick_axis_with_many_slices_keeps_the_median():
    spacings = [(0.8, 0.8, s) for s in [2, 3, 4, 5, 5, 5, 5, 5, 6, 6]]
    assert target_spacing(spacings, [(256, 256, 200)] * 10)[2] == 5.0


def test_10th_percentile_never_below_the_other_axes():
    spacings = [(1.5, 1.5, s) for s in [1, 1, 5, 5, 5, 5, 5, 5, 5, 5]]
    assert target_spacing(spacings, [(256, 256, 20)] * 10)[2] == pytest.approx(1.5 + 1e-5)


def test_transpose_order_puts_the_coarsest_axis_first():
    assert transpose_order((0.8, 0.8, 5.0)) == ((2, 1, 0), (2, 1, 0))
    assert transpose_order((5.0, 0.8, 0.8)) == ((0, 2, 1), (0, 2, 1))
    fwd, bwd = transpose_order((4.7, 4.7, 2.5))  # in-plane tie: the later axis (Y) wins, like nnU-Net
    assert fwd == (1, 2, 0) and tuple(fwd[b] for b in bwd) == (0, 1, 2)
    assert transpose_order((1.0, 1.0, 1.0))[0] == (2, 1, 0)  # isotropic: slice along Z in 2d
    assert transpose_order((1.0, 3.0, 1.0), median_shape=(200, 180, 1))[0] == (2, 1, 0)  # 2D data


def test_resampled_shapes():
    assert resampled_shape((100, 100, 20), (0.5, 0.5, 5.0), (1.0, 1.0, 2.5)) == (50, 50, 40)
    assert median_resampled_shape([(1, 1, 1), (2, 2, 2)], [(10, 10, 10), (11, 12, 13)], (1, 1, 1)) == (16.0, 17.0, 18.0)


def test_ct_normalization_uses_dataset_foreground_statistics():
    (ct,) = normalization_plan(["CT"], [STATS], 0.5)
    assert (ct.scheme, ct.clip_low, ct.clip_high, ct.mean, ct.std) == ("ct", -950.0, 1500.0, 40.0, 120.0)
    assert not ct.use_mask
    assert normalization_plan(["ct"], [STATS], 1.0)[0].scheme == "ct"


def test_other_schemes_and_masked_zscore():
    names = ["T1", "noNorm", "rescale_to_0_1", "zscore"]
    plans = normalization_plan(names, [STATS] * 4, median_relative_size_after_crop=0.6)
    assert [p.scheme for p in plans] == ["zscore", "none", "rescale_0_1", "zscore"]
    assert [p.use_mask for p in plans] == [True, False, False, True]
    assert [p.channel_name for p in plans] == names
    assert not normalization_plan(["T1"], [STATS], 0.75)[0].use_mask
    with pytest.raises(ValueError, match="2 channel names but 1"):
        normalization_plan(["T1", "T2"], [STATS], 1.0)


def test_resampling_plan_orders():
    r = resampling_plan(3.0)
    assert (r.image_order, r.label_order, r.order_z_image, r.order_z_label, r.probabilities_order) == (3, 1, 0, 0, 1)
    assert r.anisotropy_threshold == 3.0


def test_initial_patch_size():
    assert initial_patch_size((1, 1, 1), (35, 50, 35), 256 ** 3) == (35, 50, 35)
    assert initial_patch_size((1, 1, 1), (300, 400, 500), 256 ** 3) == (256, 256, 256)
    assert initial_patch_size((5, 0.8, 0.8), (30, 600, 600), 256 ** 3) == (30, 472, 472)
    assert initial_patch_size((1, 1), (50, 35.5), 2048 ** 2) == (50, 35.5)


def test_patch_and_batch_hippocampus_matches_nnunet():
    # nnU-Net v2 (2.8.1) plans for these 208 Hippocampus cases: 3d 40x56x40 batch 7, 2d 56x40 batch 284
    s = PlannerSettings()
    n_vox = 35 * 50 * 35 * 208
    pp = patch_and_batch((1.0, 1.0, 1.0), (35, 50, 35), n_vox, 3, s)
    assert (pp.patch_size, pp.batch_size, pp.topology.num_pools) == ((40, 56, 40), 7, (3, 3, 3))
    pp2 = patch_and_batch((1.0, 1.0), (50, 35), n_vox, 3, s)
    assert (pp2.patch_size, pp2.batch_size) == ((56, 40), 284)
    # the ResEnc M preset removes the 5% cap: batch from memory alone
    assert patch_and_batch((1.0, 1.0, 1.0), (35, 50, 35), n_vox, 3, load_preset("resenc_m")).batch_size == 58


def test_patch_shrinks_until_the_budget_fits():
    # BraTS-like: 1 mm, median 155x240x240, 6 cases, 5 classes; nnU-Net v2 plans 96x160x160, batch 2
    s = PlannerSettings()
    pp = patch_and_batch((1.0, 1.0, 1.0), (155, 240, 240), 155 * 240 * 240 * 6, 5, s)
    assert pp.patch_size == (96, 160, 160) and pp.batch_size == 2
    assert pp.topology.strides[-1] == (1, 2, 2)
    assert pp.estimate <= s.reference_estimate(3)
    assert all(p % d == 0 for p, d in zip(pp.patch_size, pp.topology.divisible_by))
    # a larger GPU keeps a larger patch
    big = patch_and_batch((1.0, 1.0, 1.0), (155, 240, 240), 155 * 240 * 240 * 6, 5, s.replace(gpu_memory_gb=24))
    assert big.patch_size[0] * big.patch_size[1] * big.patch_size[2] > 96 * 160 * 160


def test_anisotropic_patch_and_batch():
    # nnU-Net v2 plans this synthetic 0.8x0.8x5 mm dataset (10 cases) with 20x224x224, batch 2
    pp = patch_and_batch((5.0, 0.8, 0.8), (20, 195.5, 199), 20 * 195.5 * 199 * 10, 3, PlannerSettings())
    assert pp.patch_size == (20, 224, 224) and pp.batch_size == 2
    assert pp.topology.kernel_sizes[0] == (1, 3, 3)


def test_batch_floor():
    pp = patch_and_batch((1.0, 1.0, 1.0), (35, 50, 35), 35 * 50 * 35 * 2, 3, PlannerSettings())
    assert pp.batch_size == 2  # 5% of two tiny cases would allow 0


def test_swin_patch_is_divisible_by_32():
    s = load_preset("swin_unetr")
    for spacing, median in [((1.0, 1.0, 1.0), (35, 50, 35)), ((5.0, 0.8, 0.8), (20, 195.5, 199)),
                            ((1.0, 1.0, 1.0), (155, 240, 240)), ((1.0, 1.0), (50, 35))]:
        pp = patch_and_batch(spacing, median, 1e9, 3, s)
        assert all(p % 32 == 0 and p >= 32 for p in pp.patch_size), (median, pp.patch_size)
        assert pp.features[0] == s.base_features


def test_lowres_helpers():
    assert needs_lowres((128, 128, 128), (400, 400, 400), 0.25)
    assert not needs_lowres((96, 160, 160), (155, 240, 240), 0.25)
    assert next_lowres_spacing((5.0, 0.8, 0.8)) == pytest.approx((5.0, 0.824, 0.824))
    assert next_lowres_spacing((1.0, 1.5, 1.0)) == pytest.approx((1.03, 1.545, 1.03))
