"""The cascade's data: which labels get an input channel, and the previous-stage files."""

import numpy as np
import pytest

from autoseg.cascade import (CascadeError, foreground_labels, input_channels, missing_previous_stage, next_stages,
                             one_hot, read_previous_stage, with_previous_stage, write_previous_stage)
from autoseg.dataset import DatasetSpec
from autoseg.planning.plans import ConfigurationPlan, NormalizationPlan, Plans


def _spec(labels, rco=None, channels=("CT",)):
    return DatasetSpec(name="D", channel_names=channels, labels=labels, num_training=1, file_ending=".nii.gz",
                       regions_class_order=rco, ignore_label=labels.get("ignore"))


def test_every_label_but_background_and_ignore_gets_a_channel():
    assert foreground_labels(_spec({"background": 0, "a": 1, "b": 2})) == (1, 2)
    assert foreground_labels(_spec({"background": 0, "a": 1, "b": 2, "ignore": 3})) == (1, 2)
    # regions: the label values the previous stage paints (nnU-Net's foreground_labels), not the regions
    assert foreground_labels(_spec({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "et": [3]}, (1, 2, 3))) \
        == (1, 2, 3)
    assert input_channels(_spec({"background": 0, "a": 1, "b": 2}, channels=("T1", "T2")), True) == 4
    assert input_channels(_spec({"background": 0, "a": 1, "b": 2}, channels=("T1", "T2")), False) == 2


def test_one_hot_channels_follow_the_image():
    labels = np.array([[[0, 1], [2, 3]]])
    image = np.full((1, 1, 2, 2), 5.0, np.float32)
    out = with_previous_stage(image, labels, (1, 2))
    assert out.shape == (3, 1, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], labels == 1)
    np.testing.assert_array_equal(out[2], labels == 2)
    assert one_hot(labels, (3,)).sum() == 1
    with pytest.raises(CascadeError, match="does not fit the image"):
        with_previous_stage(image, labels[:, :1], (1, 2))


def test_previous_stage_files_round_trip_and_are_checked_against_the_case(tmp_path):
    labels = np.zeros((4, 5, 6), np.int16)
    labels[1:3, 2:4, 3:5] = 2
    write_previous_stage(tmp_path, "c1", labels)
    back = read_previous_stage(tmp_path, "c1", (4, 5, 6))
    assert back.shape == (1, 4, 5, 6) and back.dtype == np.int8
    np.testing.assert_array_equal(back[0], labels)
    assert missing_previous_stage(tmp_path, ["c1", "c2"]) == ["c2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(CascadeError, match=r"shape \(1, 4, 5, 6\) does not fit the preprocessed case c1"):
        read_previous_stage(tmp_path, "c1", (4, 5, 7))
    with pytest.raises(CascadeError, match="segmentation of case c2 is missing"):
        read_previous_stage(tmp_path, "c2", (4, 5, 6))
    (tmp_path / "c3.npy").write_bytes(b"not numpy")
    with pytest.raises(CascadeError, match="c3.npy: unreadable"):
        read_previous_stage(tmp_path, "c3", (4, 5, 6))


def test_next_stages_are_the_configurations_naming_this_one_as_previous():
    def config(name, previous=None):
        return ConfigurationPlan(name=name, spatial_dims=3, spacing=(1.0,) * 3, median_shape=(8,) * 3,
                                 patch_size=(8,) * 3, batch_size=2, kernel_sizes=((3,) * 3,) * 2,
                                 strides=((1,) * 3, (2,) * 3), features=(4, 8), batch_dice=False,
                                 data_identifier=name, previous_stage=previous)

    plans = Plans(dataset_name="D", plans_name="autosegPlans", planner="test", transpose_forward=(0, 1, 2),
                  transpose_backward=(0, 1, 2), channel_names=("CT",), labels={"background": 0, "a": 1},
                  normalization=(NormalizationPlan("CT", "zscore"),),
                  configurations={c.name: c for c in (config("3d_fullres"), config("3d_lowres"),
                                                      config("3d_cascade_fullres", "3d_lowres"))},
                  default_configuration="3d_fullres")
    assert next_stages(plans, "3d_lowres") == ("3d_cascade_fullres",)
    assert next_stages(plans, "3d_fullres") == ()
