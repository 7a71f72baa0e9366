import numpy as np
import pytest

from autoseg.sampling import (PatchBox, choose_foreground_voxel, draw_patch_box, forced_count,
                              oversampling_classes, read_box, read_patch)
from autoseg.storage import CaseProperties, PreprocessedCase


def _case(shape=(20, 20, 20), channels=1, seg=None):
    data = np.arange(channels * np.prod(shape), dtype=np.float32).reshape((channels, *shape)) + 1
    seg = np.zeros((1, *shape), np.int8) if seg is None else seg
    props = CaseProperties("c", shape, (1.0,) * 3, tuple(tuple(r) for r in np.eye(4)),
                           tuple((0, s) for s in shape), shape, (1.0,) * 3, shape, (1.0,) * 3)
    return PreprocessedCase(props, data, seg, {})


@pytest.mark.parametrize("bs, p, n", [(2, 0.33, 1), (9, 0.33, 3), (1, 0.33, 0), (4, 0.0, 0), (4, 1.0, 4)])
def test_forced_count_follows_nnunet_rule(bs, p, n):
    assert forced_count(bs, p) == n


def test_forced_count_rejects_fraction_outside_unit_interval():
    with pytest.raises(ValueError, match="oversample_foreground"):
        forced_count(2, 1.5)


def test_oversampling_classes_excludes_background_and_ignore():
    assert oversampling_classes([1, 2, 3], ignore_label=3) == (1, 2)
    assert oversampling_classes(regions=[(1, 2, 3), (2, 3), (3,)]) == (1, 2, 3)
    assert oversampling_classes() is None


@pytest.mark.parametrize("voxel", [(0, 0, 0), (19, 19, 19), (0, 19, 7), (10, 3, 16)])
def test_forced_box_contains_the_chosen_voxel_and_stays_inside(voxel):
    locations = {1: np.array([voxel], dtype=np.int32)}
    for seed in range(30):
        box = draw_patch_box(np.random.default_rng(seed), (20, 20, 20), (16, 16, 16), True, locations, (1,))
        assert box.contains(voxel)
        assert all(0 <= a and b <= 20 for a, b in zip(box.lower, box.upper))


def test_forced_box_offset_is_random_not_always_centred():
    locations = {1: np.array([[10, 10, 10]], dtype=np.int32)}
    lowers = {draw_patch_box(np.random.default_rng(s), (40, 40, 40), (16, 16, 16), True, locations).lower
              for s in range(20)}
    assert len(lowers) > 5


def test_forced_box_targets_only_wanted_classes_present():
    locations = {1: np.array([[1, 1, 1]]), 2: np.array([[18, 18, 18]]), 3: np.zeros((0, 3))}
    rng = np.random.default_rng(0)
    chosen = {tuple(choose_foreground_voxel(rng, locations, (2, 3))) for _ in range(20)}
    assert chosen == {(18, 18, 18)}
    both = {tuple(choose_foreground_voxel(rng, locations, None)) for _ in range(50)}
    assert both == {(1, 1, 1), (18, 18, 18)}
    assert choose_foreground_voxel(rng, locations, (3,)) is None


def test_forced_box_without_wanted_class_falls_back_to_random_box():
    box = draw_patch_box(np.random.default_rng(0), (20, 20, 20), (16, 16, 16), True, {}, (1,))
    assert box.size == (16, 16, 16) and all(0 <= a <= 4 for a in box.lower)


def test_small_volume_is_centred_and_padded_with_zeros():
    case = _case(shape=(10, 20, 12))
    case.seg[...] = 1
    box = draw_patch_box(np.random.default_rng(0), (10, 20, 12), (16, 16, 16))
    y0 = box.lower[1]
    case.seg[0, 0, y0, 0] = -1  # nnU-Net's outside-mask marker reads as background
    assert box.lower[0] == -3 and box.lower[2] == -2
    image, seg = read_patch(case, box)
    assert image.shape == (1, 16, 16, 16) and seg.shape == (1, 16, 16, 16) and seg.dtype == np.int16
    assert np.all(image[:, :3] == 0) and np.all(image[:, 13:] == 0) and np.all(seg[:, :3] == 0)
    np.testing.assert_array_equal(image[:, 3:13, :, 2:14], case.data[:, :, y0:y0 + 16, :])
    assert seg[0, 3, 0, 2] == 0 and seg[0, 3, 0, 3] == 1 and set(np.unique(seg)) == {0, 1}


def test_2d_box_is_one_slice_containing_the_voxel():
    locations = {1: np.array([[7, 2, 19]])}
    box = draw_patch_box(np.random.default_rng(1), (20, 20, 20), (1, 16, 16), True, locations)
    assert box.lower[0] == 7 and box.size == (1, 16, 16) and box.contains((7, 2, 19))


class _Recorder:
    """Array stand-in that records which region was read."""

    def __init__(self, array):
        self.array, self.keys = array, []
        self.shape, self.ndim, self.dtype = array.shape, array.ndim, array.dtype

    def __getitem__(self, key):
        self.keys.append(key)
        return self.array[key]


def test_read_box_touches_only_the_box():
    rec = _Recorder(np.ones((2, 50, 50, 50), np.float32))
    out = read_box(rec, PatchBox((-4, 10, 45), (8, 8, 8)), 0.0)
    assert rec.keys == [(slice(None), slice(0, 4), slice(10, 18), slice(45, 50))]
    assert out.sum() == 2 * 4 * 8 * 5


def test_expanded_box_grows_symmetrically():
    box = PatchBox((2, 3, 4), (16, 16, 16)).expanded((1, 0, 3))
    assert box.lower == (1, 3, 1) and box.size == (18, 16, 22)


def test_forced_class_is_drawn_uniformly_not_by_voxel_count():
    """nnU-Net picks a present class first, then a voxel of it, so a class of 5 voxels is drawn as
    often as one of 5000 (a voxel drawn over all foreground would almost never hit it)."""
    rng = np.random.default_rng(0)
    big = np.stack(np.meshgrid(*[np.arange(10, 27)] * 3, indexing="ij"), -1).reshape(-1, 3)[:5000]
    locations = {1: big, 2: np.full((5, 3), 2), 3: np.zeros((0, 3), int)}
    drawn = [tuple(choose_foreground_voxel(rng, locations, None)) for _ in range(400)]
    small = sum(v == (2, 2, 2) for v in drawn)
    assert 150 <= small <= 250  # about half: classes 1 and 2 are present, 3 has no voxel
