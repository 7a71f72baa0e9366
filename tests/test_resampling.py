import numpy as np
import pytest
from scipy import ndimage

from autoseg import resampling
from autoseg.resampling import (compute_new_shape, resample_image, resample_label, resample_probabilities,
                                separate_z_axis)


def test_new_shape_is_rounded_shape_times_spacing_ratio():
    assert compute_new_shape((20, 24, 9), (0.8, 0.8, 4.0), (1.0, 1.0, 2.5)) == (16, 19, 14)
    assert compute_new_shape((3, 3, 3), (1, 1, 1), (100, 100, 100)) == (1, 1, 1)


@pytest.mark.parametrize("cur,tgt", [((1.0, 1.0, 1.0), (0.7, 1.3, 1.1)), ((0.8, 0.8, 4.0), (1.0, 1.0, 2.5)),
                                     ((1.0, 1.0, 1.0), (0.5, 0.5, 2.0))])
def test_image_shape_matches_rounded_target(cur, tgt):
    data = np.random.default_rng(0).normal(size=(2, 20, 24, 9)).astype(np.float32)
    out = resample_image(data, cur, tgt)
    assert out.shape == (2,) + compute_new_shape((20, 24, 9), cur, tgt)
    assert out.dtype == np.float32


def test_same_spacing_is_identity_copy():
    data = np.random.default_rng(1).normal(size=(1, 5, 6, 7)).astype(np.float32)
    out = resample_image(data, (1, 2, 3), (1, 2, 3))
    np.testing.assert_array_equal(out, data)
    assert out is not data


def test_new_shape_argument():
    data = np.zeros((1, 4, 4, 4), np.float32)
    assert resample_image(data, (1, 1, 1), new_shape=(8, 2, 5)).shape == (1, 8, 2, 5)
    with pytest.raises(ValueError, match="target_spacing, new_shape or both"):
        resample_image(data, (1, 1, 1))


def test_new_shape_with_spacing_uses_spacing_for_separate_z():
    # back from (1, 1, 1) to a thick-slice grid: the target spacing says z is thick -> nearest along z
    values = np.arange(12, dtype=np.float32)
    data = np.ones((1, 4, 4, 12), np.float32) * values
    out = resample_image(data, (1, 1, 1), (1, 1, 4), new_shape=(4, 4, 3))
    assert out.shape == (1, 4, 4, 3)
    assert set(np.unique(out)) <= set(values.tolist())
    joint = resample_image(data, (1, 1, 1), (1, 1, 2), new_shape=(4, 4, 3))
    assert not set(np.unique(joint)) <= set(values.tolist())


@pytest.mark.parametrize("tgt", [(0.6, 1.7, 1.0), (1.0, 1.0, 5.0)])
def test_constant_image_stays_constant(tgt):
    data = np.full((1, 9, 10, 11), 3.25, np.float32)
    np.testing.assert_allclose(resample_image(data, (1, 1, 1), tgt), 3.25, rtol=1e-6)


def test_cubic_output_stays_within_input_range():
    data = np.zeros((1, 8, 8, 8), np.float32)
    data[0, 4:, :, :] = 1.0  # a step overshoots with cubic splines unless clipped
    out = resample_image(data, (1, 1, 1), (0.3, 1, 1))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_upsampling_linear_ramp_is_exact_inside():
    ramp = np.arange(10, dtype=np.float32)[None, :, None, None] * np.ones((1, 10, 2, 2), np.float32)
    out = resample_image(ramp, (2, 1, 1), (1, 1, 1), order=1)
    # pixel-centre alignment: output voxel i sits at input coordinate (i + 0.5) / 2 - 0.5
    expected = np.clip((np.arange(20) + 0.5) / 2 - 0.5, 0, 9)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, atol=1e-6)


def test_separate_z_axis_rules():
    assert separate_z_axis((1, 1, 5), (1, 1, 1)) == 2
    assert separate_z_axis((1, 1, 1), (4, 1, 1)) == 0
    assert separate_z_axis((1, 1, 2), (1, 1, 1)) is None
    assert separate_z_axis((5, 1, 5), (1, 1, 1)) is None  # two axes share the largest spacing
    assert separate_z_axis((1, 1, 3.5), (1, 1, 3.5), anisotropy_threshold=4) is None


def test_separate_z_uses_nearest_along_thick_axis():
    # every slice along the thick axis (z) is constant with a distinct value: nearest keeps exactly those values
    values = np.array([0, 10, 20, 30, 40], np.float32)
    data = np.ones((1, 6, 6, 5), np.float32) * values
    out = resample_image(data, (1, 1, 5), (1, 1, 2))
    assert out.shape == (1, 6, 6, 12)
    assert set(np.unique(out)) <= set(values.tolist())
    # without separate z (order 3 everywhere) intermediate values would appear
    joint = resample_image(data, (1, 1, 1.5), (1, 1, 0.6))
    assert not set(np.unique(joint)) <= set(values.tolist())


def test_separate_z_in_plane_still_interpolates():
    ramp = np.arange(8, dtype=np.float32)[None, :, None, None] * np.ones((1, 8, 4, 3), np.float32)
    out = resample_image(ramp, (1, 1, 6), (0.5, 1, 6), order=1)
    assert len(np.unique(out)) > 8  # in-plane axis got new, interpolated values


def test_labels_keep_their_values_and_dtype():
    seg = np.zeros((1, 12, 12, 12), np.int8)
    seg[0, 2:6, 2:6, 2:6] = 1
    seg[0, 6:11, 5:11, 4:10] = 2
    out = resample_label(seg, (1, 1, 1), (0.7, 0.8, 0.9))
    assert out.dtype == np.int8 and out.shape == (1, 17, 15, 13)
    assert set(np.unique(out)) == {0, 1, 2}
    # volume of each class is preserved approximately (voxel count x voxel volume)
    for c in (1, 2):
        before = (seg == c).sum()
        after = (out == c).sum() * 0.7 * 0.8 * 0.9
        assert abs(after - before) / before < 0.2


def test_label_without_channel_axis_and_constant_label():
    seg = np.full((4, 4, 4), 3, np.int16)
    out = resample_label(seg, (1, 1, 1), (0.5, 0.5, 0.5))
    assert out.shape == (8, 8, 8) and out.dtype == np.int16 and (out == 3).all()


def test_label_separate_z_nearest_along_thick_axis():
    seg = np.zeros((8, 8, 4), np.int8)
    seg[:, :, 1] = 1
    seg[:, :, 3] = 2
    out = resample_label(seg, (1, 1, 4), (1, 1, 2))
    assert out.shape == (8, 8, 8)
    # nearest along z: each output slice is a copy of one input slice
    for z in range(8):
        assert len(np.unique(out[:, :, z])) == 1
    assert [int(out[0, 0, z]) for z in range(8)] == [0, 0, 1, 1, 0, 0, 2, 2]


def test_label_upsampling_is_argmax_of_interpolated_one_hot():
    seg = np.zeros((1, 4, 1, 1), np.int8)
    seg[0, 2:] = 1
    out = resample_label(seg, (2, 1, 1), (1, 1, 1))
    assert out[0, :, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_probabilities_use_linear_and_keep_channels():
    probs = np.random.default_rng(2).random((3, 5, 5, 5)).astype(np.float32)
    out = resample_probabilities(probs, (1, 1, 1), new_shape=(10, 10, 10))
    assert out.shape == (3, 10, 10, 10)
    assert out.min() >= probs.min() - 1e-6 and out.max() <= probs.max() + 1e-6


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="C, X, Y, Z"):
        resample_image(np.zeros((4, 4, 4), np.float32), (1, 1, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        compute_new_shape((4, 4, 4), (1, 0, 1), (1, 1, 1))


# --- slab-wise (chunked) resampling equals the whole-volume computation ----------------------------

WHOLE = 10**12  # a slab budget larger than any test volume: one slab


@pytest.mark.parametrize("cur,tgt,order,order_z", [
    ((1.0, 1.0, 1.0), (0.7, 1.3, 0.45), 3, 0),   # joint cubic, up- and downsampling
    ((1.0, 1.0, 1.0), (0.7, 1.3, 0.45), 1, 0),   # joint linear
    ((1.0, 1.0, 5.0), (0.6, 0.9, 2.0), 3, 0),    # separate z (thick axis 2), nearest along it
    ((1.0, 1.0, 5.0), (0.6, 0.9, 2.0), 3, 1),    # separate z, linear along it
    ((5.0, 1.0, 1.0), (2.0, 0.6, 0.9), 3, 0),    # thick axis 0: slabs are cut along axis 1
])
def test_image_in_tiny_slabs_equals_whole_volume(cur, tgt, order, order_z):
    data = np.random.default_rng(3).normal(size=(2, 23, 19, 17)).astype(np.float32)
    whole = resample_image(data, cur, tgt, order=order, order_z=order_z, slab_voxels=WHOLE)
    slabs = resample_image(data, cur, tgt, order=order, order_z=order_z, slab_voxels=50)  # 1 row per slab
    np.testing.assert_allclose(slabs, whole, rtol=0, atol=1e-5)


def test_whole_volume_cubic_matches_scipy_zoom():
    from scipy import ndimage

    data = np.random.default_rng(4).normal(size=(1, 11, 13, 9)).astype(np.float32)
    out = resample_image(data, (1, 1, 1), new_shape=(17, 8, 14))
    ref = ndimage.zoom(data[0], [n / o for n, o in zip((17, 8, 14), data.shape[1:])], output=np.float32, order=3,
                       mode="nearest", grid_mode=True)
    np.testing.assert_allclose(out[0], np.clip(ref, data.min(), data.max()), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cur,tgt,order_z", [((1, 1, 1), (0.7, 0.8, 0.65), 0), ((1, 1, 4), (0.7, 0.8, 1.3), 0),
                                             ((1, 1, 4), (0.7, 0.8, 1.3), 1)])
def test_label_in_tiny_slabs_equals_whole_volume(cur, tgt, order_z):
    rng = np.random.default_rng(5)
    seg = np.zeros((1, 21, 18, 15), np.int8)
    for value in (1, 2, 3):
        lo = rng.integers(0, 8, size=3)
        seg[0, lo[0]:lo[0] + 9, lo[1]:lo[1] + 8, lo[2]:lo[2] + 7] = value
    whole = resample_label(seg, cur, tgt, order_z=order_z, slab_voxels=WHOLE)
    slabs = resample_label(seg, cur, tgt, order_z=order_z, slab_voxels=30)
    np.testing.assert_array_equal(slabs, whole)
    assert set(np.unique(slabs)) == {0, 1, 2, 3}


@pytest.mark.parametrize("tgt", [(0.5, 1.2, 1.0), (1.0, 1.0, 4.0)])  # joint; separate along a thick axis
def test_float16_probabilities_resample_like_their_float32_values(tgt):
    """Large predictions hold float16 probabilities: converted slab by slab, the result is what the
    same values give as float32."""
    rng = np.random.default_rng(0)
    probs = rng.random((2, 9, 11, 7)).astype(np.float16)
    expected = resample_probabilities(probs.astype(np.float32), (1.0, 1.0, 1.0), tgt, slab_voxels=40)
    out = resample_probabilities(probs, (1.0, 1.0, 1.0), tgt, slab_voxels=40)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def _dense_resample_label(monkeypatch, *args, **kwargs):
    """``resample_label`` with every class interpolated over the whole block (the computation before
    each class was limited to its box)."""
    with monkeypatch.context() as m:
        m.setattr(resampling, "_label_block", resampling._label_block_dense)
        return resample_label(*args, **kwargs)


def test_labels_resampled_inside_their_boxes_equal_the_dense_computation(monkeypatch):
    """Random label maps (boxes, scattered voxels, no background, one value), spacings that resample
    jointly or separately along a thick axis (nearest or linear there), whole volumes and slabs."""
    rng = np.random.default_rng(11)
    for _ in range(150):
        shape = tuple(int(n) for n in rng.integers(3, 26, 3))
        seg = np.zeros(shape, np.uint8)
        for value in rng.choice([1, 2, 3, 5, 7], rng.integers(1, 4), replace=False):
            lo = [int(rng.integers(0, n)) for n in shape]
            hi = [a + int(rng.integers(1, 8)) for a in lo]
            seg[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = value
        if rng.random() < 0.3:
            seg[rng.random(shape) < 0.05] = 9
        if rng.random() < 0.2:
            seg[seg == 0] = 4
        cur = tuple(float(s) for s in rng.choice([0.5, 0.8, 1.0, 1.3, 2.0, 4.0], 3))
        tgt = tuple(float(s) for s in rng.choice([0.7, 1.0, 1.5, 2.0, 3.0, 5.0], 3))
        kwargs = dict(order_z=int(rng.integers(0, 2)), slab_voxels=int(rng.choice([30, 500, WHOLE])))
        boxed = resample_label(seg, cur, tgt, **kwargs)
        np.testing.assert_array_equal(boxed, _dense_resample_label(monkeypatch, seg, cur, tgt, **kwargs))


def test_label_boxes_only_interpolate_near_each_class(monkeypatch):
    """A small structure in a large volume: its mask is interpolated over a box around it, not over
    the whole volume (the point of the boxes), and the result is the dense one."""
    seg = np.zeros((60, 60, 40), np.uint8)
    seg[10:14, 20:25, 5:9] = 1
    seg[40:44, 40:42, 30:33] = 2
    sizes = []
    block = resampling._resample_block

    def counting(mask, *args, **kwargs):
        sizes.append(mask.size)
        return block(mask, *args, **kwargs)

    monkeypatch.setattr(resampling, "_resample_block", counting)
    out = resample_label(seg, (1.0, 1.0, 1.0), (1.3, 1.2, 1.1), slab_voxels=WHOLE)
    assert len(sizes) == 3 and max(sizes[1:]) < 1000 and sizes[0] < seg.size / 3  # union box, two small boxes
    monkeypatch.undo()
    np.testing.assert_array_equal(out, _dense_resample_label(monkeypatch, seg, (1.0, 1.0, 1.0), (1.3, 1.2, 1.1),
                                                             slab_voxels=WHOLE))


def test_separable_cubic_equals_scipy_affine_transform():
    """Cubic resizing one axis at a time is scipy's order-3 ``affine_transform`` (mode "nearest",
    prefiltered) up to float32 rounding: 2D and 3D, up- and downsampling, blocks of a larger grid."""
    rng = np.random.default_rng(3)
    differing = total = 0
    for _ in range(120):
        nd = int(rng.choice([2, 3]))
        shape_in = tuple(int(n) for n in rng.integers(2, 24, nd))
        arr = (rng.normal(size=shape_in) * rng.choice([1.0, 1000.0])).astype(np.float32)
        shape = tuple(int(n) for n in rng.integers(1, 30, nd))
        axes = [resampling._Axis(a, b) for a, b in zip(shape_in, shape)]
        if rng.random() < 0.3:
            axes = [resampling._Axis(a + 10, b + 7, 3, 2) for a, b in zip(shape_in, shape)]
        scale = np.array([ax.n_in / ax.n_out for ax in axes])
        offset = np.array([ax.coords(1)[0] for ax in axes])
        ref = ndimage.affine_transform(arr, scale, offset=offset, output_shape=shape, output=np.float32, order=3,
                                       mode="nearest")
        out = resampling._cubic_separable(arr, axes, shape)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * float(np.abs(arr).max()))
        differing, total = differing + int((out != ref).sum()), total + ref.size
    assert differing <= total * 1e-5  # rounding only: almost every voxel is bit for bit the same
