"""Metrics against hand-computed answers and a brute-force distance reference."""

import math

import numpy as np
import pytest

from autoseg.evaluation.metrics import (
    case_metrics,
    evaluation_targets,
    foreground_mean,
    image_diagonal_mm,
    label_metrics,
    mean_metrics,
)


def two_cubes(axis: int, offset: int, n: int = 6, size: int = 14):
    """Cube A at [2, 2+n)^3 and cube B shifted by ``offset`` voxels along ``axis``."""
    a = np.zeros((size,) * 3, bool)
    a[2:2 + n, 2:2 + n, 2:2 + n] = True
    b = np.roll(a, offset, axis=axis)
    return a, b


def spacing_with(axis: int, value: float) -> tuple[float, ...]:
    s = [0.5, 1.0, 0.8]
    s[axis] = value
    return tuple(s)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_cubes_overlap_and_volumes_are_exact(axis):
    a, b = two_cubes(axis, 1)
    sp = spacing_with(axis, 3.0)
    m = label_metrics(a, b, sp)
    # 6^3 = 216 voxels each, 5*36 = 180 shared
    assert (m.tp, m.fp, m.fn, m.n_ref, m.n_pred) == (180, 36, 36, 216, 216)
    assert m.dice == pytest.approx(360 / 432)
    assert m.iou == pytest.approx(180 / 252)
    assert m.ref_volume_mm3 == pytest.approx(216 * np.prod(sp))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("offset", [1, 2])
def test_hd95_equals_offset_in_mm(axis, offset):
    a, b = two_cubes(axis, offset)
    m = label_metrics(b, a, spacing_with(axis, 3.0))
    assert m.hd95_mm == pytest.approx(3.0 * offset)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_surface_dice_above_and_below_the_offset(axis):
    a, b = two_cubes(axis, 1)
    sp = spacing_with(axis, 3.0)  # offset 3 mm; every other surface voxel lies within 2 mm
    assert label_metrics(a, b, sp, tolerance_mm=3.0).nsd == 1.0
    assert label_metrics(a, b, sp, tolerance_mm=10.0).nsd == 1.0
    # each cube has 6^3 - 4^3 = 152 surface voxels; its trailing face (36 voxels) is 3 mm away
    assert label_metrics(a, b, sp, tolerance_mm=2.5).nsd == pytest.approx((304 - 72) / 304)


def _brute_surface(mask):
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for ax in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=ax)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def test_distances_match_brute_force_on_random_shapes():
    rng = np.random.default_rng(0)
    sp = (0.7, 1.3, 2.9)
    for _ in range(3):
        a = rng.random((16, 16, 16)) < 0.08
        b = rng.random((16, 16, 16)) < 0.08
        pa = np.argwhere(_brute_surface(a)) * sp
        pb = np.argwhere(_brute_surface(b)) * sp
        d = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
        d_ab, d_ba = d.min(axis=1), d.min(axis=0)
        m = label_metrics(a, b, sp, tolerance_mm=2.0)
        assert m.hd95_mm == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
        within = (d_ab <= 2.0).sum() + (d_ba <= 2.0).sum()
        assert m.nsd == pytest.approx(within / (d_ab.size + d_ba.size))


def test_identical_masks_are_perfect():
    a, _ = two_cubes(0, 0)
    m = label_metrics(a, a.copy(), (1.0, 2.0, 3.0))
    assert (m.dice, m.iou, m.hd95_mm, m.nsd, m.fp, m.fn) == (1.0, 1.0, 0.0, 1.0, 0, 0)


def test_both_empty_is_undefined():
    e = np.zeros((8, 8, 8), bool)
    m = label_metrics(e, e, (1.0, 1.0, 1.0))
    assert (m.dice, m.iou, m.hd95_mm, m.nsd) == (None, None, None, None)
    assert (m.tp, m.fp, m.fn, m.ref_volume_mm3) == (0, 0, 0, 0.0)


@pytest.mark.parametrize("empty_side", ["ref", "pred"])
def test_one_side_empty_is_worst_value(empty_side):
    a, _ = two_cubes(0, 0, size=10)
    e = np.zeros_like(a)
    sp = (1.0, 2.0, 3.0)
    ref, pred = (e, a) if empty_side == "ref" else (a, e)
    m = label_metrics(ref, pred, sp)
    assert (m.dice, m.iou, m.nsd) == (0.0, 0.0, 0.0)
    assert m.hd95_mm == pytest.approx(math.sqrt(9 ** 2 + 18 ** 2 + 27 ** 2))
    assert m.hd95_mm == image_diagonal_mm(a.shape, sp)


def test_region_targets_use_the_union_of_their_labels():
    labels = {"background": 0, "whole": [1, 2], "core": [2]}
    targets = evaluation_targets(labels)
    assert targets == {"whole": (1, 2), "core": (2,)}
    ref = np.zeros((10, 10, 10), np.int32)
    ref[2:6, 2:6, 2:6] = 1
    ref[3:5, 3:5, 3:5] = 2
    pred = ref.copy()
    pred[3:5, 3:5, 3:5] = 1  # core predicted as edema: whole still perfect, core missed
    m = case_metrics(ref, pred, (1.0, 1.0, 1.0), targets)
    assert m["whole"].dice == 1.0
    assert m["core"].dice == 0.0 and m["core"].fn == 8


def test_ignore_label_voxels_are_not_counted():
    ref = np.zeros((8, 8, 8), np.int32)
    ref[1:4, 1:4, 1:4] = 1
    ref[5:8] = 3  # ignore
    pred = ref.copy()
    pred[pred == 3] = 1  # predictions inside the ignore region do not count as false positives
    m = case_metrics(ref, pred, (1.0, 1.0, 1.0), {"organ": (1,)}, ignore_label=3)["organ"]
    assert (m.dice, m.fp, m.hd95_mm) == (1.0, 0, 0.0)


def test_means_skip_undefined_cases():
    e = np.zeros((8, 8, 8), bool)
    a, b = two_cubes(0, 1, n=4, size=8)
    cases = [label_metrics(a, a, (1, 1, 1)), label_metrics(a, b, (1, 1, 1)), label_metrics(e, e, (1, 1, 1))]
    mean = mean_metrics(cases)
    assert mean.n_cases == 2
    assert mean.dice == pytest.approx((1.0 + 0.75) / 2)
    fg = foreground_mean({"x": mean, "y": mean_metrics([cases[0]])})
    assert fg.dice == pytest.approx(((1.0 + 0.75) / 2 + 1.0) / 2)
