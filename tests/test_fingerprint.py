import json
import math

import nibabel as nib
import numpy as np
import pytest

from autoseg.dataset import DatasetSpec, list_cases
from autoseg.fingerprint import (Fingerprint, FingerprintError, extract_fingerprint, intensity_stats, pool_size)
from autoseg.integrity import check_and_fingerprint


def _write_dataset(root, n_cases=3, empty_labels=(), spacing=(1.0, 1.0, 2.0), channels=("T1", "T2")):
    """Tiny cases: 12x10x8 volumes, non-zero inside a box (cropping removes a 1-2 voxel border),
    label 1 inside a smaller box (empty for the case indices in ``empty_labels``)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    for i in range(n_cases):
        shape = (12 + i, 10, 8)
        label = np.zeros(shape, np.uint8)
        if i not in empty_labels:
            label[4:8, 3:7, 2:5] = 1
        for c in range(len(channels)):
            img = np.zeros(shape, np.float32)
            img[1:-1, 2:-1, 1:-2] = rng.normal(100 * (c + 1), 10, size=(shape[0] - 2, 7, 5))
            img[label > 0] += 50
            nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / f"case{i}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): n for c, n in enumerate(channels)}, "labels": {"background": 0, "organ": 1},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    spec = DatasetSpec.load(root)
    cases, problems = list_cases(root, spec)
    assert not problems
    return spec, cases


def test_case_geometry_is_recorded(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=2)
    fp = extract_fingerprint(spec, cases, samples_per_case_max=50)
    c0 = fp.cases[0]
    assert c0.case_id == "case0"
    assert c0.spacing == (1.0, 1.0, 2.0)
    assert c0.shape_before_crop == (12, 10, 8)
    assert c0.shape_after_crop == (10, 7, 5)
    assert c0.relative_size_after_crop == pytest.approx(350 / 960)
    assert fp.cases[1].shape_after_crop == (11, 7, 5)
    assert fp.foreground_samples_per_case == 50
    assert fp.intensity_source == "foreground"


def test_same_seed_identical_and_independent_of_workers(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=3)
    a = extract_fingerprint(spec, cases, workers=1, seed=7, samples_per_case_max=200)
    b = extract_fingerprint(spec, cases, workers=1, seed=7, samples_per_case_max=200)
    c = extract_fingerprint(spec, cases, workers=2, seed=7, samples_per_case_max=200)
    assert a == b
    assert a.to_dict() == c.to_dict()
    d = extract_fingerprint(spec, cases, workers=1, seed=8, samples_per_case_max=200)
    assert d.intensity != a.intensity


@pytest.mark.parametrize("empty_labels", [(), (0, 2)])
def test_fingerprint_in_the_check_pass_equals_the_separate_one(tmp_path, empty_labels):
    # the checks read each file once and fingerprint the arrays they read: same result as reading again
    root = tmp_path / "Dataset001_T"
    spec, cases = _write_dataset(root, n_cases=3, empty_labels=empty_labels)
    separate = extract_fingerprint(spec, cases, workers=1, seed=5)
    for workers in (1, 2):
        checked_spec, checked_cases, together = check_and_fingerprint(root, workers=workers, seed=5)
        assert checked_cases == cases and together.to_dict() == separate.to_dict()


def test_foreground_statistics_come_from_label_voxels(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=2)
    fp = extract_fingerprint(spec, cases, samples_per_case_max=5000)
    t1, t2 = fp.intensity
    # foreground = channel level (100, 200) + 50, noise sd 10
    assert t1.mean == pytest.approx(150, abs=3)
    assert t2.mean == pytest.approx(250, abs=3)
    assert t1.std == pytest.approx(10, abs=2)
    assert t1.percentile_00_5 < t1.median < t1.percentile_99_5
    assert t1.min <= t1.percentile_00_5 and t1.max >= t1.percentile_99_5


def test_empty_foreground_case_contributes_no_samples(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=2, empty_labels=(1,))
    with_empty = extract_fingerprint(spec, cases, samples_per_case_max=300)
    only_first = extract_fingerprint(spec, cases[:1], samples_per_case_max=300)
    assert with_empty.intensity == only_first.intensity
    assert len(with_empty.cases) == 2


def test_no_foreground_anywhere_falls_back_to_nonzero_voxels(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=2, empty_labels=(0, 1))
    fp = extract_fingerprint(spec, cases, samples_per_case_max=3000)
    assert fp.intensity_source == "nonzero"
    assert fp.intensity[0].mean == pytest.approx(100, abs=3)  # background tissue, no +50 organ
    assert not math.isnan(fp.intensity[1].std)


def test_samples_per_case_follow_the_total_budget(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=3)
    fp = extract_fingerprint(spec, cases, samples_total=300, samples_per_case_max=1000)
    assert fp.foreground_samples_per_case == 100


def test_fingerprint_json_round_trip(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=2)
    fp = extract_fingerprint(spec, cases, samples_per_case_max=100)
    path = fp.save(tmp_path / "fingerprint.json")
    assert Fingerprint.load(path) == fp


def test_label_shape_mismatch_names_the_file(tmp_path):
    spec, cases = _write_dataset(tmp_path / "Dataset001_T", n_cases=1)
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), cases[0].label)
    with pytest.raises(FingerprintError, match="case0.nii.gz"):
        extract_fingerprint(spec, cases)


def test_no_cases_is_an_error(tmp_path):
    spec, _ = _write_dataset(tmp_path / "Dataset001_T", n_cases=1)
    with pytest.raises(FingerprintError, match="no training cases"):
        extract_fingerprint(spec, [])


def test_intensity_stats_of_known_sample():
    st = intensity_stats(np.arange(1001, dtype=np.float32))
    assert (st.mean, st.median, st.min, st.max) == (500.0, 500.0, 0.0, 1000.0)
    assert st.percentile_00_5 == pytest.approx(5.0)
    assert st.percentile_99_5 == pytest.approx(995.0)
    assert math.isnan(intensity_stats(np.empty(0)).mean)


@pytest.mark.parametrize("cores, mem, per_case, expected", [
    (8, 64e9, 1e9, 8),        # cores limit
    (8, 10e9, 2e9, 4),        # memory limits: 0.8 * 10 / 2
    (8, 1e9, 4e9, 1),         # a case larger than memory still gets one worker
    (1, 64e9, 1e6, 1),
])
def test_pool_size(cores, mem, per_case, expected):
    assert pool_size(cores, mem, per_case) == expected


def test_pool_streams_cases_with_a_bounded_number_in_flight(monkeypatch):
    """Workers get at most IN_FLIGHT_PER_WORKER cases each ahead of the consumer, not the whole dataset."""
    from concurrent.futures import Future

    import autoseg.fingerprint as fp

    submitted = []

    class InlinePool:  # runs each task at submit time; records how far submission ran ahead
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, case, index, *args):
            submitted.append(index)
            fut = Future()
            fut.set_result(fp._CaseResult(index, case, None, None))
            return fut

    monkeypatch.setattr(fp, "ProcessPoolExecutor", InlinePool)
    consumed = []
    for r in fp._results([f"case{i}" for i in range(50)], 10, 0, False, workers=3):
        consumed.append(r.index)
        assert len(submitted) - len(consumed) <= fp.IN_FLIGHT_PER_WORKER * 3 - 1
    assert sorted(consumed) == list(range(50)) and sorted(submitted) == list(range(50))
