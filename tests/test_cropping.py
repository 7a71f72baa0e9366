import numpy as np
import pytest
from scipy import ndimage

from autoseg.cropping import bounding_box, crop_to_nonzero, nonzero_mask, uncrop


def test_nonzero_mask_fills_enclosed_holes_only():
    data = np.zeros((2, 9, 9, 9), np.float32)
    data[0, 2:7, 2:7, 2:7] = 1
    data[0, 4, 4, 4] = 0         # enclosed: filled
    data[1, 0, 0, 0] = 3         # any channel counts
    data[0, 2:7, 2:7, 2] = 0     # a notch open to the outside stays open
    mask = nonzero_mask(data)
    assert mask[4, 4, 4] and mask[0, 0, 0] and not mask[4, 4, 2] and not mask[8, 8, 8]


@pytest.mark.parametrize("seed", range(20))
def test_nonzero_mask_is_scipy_fill_holes_of_the_any_channel_mask(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 10, size=3))
    data = (rng.random((2, *shape)) < rng.choice([0.3, 0.8, 1.0])).astype(np.float32)
    assert np.array_equal(nonzero_mask(data), ndimage.binary_fill_holes(np.any(data != 0, axis=0)))


def test_all_nonzero_image_is_one_box_and_round_trips():
    data = np.random.default_rng(0).normal(size=(1, 6, 5, 4)).astype(np.float32) + 10
    data_c, seg_c, bbox, mask_c = crop_to_nonzero(data, np.ones((6, 5, 4), np.uint8))
    assert bbox == ((0, 6), (0, 5), (0, 4)) and mask_c.all() and seg_c.shape == (6, 5, 4)
    assert np.array_equal(uncrop(data_c, bbox, (6, 5, 4)), data)


def test_empty_mask_keeps_the_whole_array():
    assert bounding_box(np.zeros((3, 4, 5), bool)) == ((0, 3), (0, 4), (0, 5))
