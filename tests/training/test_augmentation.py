import dataclasses
import math

import numpy as np
import pytest

from autoseg.training.augmentation import (AugmentParams, AugmentSettings, adjust_contrast, apply_augmentation,
                                           centre_crop, draw_augmentation, gamma_transform, is_dummy_2d,
                                           read_margin)

PATCH = (16, 16, 16)
ALL_ON = AugmentSettings(**{f.name: 1.0 for f in dataclasses.fields(AugmentSettings) if f.name.startswith("p_")})
SPATIAL_ONLY = dataclasses.replace(AugmentSettings.off(), p_rotation=1.0, p_scaling=1.0)


def _blob_volume(shape=(48, 48, 48), seed=0):
    """Smooth image in [0, 1] with two blobs; label = thresholded image (1 and 2)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    image = np.zeros(shape, np.float32)
    for _ in range(2):
        centre = rng.uniform(18, 30, 3)
        image = np.maximum(image, np.exp(-((grid - centre) ** 2).sum(-1) / (2 * 4.0 ** 2)))
    seg = (image > 0.5).astype(np.int16) + (image > 0.8)
    return image[None].astype(np.float32), seg[None]


def _read(array, patch, margin):
    """Centre patch of ``array`` (C, 48, 48, 48) enlarged by ``margin``, like the loader reads it."""
    size = [p + 2 * m for p, m in zip(patch, margin)]
    return centre_crop(array, size).copy()


def test_off_draws_nothing_and_only_crops():
    rng = np.random.default_rng(0)
    params = draw_augmentation(rng, AugmentSettings.off(), PATCH, 2)
    assert params == AugmentParams()
    image = rng.standard_normal((2, 20, 20, 20)).astype(np.float32)
    seg = rng.integers(0, 3, (1, 20, 20, 20)).astype(np.int16)
    out, out_seg = apply_augmentation(image, seg, params, PATCH)
    np.testing.assert_array_equal(out, image[:, 2:18, 2:18, 2:18])
    np.testing.assert_array_equal(out_seg, seg[:, 2:18, 2:18, 2:18])


def test_all_on_draws_every_transform_and_is_reproducible():
    a = draw_augmentation(np.random.default_rng(5), ALL_ON, PATCH, 2)
    b = draw_augmentation(np.random.default_rng(5), ALL_ON, PATCH, 2)
    assert a == b
    assert len(a.rotation) == 3 and all(abs(r) <= math.radians(30) for r in a.rotation)
    assert len(set(a.scale)) == 1 and 0.7 <= a.scale[0] <= 1.4
    assert 0 <= a.noise_std <= 0.1 and a.mirror == (0, 1, 2)
    for field in ("blur_sigma", "brightness", "contrast", "low_res", "gamma_inverted", "gamma"):
        assert len(getattr(a, field)) == 2, field


def test_bgcontrast_factors_fall_on_both_sides_of_one():
    factors = [draw_augmentation(np.random.default_rng(s), ALL_ON, PATCH, 1).brightness[0] for s in range(60)]
    assert min(factors) >= 0.75 and max(factors) <= 1.25
    assert sum(f < 1 for f in factors) > 10 and sum(f > 1 for f in factors) > 10


def test_rotation_ranges_for_2d_and_dummy_2d():
    elongated = [draw_augmentation(np.random.default_rng(s), ALL_ON, (16, 32), 1).rotation for s in range(40)]
    assert all(len(r) == 1 and abs(r[0]) <= math.radians(15) for r in elongated)
    square = [draw_augmentation(np.random.default_rng(s), ALL_ON, (16, 16), 1).rotation[0] for s in range(40)]
    assert max(abs(r) for r in square) > math.radians(30)
    assert is_dummy_2d((4, 32, 32), ALL_ON) and not is_dummy_2d((16, 32, 32), ALL_ON)
    p = draw_augmentation(np.random.default_rng(1), ALL_ON, (4, 32, 32), 1)
    assert p.rotation[1:] == (0.0, 0.0) and p.scale[0] == 1.0 and p.low_res[0] in (None, (1.0,) + p.low_res[0][1:])
    assert read_margin(p, (4, 32, 32))[0] == 0


def test_settings_validate_probabilities():
    with pytest.raises(ValueError, match="p_blur"):
        AugmentSettings(p_blur=1.5)


@pytest.mark.parametrize("seed", range(4))
def test_read_margin_is_enough(seed):
    """Reading just the margin gives the same result as reading far more context."""
    image, seg = _blob_volume(seed=seed)
    params = draw_augmentation(np.random.default_rng(seed), SPATIAL_ONLY, PATCH, 1)
    m = read_margin(params, PATCH)
    assert 0 < max(m) <= 11  # worst case: 1.4 * sqrt(3) * 7.5 - 7.5
    out, out_seg = apply_augmentation(_read(image, PATCH, m), _read(seg, PATCH, m), params, PATCH)
    big = [x + 3 for x in m]
    ref, ref_seg = apply_augmentation(_read(image, PATCH, big), _read(seg, PATCH, big), params, PATCH)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert (out_seg == ref_seg).mean() > 0.999


@pytest.mark.parametrize("seed", range(6))
def test_spatial_transform_keeps_label_aligned_with_image(seed):
    image, seg = _blob_volume(seed=seed)
    params = draw_augmentation(np.random.default_rng(seed), SPATIAL_ONLY, PATCH, 1)
    m = read_margin(params, PATCH)
    out, out_seg = apply_augmentation(_read(image, PATCH, m), _read(seg, PATCH, m), params, PATCH)
    assert out.shape == (1, *PATCH) and out_seg.shape == (1, *PATCH)
    assert set(np.unique(out_seg)) <= {0, 1, 2}
    relabelled = (out > 0.5).astype(np.int16) + (out > 0.8)
    mismatch = relabelled != out_seg
    assert mismatch.mean() < 0.06
    # linear vs nearest interpolation only disagree right at a boundary (a 1-voxel shift reaches 0.17)
    near_threshold = np.minimum(abs(out - 0.5), abs(out - 0.8))
    assert near_threshold[mismatch].max(initial=0) < 0.12


def test_quarter_turn_is_exact():
    image, seg = _blob_volume()
    params = AugmentParams(rotation=(math.pi / 2, 0.0, 0.0))
    m = read_margin(params, PATCH)
    out, out_seg = apply_augmentation(_read(image, PATCH, m), _read(seg, PATCH, m), params, PATCH)
    relabelled = (out > 0.5).astype(np.int16) + (out > 0.8)
    np.testing.assert_array_equal(relabelled, out_seg)
    crop = centre_crop(seg, PATCH)
    assert any(np.array_equal(out_seg, np.rot90(crop, k, axes=(2, 3))) for k in (1, 3))


def test_full_augmentation_keeps_label_values_and_shapes():
    image, seg = _blob_volume()
    for s in range(5):
        params = draw_augmentation(np.random.default_rng(s), ALL_ON, PATCH, 1)
        m = read_margin(params, PATCH)
        out, out_seg = apply_augmentation(_read(image, PATCH, m), _read(seg, PATCH, m), params, PATCH)
        assert out.dtype == np.float32 and out.flags.c_contiguous and np.isfinite(out).all()
        assert out_seg.dtype == np.int16 and set(np.unique(out_seg)) <= {0, 1, 2}


def test_mirroring_flips_image_and_label_together():
    image, seg = _blob_volume()
    params = AugmentParams(mirror=(0, 2))
    out, out_seg = apply_augmentation(_read(image, PATCH, (0, 0, 0)), _read(seg, PATCH, (0, 0, 0)), params, PATCH)
    np.testing.assert_array_equal(out, centre_crop(image, PATCH)[:, ::-1, :, ::-1])
    np.testing.assert_array_equal(out_seg, centre_crop(seg, PATCH)[:, ::-1, :, ::-1])


def test_2d_patch_augmentation():
    image, seg = _blob_volume()
    image2, seg2 = image[:, 20], seg[:, 20]
    params = draw_augmentation(np.random.default_rng(3), ALL_ON, (16, 16), 1)
    m = read_margin(params, (16, 16))
    out, out_seg = apply_augmentation(_read(image2, (16, 16), m), _read(seg2, (16, 16), m), params, (16, 16))
    assert out.shape == (1, 16, 16) and out_seg.shape == (1, 16, 16)
    assert set(np.unique(out_seg)) <= {0, 1, 2}


def test_intensity_helpers_keep_their_promises():
    x = np.random.default_rng(0).standard_normal((8, 8, 8)).astype(np.float32)
    c = adjust_contrast(x, 1.25)
    assert c.min() >= x.min() and c.max() <= x.max()
    for invert in (False, True):
        g = gamma_transform(x, 1.4, invert)
        assert abs(g.mean() - x.mean()) < 1e-4 and abs(g.std() - x.std()) < 1e-3
        assert not np.allclose(g, x)
