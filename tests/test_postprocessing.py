"""Largest-connected-component post-processing: the operation and the cross-validation decision."""

import nibabel as nib
import numpy as np
import pytest

from autoseg.dataset import DatasetSpec
from autoseg.postprocessing import (
    PostprocessingDecision,
    apply_postprocessing,
    apply_postprocessing_to_folder,
    determine_postprocessing,
    determine_postprocessing_from_folders,
    keep_largest_component,
)

SPEC = DatasetSpec.from_json({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
                              "numTraining": 3, "file_ending": ".nii.gz"}, "dataset.json", "Dataset002_T")


def box(seg, value, lo, hi):
    seg[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = value
    return seg


def test_keep_largest_component_removes_smaller_islands_only_of_given_labels():
    seg = np.zeros((16, 16, 16), np.uint8)
    box(seg, 1, (1, 1, 1), (6, 6, 6))
    box(seg, 1, (10, 10, 10), (12, 12, 12))  # small island of label 1
    box(seg, 2, (12, 1, 1), (14, 3, 3))  # label 2, separate
    out = keep_largest_component(seg, [1])
    assert out[10:12, 10:12, 10:12].max() == 0
    assert (out[1:6, 1:6, 1:6] == 1).all() and (out == 2).sum() == 8
    assert seg[10, 10, 10] == 1  # input untouched


def test_union_of_labels_is_one_component_and_corners_connect():
    seg = np.zeros((8, 8, 8), np.uint8)
    box(seg, 1, (0, 0, 0), (3, 3, 3))
    box(seg, 2, (3, 3, 3), (5, 5, 5))  # touches label 1 at a corner only: 26-connected
    box(seg, 1, (7, 7, 7), (8, 8, 8))
    out = keep_largest_component(seg, [1, 2])
    assert (out == 2).sum() == 8 and (out == 1).sum() == 27


def _sphere_case(extra_island: bool, second_true_blob: bool):
    ref = np.zeros((24, 24, 24), np.uint8)
    box(ref, 1, (2, 2, 2), (10, 10, 10))
    if second_true_blob:
        box(ref, 1, (14, 14, 14), (20, 20, 20))
    pred = ref.copy()
    if extra_island:
        box(pred, 1, (20, 2, 2), (22, 4, 4))
    return ref, pred


def test_decision_keeps_largest_foreground_when_islands_are_false_positives():
    pairs = [_sphere_case(extra_island=True, second_true_blob=False) for _ in range(3)]
    d = determine_postprocessing(pairs, SPEC)
    assert d.keep_largest_foreground
    assert d.mean_dice_after["a"] > d.mean_dice_before["a"]
    assert d.mean_dice_after["a"] == pytest.approx(1.0)


def test_decision_rejects_lcc_when_it_removes_true_structures():
    pairs = [_sphere_case(extra_island=False, second_true_blob=True) for _ in range(3)]
    d = determine_postprocessing(pairs, SPEC)
    assert d.is_identity
    assert d.mean_dice_after == d.mean_dice_before


def test_per_label_step_when_the_union_step_would_hurt():
    # labels 1 and 2 are separate organs, so keeping the largest foreground component deletes one;
    # label 1 also has a false-positive island, so its own largest component helps
    ref = np.zeros((24, 24, 24), np.uint8)
    box(ref, 1, (2, 2, 2), (10, 10, 10))
    box(ref, 2, (14, 14, 14), (20, 20, 20))
    pred = box(ref.copy(), 1, (20, 2, 2), (22, 4, 4))
    d = determine_postprocessing([(ref, pred)], SPEC)
    assert not d.keep_largest_foreground
    assert d.keep_largest_per_target == ((1,),)
    assert np.array_equal(apply_postprocessing(pred, d), ref)


def test_decision_round_trips_through_json(tmp_path):
    d = determine_postprocessing([_sphere_case(True, False)], SPEC)
    assert PostprocessingDecision.load(d.save(tmp_path / "postprocessing.json")) == d


def test_folders_decide_and_apply(tmp_path):
    gt, pred, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "pp"
    gt.mkdir(), pred.mkdir()
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    for i in range(2):
        ref, p = _sphere_case(extra_island=True, second_true_blob=False)
        nib.save(nib.Nifti1Image(ref, affine), str(gt / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(p, affine), str(pred / f"c{i}.nii.gz"))
    d = determine_postprocessing_from_folders(gt, pred, SPEC)
    assert d.keep_largest_foreground and d.num_cases == 2
    written = apply_postprocessing_to_folder(pred, out, d, ".nii.gz")
    assert [p.name for p in written] == ["c0.nii.gz", "c1.nii.gz"]
    img = nib.load(str(out / "c0.nii.gz"))
    assert np.allclose(img.affine, affine)
    assert np.array_equal(np.asarray(img.dataobj), np.asarray(nib.load(str(gt / "c0.nii.gz")).dataobj))
