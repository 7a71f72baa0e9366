import numpy as np
import pytest

from autoseg.dataset import DatasetSpec
from autoseg.planning.plans import NormalizationPlan, Plans
from autoseg.storage import CaseProperties
from autoseg.training.validation import probabilities_to_labels, summarise, to_original
from tiny_workspace import tiny_plan


def _spec(labels, rco=None):
    return DatasetSpec(name="D", channel_names=("CT",), labels=labels, num_training=1, file_ending=".nii.gz",
                       regions_class_order=rco)


def test_softmax_probabilities_become_the_argmax():
    probs = np.zeros((3, 2, 1, 1), np.float32)
    probs[:, 0, 0, 0] = (0.2, 0.7, 0.1)
    probs[:, 1, 0, 0] = (0.2, 0.3, 0.5)
    assert probabilities_to_labels(probs, _spec({"background": 0, "a": 1, "b": 2})).ravel().tolist() == [1, 2]


def test_regions_are_painted_in_regions_class_order():
    spec = _spec({"background": 0, "whole": [1, 2], "core": [2]}, rco=[1, 2])
    probs = np.array([[0.9, 0.9, 0.1], [0.2, 0.8, 0.9]], np.float32).reshape(2, 3, 1, 1)
    # voxel 2: core above 0.5 but whole not: painted 2 (later regions overwrite), like nnU-Net
    assert probabilities_to_labels(probs, spec).ravel().tolist() == [1, 2, 2]


def test_to_original_transposes_back_and_uncrops():
    plans = Plans(dataset_name="D", plans_name="p", planner="t", transpose_forward=(2, 0, 1),
                  transpose_backward=(1, 2, 0), channel_names=("CT",), labels={"background": 0, "a": 1},
                  normalization=(NormalizationPlan("CT", "zscore"),), configurations={"3d_fullres": tiny_plan()},
                  default_configuration="3d_fullres")
    raw = np.zeros((6, 7, 8), np.int16)
    raw[1:4, 2:6, 3:5] = np.arange(3 * 4 * 2).reshape(3, 4, 2)
    bbox = ((1, 4), (2, 6), (3, 5))
    cropped_transposed = raw[1:4, 2:6, 3:5].transpose(2, 0, 1)
    props = CaseProperties(case_id="c", original_shape=(6, 7, 8), original_spacing=(1.0,) * 3,
                           original_affine=tuple(tuple(map(float, r)) for r in np.eye(4)), bbox=bbox,
                           shape_after_crop=cropped_transposed.shape, spacing_after_crop=(1.0,) * 3,
                           shape_after_resample=cropped_transposed.shape, spacing=(1.0,) * 3)
    assert np.array_equal(to_original(cropped_transposed, props, plans), raw)


def test_summary_means_leave_out_undefined_cases():
    rows = [{"case": "a", "dice": {"x": 0.5, "y": None}}, {"case": "b", "dice": {"x": 1.0, "y": 0.2}}]
    s = summarise(rows, ["x", "y"])
    assert s["mean"] == {"x": 0.75, "y": 0.2} and s["foreground_mean"] == pytest.approx(0.475) and s["n_cases"] == 2
