"""The way back from network output to the input's geometry, shared by prediction and validation."""

import numpy as np

from autoseg.dataset import DatasetSpec
from autoseg.inference.probabilities import labels_from_probabilities, regions_order
from autoseg.inference.restore import labels_at_crop, resample_back, to_input_geometry, to_original
from autoseg.planning.plans import ResamplingPlan
from autoseg.storage import CaseProperties


def _spec(labels, rco=None):
    return DatasetSpec(name="D", channel_names=("CT",), labels=labels, num_training=1, file_ending=".nii.gz",
                       regions_class_order=rco)


def test_softmax_probabilities_become_the_argmax():
    probs = np.zeros((3, 2, 1, 1), np.float32)
    probs[:, 0, 0, 0] = (0.2, 0.7, 0.1)
    probs[:, 1, 0, 0] = (0.2, 0.3, 0.5)
    assert labels_from_probabilities(probs, regions_order(_spec({"background": 0, "a": 1, "b": 2}))).ravel().tolist() == [1, 2]


def test_regions_are_painted_in_regions_class_order():
    spec = _spec({"background": 0, "whole": [1, 2], "core": [2]}, rco=[1, 2])
    probs = np.array([[0.9, 0.9, 0.1], [0.2, 0.8, 0.9]], np.float32).reshape(2, 3, 1, 1)
    # voxel 2: core above 0.5 but whole not: painted 2 (later regions overwrite), like nnU-Net
    assert labels_from_probabilities(probs, regions_order(spec)).ravel().tolist() == [1, 2, 2]


def test_to_original_transposes_back_and_uncrops():
    transpose_backward = (1, 2, 0)  # of transpose_forward (2, 0, 1)
    raw = np.zeros((6, 7, 8), np.int16)
    raw[1:4, 2:6, 3:5] = np.arange(3 * 4 * 2).reshape(3, 4, 2)
    bbox = ((1, 4), (2, 6), (3, 5))
    cropped_transposed = raw[1:4, 2:6, 3:5].transpose(2, 0, 1)
    props = CaseProperties(case_id="c", original_shape=(6, 7, 8), original_spacing=(1.0,) * 3,
                           original_affine=tuple(tuple(map(float, r)) for r in np.eye(4)), bbox=bbox,
                           shape_after_crop=cropped_transposed.shape, spacing_after_crop=(1.0,) * 3,
                           shape_after_resample=cropped_transposed.shape, spacing=(1.0,) * 3)
    assert np.array_equal(to_original(cropped_transposed, props, transpose_backward), raw)


def test_one_channel_at_a_time_gives_the_labels_of_all_channels_at_once():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 6, 5, 4)).astype(np.float32)
    props = CaseProperties(case_id="c", original_shape=(9, 11, 7), original_spacing=(1.0, 1.0, 3.5),
                           original_affine=tuple(tuple(map(float, r)) for r in np.eye(4)),
                           bbox=((1, 9), (2, 9), (0, 7)), shape_after_crop=(8, 7, 7), spacing_after_crop=(1.0, 1.0, 3.5),
                           shape_after_resample=(6, 5, 4), spacing=(1.3, 1.4, 6.1))
    resampling = ResamplingPlan()
    full = resample_back(probs, props, resampling)
    assert full.shape == (3, 8, 7, 7)
    assert np.array_equal(labels_at_crop(probs, props, resampling, None), labels_from_probabilities(full))
    labels, saved = to_input_geometry(probs, props, resampling, (0, 1, 2), None, keep_probabilities=True)
    assert labels.shape == (9, 11, 7) and saved.probabilities.shape == (3, 8, 7, 7)
    assert np.array_equal(labels, to_input_geometry(probs, props, resampling, (0, 1, 2), None)[0])


def test_labels_on_another_grid_are_the_resampled_probabilities_labelled():
    """How a 3d_lowres prediction reaches the cascade's grid: resampled per channel, then labelled."""
    from autoseg.inference.restore import labels_on_grid
    from autoseg.resampling import resample_probabilities

    rng = np.random.default_rng(0)
    probs = rng.random((3, 6, 5, 4)).astype(np.float32)
    probs /= probs.sum(0)
    plan = ResamplingPlan()
    fine = labels_on_grid(probs, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (12, 10, 8), plan, None)
    whole = resample_probabilities(probs, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), new_shape=(12, 10, 8),
                                   order=plan.probabilities_order, order_z=plan.order_z_image)
    assert fine.shape == (12, 10, 8)
    np.testing.assert_array_equal(fine, labels_from_probabilities(whole))
    regions = labels_on_grid(probs[:2], (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (12, 10, 8), plan, (1, 2))
    np.testing.assert_array_equal(regions, labels_from_probabilities(whole[:2], (1, 2)))
