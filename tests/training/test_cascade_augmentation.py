"""The two augmentations of a cascade stage's previous-stage channels (nnU-Net v2's
ApplyRandomBinaryOperatorTransform and RemoveRandomConnectedComponentFromOneHotEncodingTransform)."""

import numpy as np
import pytest

from autoseg.training.cascade_augmentation import (CascadeAugmentSettings, CascadeParams, apply_binary_operators,
                                                   apply_cascade_augmentation, ball, binary_operator,
                                                   draw_cascade_augmentation, remove_components)


def _cube(shape=(20, 20, 20), lo=6, hi=14) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_ball_holds_the_offsets_within_the_radius():
    assert ball(1, 3).sum() == 7 and ball(1.5, 3).sum() == 19 and ball(2, 2).sum() == 13
    assert ball(2.5, 3).shape == (5, 5, 5)


def test_dilation_grows_erosion_shrinks_closing_fills_opening_cuts():
    cube = _cube()
    assert binary_operator(cube, "dilation", 1).sum() == 8 ** 3 + 6 * 8 ** 2  # a face layer on every side
    assert binary_operator(cube, "erosion", 1).sum() == 6 ** 3
    holed = cube.copy()
    holed[10, 10, 10] = False
    assert binary_operator(holed, "closing", 1)[10, 10, 10]
    spur = cube.copy()
    spur[14:18, 10, 10] = True  # a one-voxel-thin spur
    opened = binary_operator(spur, "opening", 1)
    assert not opened[15:18, 10, 10].any() and opened[8:12, 8:12, 8:12].all()
    with pytest.raises(ValueError, match="unknown binary operator 'thinning'"):
        binary_operator(cube, "thinning", 1)


def test_erosion_does_not_eat_a_structure_at_the_patch_border():
    m = np.zeros((10, 10, 10), bool)
    m[:4] = True  # touches the border along axis 0
    assert binary_operator(m, "erosion", 1)[0].all()


def test_what_a_channel_gains_is_taken_from_the_others():
    a = _cube()
    b = np.zeros_like(a)
    b[14:17, 6:14, 6:14] = True  # touches a's face
    out = apply_binary_operators(np.stack([a, b]).astype(np.float32), [(0, "dilation", 2)])
    assert out[0].sum() > a.sum()
    assert not (out[0] * out[1]).any()  # disjoint again
    assert out[1].sum() < b.sum() and out[1][16:17].sum() > 0


def test_one_small_component_is_removed_a_large_one_never():
    ch = np.zeros((1, 20, 20, 20), np.float32)
    ch[0, 1:3, 1:3, 1:3] = 1  # 8 voxels
    ch[0, 10:12, 10:12, 10:12] = 1  # 8 voxels
    ch[0, 15:17, 1:3, 1:3] = 1  # 8 voxels
    first = remove_components(ch, [(0, 0.0)], 0.15)
    last = remove_components(ch, [(0, 0.99)], 0.15)
    assert first.sum() == last.sum() == 16
    assert first[0, 1, 1, 1] == 0 and last[0, 1, 1, 1] == 1  # u picks which one
    big = np.zeros((1, 10, 10, 10), np.float32)
    big[0, :6, :6, :6] = 1  # 216 voxels > 15% of 1000
    np.testing.assert_array_equal(remove_components(big, [(0, 0.5)], 0.15), big)


def test_diagonal_neighbours_are_one_component():
    ch = np.zeros((1, 8, 8, 8), np.float32)
    ch[0, 2, 2, 2] = ch[0, 3, 3, 3] = 1  # touch at a corner only
    assert remove_components(ch, [(0, 0.0)], 0.5).sum() == 0


def test_draws_follow_the_probabilities_and_the_seed():
    never = CascadeAugmentSettings(p_binary_operator=0.0, p_remove_component=0.0)
    assert draw_cascade_augmentation(np.random.default_rng(0), never, 3) == CascadeParams()
    always = CascadeAugmentSettings(p_binary_operator=1, p_operator_per_label=1, p_remove_component=1,
                                    p_remove_per_label=1)
    p = draw_cascade_augmentation(np.random.default_rng(0), always, 3)
    assert sorted(c for c, _, _ in p.operators) == [0, 1, 2] and sorted(c for c, _ in p.removals) == [0, 1, 2]
    assert all(1 <= r <= 8 for _, _, r in p.operators)
    assert p == draw_cascade_augmentation(np.random.default_rng(0), always, 3)
    draws = [draw_cascade_augmentation(np.random.default_rng(s), CascadeAugmentSettings(), 2) for s in range(2000)]
    # a patch gets an operator with p 0.4 times (1 - 0.5^2) for two channels = 0.3; a removal 0.2 * 0.75 = 0.15
    assert 0.27 < np.mean([bool(d.operators) for d in draws]) < 0.33
    assert 0.12 < np.mean([bool(d.removals) for d in draws]) < 0.18
    with pytest.raises(ValueError, match="p_binary_operator"):
        CascadeAugmentSettings(p_binary_operator=1.5)


def test_no_params_leave_the_channels_alone():
    ch = np.stack([_cube(), ~_cube()]).astype(np.float32)
    np.testing.assert_array_equal(apply_cascade_augmentation(ch, CascadeParams(), CascadeAugmentSettings()), ch)
