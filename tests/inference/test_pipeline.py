"""`predict_folder`: inputs, geometry round trips, closed-form predictions, TTA, folds, failures."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.inference.pipeline import (
    PredictError,
    Prepared,
    find_inputs,
    predict_folder,
    prepare_case,
)
from autoseg.inference.probabilities import labels_from_probabilities, load_probabilities
from autoseg.inference.restore import labels_at_crop
from autoseg.postprocessing import PostprocessingDecision, keep_largest_component
from autoseg.resampling import resample_probabilities

from .conftest import PointwiseNet, blob_image, hand_predictor, oblique_affine, tiny_plans, write_nifti

RUN = dict(progress=False, device="cpu", backend="torch", precision="fp32")


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return folder


def test_inputs_grouped_by_case_and_channel(tmp_path):
    d = _touch(tmp_path / "in", "a_0000.nii.gz", "a_0001.nii.gz", "b_0001.nii.gz", "b_0000.nii.gz", "notes.txt")
    cases = find_inputs(d, ("T1", "T2"))
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [p.name for p in cases[1].files] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    assert not any(c.problem for c in cases)


def test_single_files_are_cases_of_one_channel_models_in_any_format(tmp_path):
    d = _touch(tmp_path / "in", "liver.nii.gz", "spleen_0000.nrrd", "head.mha")
    cases = {c.case_id: c for c in find_inputs(d, ("CT",))}
    assert set(cases) == {"liver", "spleen", "head"} and not any(c.problem for c in cases.values())
    assert cases["spleen"].output_name() == "spleen.nrrd" and cases["head"].output_name() == "head.mha"


def test_channel_count_mismatch_names_case_and_expected_files(tmp_path):
    d = _touch(tmp_path / "in", "a_0000.nii.gz", "b.nii.gz", "c_0000.nii.gz", "c_0001.nii.gz", "c_0002.nii.gz",
               "d_0000.nii.gz", "d_0000.nrrd")
    problems = {c.case_id: c.problem for c in find_inputs(d, ("T1", "T2"))}
    assert "case 'a'" in problems["a"] and "a_0000.nii.gz" in problems["a"] and "expects 2 channel(s) (T1, T2)" in problems["a"]
    assert "single file" in problems["b"] and "b_0001.nii.gz" in problems["b"]
    assert "c_0002.nii.gz" in problems["c"]
    assert "several files" in problems["d"]


def test_empty_input_folder_is_an_error(tmp_path):
    with pytest.raises(PredictError, match="no images"):
        find_inputs(_touch(tmp_path / "in", "readme.txt"), ("CT",))


def _predict(tmp_path, model, images: dict, **kw):
    d = tmp_path / "in"
    for name, (arr, affine) in images.items():
        write_nifti(d / name, arr, affine)
    return predict_folder(model, d, tmp_path / "out", **{**RUN, **kw})


def test_oblique_anisotropic_geometry_and_header_come_back_exactly(tmp_path):
    # spacing (0.8, 1.1, 2.5) in file order, model at 1.5 mm with the thick axis first (transposed)
    plans = tiny_plans(spacing=(2.0, 1.5, 1.5), transpose=((2, 0, 1), (1, 2, 0)))
    affine = oblique_affine()
    report = _predict(tmp_path, hand_predictor(plans, [PointwiseNet()]), {"c1_0000.nii.gz": (blob_image(), affine)})
    assert report.ok and report.written == ("c1",)
    src = nib.load(str(tmp_path / "in" / "c1_0000.nii.gz"))
    out = nib.load(str(tmp_path / "out" / "c1.nii.gz"))
    assert out.shape == src.shape
    np.testing.assert_array_equal(out.affine, src.affine)
    for key in ("qform_code", "sform_code", "pixdim", "dim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                "srow_x", "srow_y", "srow_z", "xyzt_units"):
        np.testing.assert_array_equal(out.header[key], src.header[key], err_msg=key)
    seg = np.asarray(out.dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2} and (seg == 1).sum() > 50  # the bright blob is class 1
    assert (seg[:2] == 0).all()  # outside the non-zero crop: background


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_itk_formats_keep_their_geometry(tmp_path, ending):
    img = sitk.GetImageFromArray(blob_image().transpose(2, 1, 0).copy())
    img.SetSpacing((0.8, 1.1, 2.5))
    img.SetOrigin((12.0, -3.5, 40.25))
    rot = oblique_affine(spacing=(1, 1, 1))[:3, :3]
    img.SetDirection(tuple(rot.ravel()))
    (tmp_path / "in").mkdir()
    sitk.WriteImage(img, str(tmp_path / "in" / f"c1_0000{ending}"))
    plans = tiny_plans(spacing=(1.5, 1.5, 2.0))
    report = predict_folder(hand_predictor(plans, [PointwiseNet()]), tmp_path / "in", tmp_path / "out", **RUN)
    assert report.ok
    out = sitk.ReadImage(str(tmp_path / "out" / f"c1{ending}"))
    assert out.GetSize() == img.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(out.GetDirection(), img.GetDirection(), atol=1e-6)


def _zscore(img):
    return (img - img.mean()) / img.std()


def _softmax(logits):
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def test_labels_match_the_closed_form_and_folds_average_logits(tmp_path):
    img = blob_image(border=0)  # nothing to crop, model spacing = file spacing: no resampling
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nets = [PointwiseNet((1.0, 0.0, -1.0, -2.0)), PointwiseNet((3.0, -4.0, 0.5, 1.0))]
    report = _predict(tmp_path, hand_predictor(tiny_plans(), nets), {"c1_0000.nii.gz": (img, affine)},
                      save_probabilities=True, tta=False)
    assert report.ok
    z = _zscore(img.astype(np.float64))
    logits = np.mean([np.stack([np.zeros_like(z), a * z + b, c * z + d])
                      for a, b, c, d in [(1.0, 0.0, -1.0, -2.0), (3.0, -4.0, 0.5, 1.0)]], axis=0)
    probs = _softmax(logits)  # folds average logits (as nnU-Net v2), then one softmax
    seg = np.asarray(nib.load(str(tmp_path / "out" / "c1.nii.gz")).dataobj)
    margin = np.sort(probs, axis=0)[-1] - np.sort(probs, axis=0)[-2]
    clear = margin > 1e-3  # leave out voxels where float32 vs float64 could flip the argmax
    np.testing.assert_array_equal(seg[clear], probs.argmax(0)[clear])
    saved = load_probabilities(tmp_path / "out" / "c1.npz")
    np.testing.assert_allclose(saved.probabilities, probs, atol=2e-3)  # stored as float16


def test_mirroring_runs_every_flip_and_equals_no_tta_for_a_flip_equivariant_net(tmp_path):
    img = blob_image(border=0)
    net = PointwiseNet()
    a = _predict(tmp_path / "a", hand_predictor(tiny_plans(), [net]), {"c_0000.nii.gz": (img, np.eye(4))}, tta=True)
    calls_tta, net.calls = net.calls, 0
    b = _predict(tmp_path / "b", hand_predictor(tiny_plans(), [net]), {"c_0000.nii.gz": (img, np.eye(4))}, tta=False)
    assert a.ok and b.ok and calls_tta == 8 * net.calls
    seg_a = np.asarray(nib.load(str(tmp_path / "a" / "out" / "c.nii.gz")).dataobj)
    seg_b = np.asarray(nib.load(str(tmp_path / "b" / "out" / "c.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg_a, seg_b)


def test_broken_input_is_reported_and_the_others_finish(tmp_path):
    d = tmp_path / "in"
    for i in range(3):
        write_nifti(d / f"c{i}_0000.nii.gz", blob_image(seed=i))
    (d / "c1_0000.nii.gz").write_bytes((d / "c1_0000.nii.gz").read_bytes()[:300])  # truncated
    report = predict_folder(hand_predictor(tiny_plans(), [PointwiseNet()]), d, tmp_path / "out", **RUN)
    assert report.written == ("c0", "c2") and not report.ok
    (case, message), = report.failed
    assert case == "c1" and "c1_0000.nii.gz" in message
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.nii.gz", "c2.nii.gz"]  # no temporaries


def test_channel_mismatch_fails_that_case_only(tmp_path):
    plans = tiny_plans(channels=("T1", "T2"))
    d = tmp_path / "in"
    write_nifti(d / "good_0000.nii.gz", blob_image())
    write_nifti(d / "good_0001.nii.gz", blob_image(seed=1))
    write_nifti(d / "bad_0000.nii.gz", blob_image())
    report = predict_folder(hand_predictor(plans, [PointwiseNet()]), d, tmp_path / "out", **RUN)
    assert report.written == ("good",)
    assert report.failed[0][0] == "bad" and "expects 2 channel(s) (T1, T2)" in report.failed[0][1]


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path):
    model = hand_predictor(tiny_plans(), [PointwiseNet()])
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", blob_image())
    first = predict_folder(model, tmp_path / "in", tmp_path / "out", **RUN)
    out = tmp_path / "out" / "c.nii.gz"
    out.write_bytes(b"stale")
    second = predict_folder(model, tmp_path / "in", tmp_path / "out", **RUN)
    assert first.written == ("c",) and second.skipped == ("c",) and out.read_bytes() == b"stale"
    third = predict_folder(model, tmp_path / "in", tmp_path / "out", overwrite=True, **RUN)
    assert third.written == ("c",) and nib.load(str(out)).shape == (20, 18, 10)


def test_postprocessing_decision_is_applied(tmp_path):
    img = blob_image(border=0)
    img[1:3, 1:3, 1:3] = 400  # a bright island away from the blob
    decision = PostprocessingDecision(foreground_labels=(1, 2), keep_largest_foreground=True,
                                      keep_largest_per_target=(), mean_dice_before={}, mean_dice_after={},
                                      num_cases=1)
    plain = _predict(tmp_path / "a", hand_predictor(tiny_plans(), [PointwiseNet()]), {"c_0000.nii.gz": (img, np.eye(4))})
    post = _predict(tmp_path / "b", hand_predictor(tiny_plans(), [PointwiseNet()], decision),
                    {"c_0000.nii.gz": (img, np.eye(4))})
    assert plain.ok and post.ok
    seg_a = np.asarray(nib.load(str(tmp_path / "a" / "out" / "c.nii.gz")).dataobj)
    seg_b = np.asarray(nib.load(str(tmp_path / "b" / "out" / "c.nii.gz")).dataobj)
    assert seg_a[1:3, 1:3, 1:3].all() and not seg_b[1:3, 1:3, 1:3].any()
    np.testing.assert_array_equal(seg_b, keep_largest_component(seg_a, (1, 2)))


def test_streamed_argmax_equals_resampling_all_channels(tmp_path):
    plans = tiny_plans(spacing=(2.0, 1.5, 1.5), transpose=((2, 0, 1), (1, 2, 0)))
    model = hand_predictor(plans, [PointwiseNet()])
    write_nifti(tmp_path / "c_0000.nii.gz", blob_image())
    from autoseg.inference.pipeline import InputCase

    prepared = prepare_case(InputCase("c", (tmp_path / "c_0000.nii.gz",), ".nii.gz"), model)
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(3, *prepared.data.shape[1:])).astype(np.float32))
    props = prepared.props
    full = resample_probabilities(probs, props.spacing, props.spacing_after_crop, new_shape=props.shape_after_crop)
    np.testing.assert_array_equal(labels_at_crop(probs, props, model.config.resampling, None),
                                  labels_from_probabilities(full))
    assert isinstance(prepared, Prepared) and prepared.data.shape[0] == 1


def test_step_and_same_folder_are_checked(tmp_path):
    model = hand_predictor(tiny_plans(), [PointwiseNet()])
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", blob_image())
    with pytest.raises(PredictError, match="step"):
        predict_folder(model, tmp_path / "in", tmp_path / "out", step=0, **RUN)
    with pytest.raises(PredictError, match="another folder"):
        predict_folder(model, tmp_path / "in", tmp_path / "in", **RUN)


def test_two_dimensional_model_predicts_slice_by_slice(tmp_path):
    plans = tiny_plans(spacing=(1.0, 1.0), patch=(16, 16))
    img = blob_image(border=0)
    report = _predict(tmp_path, hand_predictor(plans, [PointwiseNet(spatial_dims=2)]),
                      {"c_0000.nii.gz": (img, np.eye(4))}, tta=False)
    assert report.ok
    seg = np.asarray(nib.load(str(tmp_path / "out" / "c.nii.gz")).dataobj)
    z = _zscore(img.astype(np.float64))
    expected = np.stack([np.zeros_like(z), z, -z - 2]).argmax(0)
    np.testing.assert_array_equal(seg[np.abs(z) > 1e-3], expected[np.abs(z) > 1e-3])
    torch.set_num_threads(1)
