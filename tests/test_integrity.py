"""One test per integrity problem: break a small toy dataset, check the problem names the file."""

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.dataset import DatasetError
from autoseg.integrity import DatasetWarning, check_dataset, inspect_dataset, label_value_counts
from autoseg.toy import make_toy_dataset

SHAPE = (20, 20, 16)


@pytest.fixture(scope="module")
def _pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    ct = make_toy_dataset(base, n_cases=3, seed=1, shape=SHAPE, name="Dataset001_CT")
    mr = make_toy_dataset(base, n_cases=3, seed=2, shape=SHAPE, modality="MR", n_channels=2, name="Dataset002_MR")
    return ct, mr


@pytest.fixture
def ds(_pristine, tmp_path) -> Path:
    """A fresh copy of a valid 3-case CT toy dataset."""
    return Path(shutil.copytree(_pristine[0], tmp_path / _pristine[0].name))


@pytest.fixture
def mr(_pristine, tmp_path) -> Path:
    """A fresh copy of a valid 3-case, 2-channel MR toy dataset."""
    return Path(shutil.copytree(_pristine[1], tmp_path / _pristine[1].name))


def img(root: Path, case: int = 0, channel: int = 0) -> Path:
    return root / "imagesTr" / f"toy_{case:03d}_{channel:04d}.nii.gz"


def lab(root: Path, case: int = 0) -> Path:
    return root / "labelsTr" / f"toy_{case:03d}.nii.gz"


def rewrite(path: Path, array=None, affine=None, dtype=None) -> None:
    """Rewrite a NIfTI file with new voxels and/or affine (others kept)."""
    old = nib.load(str(path))
    array = np.asanyarray(old.dataobj) if array is None else array
    array = array.astype(dtype) if dtype is not None else array
    nib.save(nib.Nifti1Image(array, old.affine if affine is None else affine), str(path))


def filled(path: Path, value) -> np.ndarray:
    """A float32 array of the file's shape filled with ``value``."""
    return np.full(nib.load(str(path)).shape, value, np.float32)


def edit_json(root: Path, **changes) -> None:
    data = json.loads((root / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    (root / "dataset.json").write_text(json.dumps(data))


def the_problem(root: Path, path: Path, *words: str) -> str:
    """The single problem reported for ``root``; it must name ``path`` and contain ``words``."""
    problems = inspect_dataset(root).problems
    assert len(problems) == 1, problems
    assert str(path) in problems[0]
    for w in words:
        assert w in problems[0], problems[0]
    return problems[0]


def test_valid_dataset_passes_and_returns_cases(ds):
    spec, cases = check_dataset(ds)
    assert spec.num_channels == 1 and [c.case_id for c in cases] == ["toy_000", "toy_001", "toy_002"]


def test_valid_multichannel_dataset_passes(mr):
    spec, cases = check_dataset(mr)
    assert spec.num_channels == 2 and all(len(c.images) == 2 for c in cases)


def test_check_dataset_raises_with_every_problem(ds):
    rewrite(img(ds, 0), filled(img(ds, 0), np.nan))
    with pytest.raises(DatasetError) as e:
        check_dataset(ds)
    assert str(img(ds, 0)) in str(e.value) and len(e.value.problems) == 1


# --- dataset.json -------------------------------------------------------------------------------

def test_missing_dataset_json(ds):
    (ds / "dataset.json").unlink()
    the_problem(ds, ds / "dataset.json", "missing")


def test_malformed_dataset_json(ds):
    (ds / "dataset.json").write_text('{"labels": {')
    the_problem(ds, ds / "dataset.json", "not valid JSON")


def test_missing_required_keys(ds):
    edit_json(ds, labels=None, numTraining=None)
    the_problem(ds, ds / "dataset.json", "labels", "numTraining")


def test_duplicate_label_values(ds):
    edit_json(ds, labels={"background": 0, "organ1": 1, "organ2": 1, "organ3": 2})
    the_problem(ds, ds / "dataset.json", "[1]", "more than one name")


def test_non_consecutive_labels(ds):
    edit_json(ds, labels={"background": 0, "organ1": 1, "organ2": 2, "organ3": 5})
    the_problem(ds, ds / "dataset.json", "consecutive")


def test_num_training_mismatch(ds):
    edit_json(ds, numTraining=5)
    the_problem(ds, ds / "dataset.json", "numTraining is 5", "3 training case")


# --- layout -------------------------------------------------------------------------------------

def test_missing_channel(mr):
    img(mr, 1, 1).unlink()
    the_problem(mr, img(mr, 1, 1), "channel file missing")


def test_label_without_image(ds):
    img(ds, 2).unlink()
    problems = inspect_dataset(ds).problems
    assert any(str(lab(ds, 2)) in p and "label without image" in p for p in problems)


def test_image_without_label(ds):
    lab(ds, 2).unlink()
    problems = inspect_dataset(ds).problems
    assert any(str(img(ds, 2)) in p and "image without label" in p for p in problems)


def test_stray_file(ds):
    stray = ds / "imagesTr" / "notes.txt"
    stray.write_text("hello")
    the_problem(ds, stray, "stray file")


def test_empty_dataset(tmp_path):
    root = tmp_path / "Dataset005_Empty"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1},
                                                   "numTraining": 0, "file_ending": ".nii.gz"}))
    the_problem(root, root / "imagesTr", "no training cases")


@pytest.mark.parametrize("bad_name", ["toy 003", "toy\t003", "toy\x07003"])
def test_case_names_with_spaces_or_control_characters(ds, bad_name):
    src_img, src_lab = img(ds, 0), lab(ds, 0)
    new_img = ds / "imagesTr" / f"{bad_name}_0000.nii.gz"
    new_lab = ds / "labelsTr" / f"{bad_name}.nii.gz"
    shutil.copy(src_img, new_img)
    shutil.copy(src_lab, new_lab)
    edit_json(ds, numTraining=4)
    problems = inspect_dataset(ds).problems
    assert len(problems) == 2, problems  # the image and the label file
    assert str(new_img) in problems[0] and str(new_lab) in problems[1]
    assert all("rename" in p for p in problems)


def test_unicode_case_names_are_fine(ds):
    shutil.copy(img(ds, 0), ds / "imagesTr" / "töy_ü_003_0000.nii.gz")
    shutil.copy(lab(ds, 0), ds / "labelsTr" / "töy_ü_003.nii.gz")
    edit_json(ds, numTraining=4)
    _, cases = check_dataset(ds)
    assert "töy_ü_003" in [c.case_id for c in cases]


# --- geometry -----------------------------------------------------------------------------------

def test_label_shape_mismatch(ds):
    rewrite(lab(ds, 1), np.zeros((SHAPE[0] + 3, SHAPE[1], SHAPE[2]), np.uint8) + 1)
    the_problem(ds, lab(ds, 1), "label geometry differs", "shape")


def test_label_spacing_mismatch(ds):
    affine = nib.load(str(lab(ds, 1))).affine.copy()
    affine[:3, 2] *= 1.5
    rewrite(lab(ds, 1), affine=affine)
    the_problem(ds, lab(ds, 1), "spacing")


def test_label_origin_shift(ds):
    affine = nib.load(str(lab(ds, 1))).affine.copy()
    affine[:3, 3] += [2.0, 0.0, 0.0]
    rewrite(lab(ds, 1), affine=affine)
    the_problem(ds, lab(ds, 1), "origin")


def test_tiny_origin_difference_is_tolerated(ds):
    affine = nib.load(str(lab(ds, 1))).affine.copy()
    affine[:3, 3] += 1e-4
    rewrite(lab(ds, 1), affine=affine)
    assert inspect_dataset(ds).ok


def test_label_direction_mismatch(ds):
    affine = nib.load(str(lab(ds, 1))).affine.copy()
    affine[:3, 0] *= -1
    rewrite(lab(ds, 1), affine=affine)
    assert "direction" in the_problem(ds, lab(ds, 1))


def test_channels_with_different_geometry(mr):
    affine = nib.load(str(img(mr, 2, 1))).affine.copy()
    affine[:3, 3] += [0.0, 5.0, 0.0]
    rewrite(img(mr, 2, 1), affine=affine)
    the_problem(mr, img(mr, 2, 1), "channel geometry differs", "origin")


# --- voxels -------------------------------------------------------------------------------------

def test_undeclared_label_value(ds):
    arr = np.asanyarray(nib.load(str(lab(ds, 1))).dataobj).copy()
    arr[0, 0, 0] = 7
    rewrite(lab(ds, 1), arr)
    the_problem(ds, lab(ds, 1), "[7]", "not declared")


def test_fractional_label_values(ds):
    arr = np.asanyarray(nib.load(str(lab(ds, 0))).dataobj).astype(np.float32)
    arr[arr == 1] = 0.5
    rewrite(lab(ds, 0), arr)
    the_problem(ds, lab(ds, 0), "non-integer", "0.5")


def test_integer_valued_float_labels_are_fine(ds):
    rewrite(lab(ds, 0), dtype=np.float32)
    assert inspect_dataset(ds).ok


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(ds, bad):
    arr = np.asanyarray(nib.load(str(img(ds, 2))).dataobj).astype(np.float32)
    arr[3, 4, 5] = bad
    rewrite(img(ds, 2), arr)
    the_problem(ds, img(ds, 2), "NaN or infinite")


def test_truncated_file(ds):
    data = img(ds, 1).read_bytes()
    img(ds, 1).write_bytes(data[: len(data) // 2])
    the_problem(ds, img(ds, 1), "truncated")


def test_wrong_magic_bytes(ds):
    img(ds, 1).write_bytes(b"PK\x03\x04 this is a zip file, not a NIfTI" * 20)
    the_problem(ds, img(ds, 1), "not a readable NIfTI")


def test_empty_file(ds):
    lab(ds, 1).write_bytes(b"")
    the_problem(ds, lab(ds, 1))


def test_zero_size_image(ds):
    rewrite(img(ds, 0), np.zeros((0, SHAPE[1], SHAPE[2]), np.int16))
    the_problem(ds, img(ds, 0), "empty")


def test_2d_image(ds):
    rewrite(img(ds, 0), np.zeros(SHAPE[:2], np.int16))
    the_problem(ds, img(ds, 0), "2D")


def test_4d_image(ds):
    rewrite(img(ds, 0), np.zeros(SHAPE + (2,), np.int16))
    the_problem(ds, img(ds, 0), "4 axes", "_0001")


def test_trailing_singleton_fourth_axis_is_fine(ds):
    rewrite(img(ds, 0), np.asanyarray(nib.load(str(img(ds, 0))).dataobj)[..., None])
    assert inspect_dataset(ds).ok


def test_single_slice_case_in_3d_dataset(ds):
    affine = nib.load(str(img(ds, 2))).affine
    rewrite(img(ds, 2), np.ones(SHAPE[:2] + (1,), np.int16), affine)
    rewrite(lab(ds, 2), np.ones(SHAPE[:2] + (1,), np.uint8), affine)
    the_problem(ds, img(ds, 2), "single slice")


def test_empty_label_in_one_case_is_a_warning(ds):
    rewrite(lab(ds, 1), np.zeros(nib.load(str(lab(ds, 1))).shape, np.uint8))
    report = inspect_dataset(ds)
    assert report.ok and len(report.warnings) == 1 and str(lab(ds, 1)) in report.warnings[0]
    with pytest.warns(DatasetWarning, match="no foreground"):
        check_dataset(ds)


def test_empty_labels_in_all_cases_is_an_error(ds):
    for i in range(3):
        rewrite(lab(ds, i), np.zeros(nib.load(str(lab(ds, i))).shape, np.uint8))
    report = inspect_dataset(ds)
    assert len(report.warnings) == 3
    the_problem(ds, ds / "labelsTr", "all 3 labels are empty")


def test_ignore_label_alone_is_not_foreground(ds):
    edit_json(ds, labels={"background": 0, "organ1": 1, "organ2": 2, "organ3": 3, "ignore": 4})
    arr = np.asanyarray(nib.load(str(lab(ds, 1))).dataobj).copy()
    arr[arr > 0] = 4
    rewrite(lab(ds, 1), arr)
    report = inspect_dataset(ds)
    assert report.ok and len(report.warnings) == 1 and str(lab(ds, 1)) in report.warnings[0]


def test_all_problems_reported_at_once(ds):
    rewrite(img(ds, 0), filled(img(ds, 0), np.inf))
    arr = np.asanyarray(nib.load(str(lab(ds, 1))).dataobj).copy()
    arr[1, 1, 1] = 7
    rewrite(lab(ds, 1), arr)
    img(ds, 2).write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(DatasetError) as e:
        check_dataset(ds)
    problems = e.value.problems
    assert len(problems) == 3, problems
    for path, p in zip([img(ds, 0), lab(ds, 1), img(ds, 2)], problems):
        assert str(path) in p


def test_process_pool_and_progress_bar_give_the_same_report(ds):
    rewrite(img(ds, 0), filled(img(ds, 0), np.nan))
    edit_json(ds, numTraining=4)
    serial = inspect_dataset(ds)
    pooled = inspect_dataset(ds, workers=2, progress=True)
    assert len(serial.problems) == 2 and pooled.problems == serial.problems and pooled.cases == serial.cases


def test_test_images_are_checked(tmp_path):
    root = make_toy_dataset(tmp_path, n_cases=2, n_test=2, seed=3, shape=SHAPE, name="Dataset006_T")
    ts = root / "imagesTs" / "toy_003_0000.nii.gz"
    rewrite(ts, filled(ts, np.nan))
    the_problem(root, ts, "NaN")


def test_label_value_counts_handles_wide_ranges_and_floats():
    counts, frac = label_value_counts(np.array([0, 0, 5, 2_000_000], dtype=np.int64))
    assert counts == {0: 2, 5: 1, 2_000_000: 1} and frac == []
    counts, frac = label_value_counts(np.array([0.0, 1.0, 2.0, 2.0], dtype=np.float32))
    assert counts == {0: 1, 1: 1, 2: 2} and frac == []
    assert label_value_counts(np.array([0.0, 0.25], dtype=np.float32))[1] == [0.25]
    assert label_value_counts(np.array([-1, 0, 1], dtype=np.int8))[0] == {-1: 1, 0: 1, 1: 1}


REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Dataset004_Hippocampus", "Dataset011_OpenKBPHeadNeckCT", "Dataset001_BraTS2015"])
def test_real_datasets_pass(name):
    root = REAL_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    spec, cases = check_dataset(root)
    assert len(cases) == spec.num_training
