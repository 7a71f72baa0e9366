"""Ensembling saved probabilities: averages, crop boxes, regions, geometry, missing cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from autoseg.inference.ensemble import ensemble_folders
from autoseg.inference.pipeline import PredictError, predict_folder
from autoseg.inference.probabilities import (
    ProbabilitiesError,
    SavedProbabilities,
    labels_from_probabilities,
    load_probabilities,
    save_probabilities,
)

from .conftest import PointwiseNet, blob_image, hand_predictor, oblique_affine, tiny_plans, write_nifti

SHAPE = (8, 7, 6)
BOX = ((1, 7), (2, 6), (0, 5))


def _folder(root, name, probs, bbox=BOX, case="c", rco=None):
    folder = root / name
    write_nifti(folder / f"{case}.nii.gz", np.zeros(SHAPE, np.uint8), oblique_affine())
    save_probabilities(folder / f"{case}.npz", SavedProbabilities(probs, bbox, SHAPE, rco))
    return folder


def _probs(seed, k=3, box=BOX):
    rng = np.random.default_rng(seed)
    p = rng.random((k, *(b - a for a, b in box))).astype(np.float32)
    return p / p.sum(0)


def _read(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_ensemble_is_the_argmax_of_the_mean_with_the_geometry_alongside(tmp_path):
    p1, p2 = _probs(1), _probs(2)
    a, b = _folder(tmp_path, "a", p1), _folder(tmp_path, "b", p2)
    report = ensemble_folders([a, b], tmp_path / "out", save_probabilities=True)
    assert report.written == ("c",) and report.ok
    mean = (p1.astype(np.float16).astype(np.float32) + p2.astype(np.float16).astype(np.float32)) / 2
    expected = np.zeros(SHAPE, np.int16)
    expected[tuple(slice(*r) for r in BOX)] = mean.argmax(0)
    out = nib.load(str(tmp_path / "out" / "c.nii.gz"))
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)
    np.testing.assert_array_equal(out.affine, nib.load(str(a / "c.nii.gz")).affine)
    np.testing.assert_allclose(load_probabilities(tmp_path / "out" / "c.npz").probabilities, mean, atol=1e-3)


def test_different_crop_boxes_are_averaged_with_background_outside(tmp_path):
    other_box = ((0, 8), (0, 7), (0, 6))
    p1 = np.zeros((2, *(b - a for a, b in BOX)), np.float32)
    p1[1] = 1.0  # certain foreground inside its box
    p2 = np.zeros((2, *SHAPE), np.float32)
    p2[1] = 0.6  # fairly sure of foreground everywhere
    p2[0] = 0.4
    a, b = _folder(tmp_path, "a", p1), _folder(tmp_path, "b", p2, bbox=other_box)
    assert ensemble_folders([a, b], tmp_path / "out").ok
    seg = _read(tmp_path / "out" / "c.nii.gz")
    inside = np.zeros(SHAPE, bool)
    inside[tuple(slice(*r) for r in BOX)] = True
    assert seg[inside].min() == 1 and seg[~inside].max() == 0  # outside: (1 + 0.4) / 2 background wins


def test_regions_are_painted_in_order(tmp_path):
    whole = np.zeros((2, *(b - a for a, b in BOX)), np.float32)
    whole[0] = 0.9  # region "whole" (painted 1) everywhere
    whole[1, :2] = 0.8  # region "core" (painted 2) in the first rows
    a = _folder(tmp_path, "a", whole, rco=(1, 2))
    b = _folder(tmp_path, "b", whole, rco=(1, 2))
    assert ensemble_folders([a, b], tmp_path / "out").ok
    crop = _read(tmp_path / "out" / "c.nii.gz")[tuple(slice(*r) for r in BOX)]
    assert (crop[:2] == 2).all() and (crop[2:] == 1).all()
    np.testing.assert_array_equal(labels_from_probabilities(whole, (1, 2)), crop)


def test_a_case_missing_in_one_folder_fails_and_the_others_are_written(tmp_path):
    a = _folder(tmp_path, "a", _probs(1))
    b = _folder(tmp_path, "b", _probs(2))
    _folder(tmp_path, "a", _probs(3), case="d")
    report = ensemble_folders([a, b], tmp_path / "out")
    assert report.written == ("c",) and report.failed[0][0] == "d" and str(b) in report.failed[0][1]


def test_mismatched_channels_are_an_error_for_that_case(tmp_path):
    a, b = _folder(tmp_path, "a", _probs(1, k=3)), _folder(tmp_path, "b", _probs(2, k=2))
    report = ensemble_folders([a, b], tmp_path / "out")
    assert report.failed and "channels" in report.failed[0][1]


def test_inputs_are_checked(tmp_path):
    a = _folder(tmp_path, "a", _probs(1))
    with pytest.raises(PredictError, match="at least two"):
        ensemble_folders([a], tmp_path / "out")
    with pytest.raises(PredictError, match="other than its inputs"):
        ensemble_folders([a, _folder(tmp_path, "b", _probs(2))], a)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ProbabilitiesError, match="bad.npz"):
        load_probabilities(tmp_path / "bad.npz")


def test_ensembling_two_single_fold_prediction_folders_averages_their_probabilities(tmp_path):
    """``predict`` with several folds averages their logits (as nnU-Net v2); ``ensemble`` of prediction
    folders averages their saved probabilities (as nnUNetv2_ensemble): end to end on real outputs."""
    img = blob_image()
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", img)
    plans = tiny_plans(spacing=(1.5, 1.5, 2.0))
    nets = [PointwiseNet((1.0, 0.0, -1.0, -2.0)), PointwiseNet((2.0, -1.0, 0.5, 1.0))]
    run = dict(progress=False, device="cpu", backend="torch", precision="fp32", tta=False, save_probabilities=True)
    for name, chosen in (("a", nets[:1]), ("b", nets[1:])):
        assert predict_folder(hand_predictor(plans, chosen), tmp_path / "in", tmp_path / name, **run).ok
    assert ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", save_probabilities=True).ok
    a, b = (load_probabilities(tmp_path / n / "c.npz") for n in ("a", "b"))
    assert a.bbox == b.bbox
    mean = (a.probabilities + b.probabilities) / 2
    ens = load_probabilities(tmp_path / "ens" / "c.npz")
    np.testing.assert_allclose(ens.probabilities, mean, atol=1e-3)  # stored as float16
    sorted_p = np.sort(mean, axis=0)
    clear = np.zeros(img.shape, bool)
    clear[tuple(slice(*r) for r in a.bbox)] = (sorted_p[-1] - sorted_p[-2]) > 2e-3
    expected = np.zeros(img.shape, np.int16)
    expected[tuple(slice(*r) for r in a.bbox)] = mean.argmax(0)
    np.testing.assert_array_equal(_read(tmp_path / "ens" / "c.nii.gz")[clear], expected[clear])
