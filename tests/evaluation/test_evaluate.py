"""evaluate_folders on tiny NIfTI files: file matching, geometry checks, summary.json and CSV."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from autoseg.dataset import DatasetSpec
from autoseg.evaluation import EvaluationError, EvaluationSummary, evaluate_folders, summary_table

SPACING = (1.0, 2.0, 0.5)


def make_spec(labels=None, **extra):
    data = {"channel_names": {"0": "CT"}, "labels": labels or {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": 2, "file_ending": ".nii.gz", **extra}
    return DatasetSpec.from_json(data, "dataset.json", "Dataset001_Test")


def save(arr, path, spacing=SPACING):
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag(list(spacing) + [1.0])), str(path))


@pytest.fixture
def folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[2:10, 2:10, 2:10] = 1
    ref[4:6, 4:6, 4:6] = 2
    save(ref, gt / "case_a.nii.gz")
    save(ref, pred / "case_a.nii.gz")  # perfect
    shifted = np.roll(ref, 1, axis=0)
    shifted[ref == 2] = 1  # tumour missed
    shifted[shifted == 2] = 1
    save(ref, gt / "case_b.nii.gz")
    save(shifted, pred / "case_b.nii.gz")
    (pred / "case_b.npz").write_bytes(b"ignored")  # other files in the folder are not predictions
    return gt, pred


def test_summary_json_and_csv(folders, tmp_path):
    gt, pred = folders
    out = tmp_path / "eval"
    summary = evaluate_folders(gt, pred, make_spec(), tolerance_mm=1.0, output_dir=out)
    assert list(summary.cases) == ["case_a", "case_b"]
    a, b = summary.cases["case_a"], summary.cases["case_b"]
    assert a["liver"].dice == 1.0 and a["tumour"].hd95_mm == 0.0
    # case_b liver: 512-8 = 504 reference voxels, 512 predicted (tumour merged in), shifted by one voxel (1 mm)
    assert (b["liver"].n_ref, b["liver"].n_pred) == (504, 512)
    assert b["liver"].hd95_mm == pytest.approx(1.0)
    assert b["tumour"].dice == 0.0 and b["tumour"].nsd == 0.0
    assert b["liver"].ref_volume_mm3 == pytest.approx(504 * 1.0)
    assert summary.mean["tumour"].dice == pytest.approx(0.5)
    assert summary.foreground_mean.dice == pytest.approx((summary.mean["liver"].dice + 0.5) / 2)

    loaded = EvaluationSummary.load(out / "summary.json")
    assert loaded == summary
    raw = json.loads((out / "summary.json").read_text())
    assert raw["kind"] == "evaluation_summary" and raw["tolerance_mm"] == 1.0

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4
    assert [(r["case"], r["label"]) for r in rows] == [
        ("case_a", "liver"), ("case_a", "tumour"), ("case_b", "liver"), ("case_b", "tumour")]
    assert float(rows[2]["dice"]) == pytest.approx(b["liver"].dice, rel=1e-5)
    assert int(rows[3]["fn"]) == 8
    assert summary_table(summary).row_count == 3


def test_both_empty_is_null_in_json(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1:4, 1:4, 1:4] = 1
    save(seg, gt / "c.nii.gz")
    save(seg, pred / "c.nii.gz")
    summary = evaluate_folders(gt, pred, make_spec())
    raw = json.loads((pred / "summary.json").read_text())
    assert raw["cases"]["c"]["tumour"]["dice"] is None
    assert summary.mean["tumour"].dice is None and summary.mean["tumour"].n_cases == 0
    assert summary.foreground_mean.dice == 1.0


def test_missing_prediction_is_an_error_unless_allowed(folders, tmp_path):
    gt, pred = folders
    (pred / "case_b.nii.gz").unlink()
    with pytest.raises(EvaluationError, match="case_b"):
        evaluate_folders(gt, pred, make_spec())
    summary = evaluate_folders(gt, pred, make_spec(), allow_missing=True, output_dir=tmp_path / "o")
    assert list(summary.cases) == ["case_a"] and summary.missing_predictions == ("case_b",)


def test_geometry_mismatch_names_the_file(folders):
    gt, pred = folders
    save(np.zeros((16, 16, 16)), pred / "case_a.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(EvaluationError, match=r"case_a\.nii\.gz.*spacing"):
        evaluate_folders(gt, pred, make_spec())
    save(np.zeros((16, 16, 15)), pred / "case_a.nii.gz")
    with pytest.raises(EvaluationError, match="shape"):
        evaluate_folders(gt, pred, make_spec())


def test_fractional_prediction_is_rejected(folders):
    gt, pred = folders
    img = nib.Nifti1Image(np.full((16, 16, 16), 0.3, np.float32), np.diag(list(SPACING) + [1.0]))
    nib.save(img, str(pred / "case_a.nii.gz"))
    with pytest.raises(EvaluationError, match="fractional"):
        evaluate_folders(gt, pred, make_spec())


def test_prediction_with_a_damaged_gzip_checksum_is_rejected(folders):
    gt, pred = folders
    path = pred / "case_a.nii.gz"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the voxels still decode; only the trailer's CRC is wrong
    path.write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match=r"case_a\.nii\.gz: damaged gzip data"):
        evaluate_folders(gt, pred, make_spec())


def test_parallel_workers_give_the_same_result(folders, tmp_path):
    gt, pred = folders
    for i in range(6):  # enough cases for two workers (MIN_JOBS_PER_WORKER)
        for folder in (gt, pred):
            (folder / f"copy{i}.nii.gz").write_bytes((folder / "case_b.nii.gz").read_bytes())
    one = evaluate_folders(gt, pred, make_spec(), output_dir=tmp_path / "1")
    two = evaluate_folders(gt, pred, make_spec(), workers=2, output_dir=tmp_path / "2")
    assert one == two


def test_regions_are_evaluated_as_unions(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:8, 2:8, 2:8] = 1
    ref[4:6, 4:6, 4:6] = 2
    p = ref.copy()
    p[p == 2] = 1
    save(ref, gt / "c.nii.gz")
    save(p, pred / "c.nii.gz")
    spec = make_spec({"background": 0, "whole": [1, 2], "core": [2]}, regions_class_order=[1, 2])
    summary = evaluate_folders(gt, pred, spec)
    assert summary.targets == {"whole": (1, 2), "core": (2,)}
    assert summary.cases["c"]["whole"].dice == 1.0 and summary.cases["c"]["core"].dice == 0.0
