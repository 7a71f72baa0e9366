import numpy as np
import pytest

from autoseg.normalization import normalize, normalize_channel
from autoseg.planning.plans import NormalizationPlan


def test_zscore_gives_mean_0_std_1():
    img = np.random.default_rng(0).normal(50, 7, size=(10, 11, 12)).astype(np.float32)
    out = normalize_channel(img, NormalizationPlan("T2", "zscore"))
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5


def test_zscore_constant_image_does_not_divide_by_zero():
    out = normalize_channel(np.full((4, 4, 4), 7.0, np.float32), NormalizationPlan("T1", "zscore"))
    assert np.isfinite(out).all() and (out == 0).all()


def test_masked_zscore_uses_mask_stats_and_zeroes_outside():
    rng = np.random.default_rng(1)
    img = np.zeros((8, 8, 8), np.float32)
    mask = np.zeros_like(img, dtype=bool)
    mask[2:6, 2:6, 2:6] = True
    img[mask] = rng.normal(100, 5, size=mask.sum())
    img[~mask] = 3.0
    out = normalize_channel(img, NormalizationPlan("MR", "zscore", use_mask=True), mask)
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-4
    assert (out[~mask] == 0).all()


def test_ct_clips_then_uses_dataset_stats():
    plan = NormalizationPlan("CT", "ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)
    img = np.array([-1000.0, -100.0, 50.0, 200.0, 3000.0], np.float32)
    out = normalize_channel(img, plan)
    np.testing.assert_allclose(out, [-6.0, -6.0, 0.0, 6.0, 6.0])


def test_ct_without_statistics_names_the_fix():
    with pytest.raises(ValueError, match="rerun `autoseg plan`"):
        normalize_channel(np.zeros(3, np.float32), NormalizationPlan("CT", "ct"))


def test_rescale_and_none():
    img = np.array([2.0, 4.0, 6.0], np.float32)
    np.testing.assert_allclose(normalize_channel(img, NormalizationPlan("x", "rescale_0_1")), [0, 0.5, 1])
    np.testing.assert_array_equal(normalize_channel(img, NormalizationPlan("x", "none")), img)
    assert (normalize_channel(np.ones(3, np.float32), NormalizationPlan("x", "rescale_0_1")) == 0).all()


def test_unknown_scheme_lists_choices():
    with pytest.raises(ValueError, match="choices: ct, zscore"):
        normalize_channel(np.zeros(3, np.float32), NormalizationPlan("x", "minmax"))


def test_normalize_all_channels_and_checks_count():
    data = np.stack([np.arange(8, dtype=np.float32).reshape(2, 2, 2)] * 2)
    plans = (NormalizationPlan("a", "zscore"), NormalizationPlan("b", "none"))
    out = normalize(data, plans)
    assert abs(out[0].mean()) < 1e-6 and (out[1] == data[1]).all()
    with pytest.raises(ValueError, match="2 channel"):
        normalize(data, plans[:1])
