import json
import os

import nibabel as nib
import numpy as np
import pytest

from autoseg import preprocessing as pp
from autoseg.cropping import uncrop
from autoseg.dataset import DatasetSpec, list_cases
from autoseg.io import ImageReadError
from autoseg.planning.plans import ConfigurationPlan, NormalizationPlan, Plans
from autoseg.storage import open_case

SPACING = (1.0, 1.5, 3.0)  # file order (X, Y, Z)
TF, TB = (2, 0, 1), (1, 2, 0)  # coarsest axis (Z) first


def _write(path, array, spacing=SPACING):
    affine = np.diag(list(spacing) + [1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_dataset(root, n_cases=2, seed=0):
    """Tiny raw dataset: 14x12x8 volumes with a zero border (so cropping matters), two classes."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        img = np.zeros((14, 12, 8), np.float32)
        img[2:12, 1:10, 1:7] = rng.normal(100, 10, size=(10, 9, 6))
        seg = np.zeros((14, 12, 8), np.uint8)
        seg[4:8, 3:7, 2:5] = 1
        seg[8:11, 5:9, 3:6] = 2
        _write(root / "imagesTr" / f"case_{i:02d}_0000.nii.gz", img)
        _write(root / "labelsTr" / f"case_{i:02d}.nii.gz", seg)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    spec = DatasetSpec.load(root)
    cases, problems = list_cases(root, spec)
    assert not problems
    return spec, cases


def _config(name, spacing, ident):
    dims = len(spacing)
    return ConfigurationPlan(name=name, spatial_dims=dims, spacing=spacing, median_shape=(8,) * dims,
                             patch_size=(8,) * dims, batch_size=2, kernel_sizes=((3,) * dims,) * 2,
                             strides=((1,) * dims, (2,) * dims), features=(8, 16), batch_dice=False,
                             data_identifier=ident)


def make_plans(scheme="none", fullres=(3.0, 1.0, 1.5), lowres=(3.0, 2.0, 3.0), use_mask=False):
    configs = {"2d": _config("2d", fullres[1:], "3d_fullres"), "3d_fullres": _config("3d_fullres", fullres, "3d_fullres")}
    if lowres is not None:
        configs["3d_lowres"] = _config("3d_lowres", lowres, "3d_lowres")
    return Plans(dataset_name="DatasetT", plans_name="testPlans", planner="test", transpose_forward=TF,
                 transpose_backward=TB, channel_names=("MR",), labels={"background": 0, "a": 1, "b": 2},
                 normalization=(NormalizationPlan("MR", scheme, use_mask=use_mask),),
                 configurations=configs, default_configuration="3d_fullres")


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "raw")


def test_crop_box_recorded_and_uncrop_restores_original(dataset):
    spec, cases = dataset
    data, seg, props, _ = pp.preprocess_case(cases[0], spec, make_plans(), "3d_fullres")
    raw = nib.load(str(cases[0].images[0])).get_fdata().astype(np.float32)
    raw_seg = np.asarray(nib.load(str(cases[0].label)).dataobj)
    assert props.bbox == ((2, 12), (1, 10), (1, 7))
    assert props.original_shape == (14, 12, 8) and props.original_spacing == SPACING
    assert props.shape_after_crop == (6, 10, 9)  # transposed (Z, X, Y)
    assert data.shape == (1, 6, 10, 9) and props.shape_after_resample == (6, 10, 9)
    back = uncrop(data.transpose((0,) + tuple(a + 1 for a in TB)), props.bbox, props.original_shape)
    np.testing.assert_array_equal(back[0], raw)
    seg_back = uncrop(seg.transpose((0,) + tuple(a + 1 for a in TB)), props.bbox, props.original_shape)
    np.testing.assert_array_equal(seg_back[0], raw_seg)
    assert seg.dtype == np.int8 and props.classes_present == (1, 2)


def test_resampling_to_configuration_spacing(dataset):
    spec, cases = dataset
    data, seg, props, locations = pp.preprocess_case(cases[0], spec, make_plans(), "3d_lowres")
    assert props.spacing == (3.0, 2.0, 3.0)
    assert data.shape[1:] == seg.shape[1:] == props.shape_after_resample == (6, 5, 4)  # round(crop * sp / target)
    assert set(np.unique(seg)) == {0, 1, 2}
    for c, coords in locations.items():
        assert coords.dtype == np.int32 and coords.shape[1] == 3
        assert (seg[0][tuple(coords.T)] == c).all()


def test_2d_spacing_keeps_each_case_axis0_spacing():
    assert pp.target_spacing((0.5, 0.5), (4.0, 1.0, 1.0)) == (4.0, 0.5, 0.5)
    assert pp.target_spacing((1.0, 0.5, 0.5), (4.0, 1.0, 1.0)) == (1.0, 0.5, 0.5)


def test_2d_alone_fills_the_fullres_folder_at_fullres_spacing(tmp_path):
    targets = pp.targets_for(make_plans(), tmp_path, ["2d"])
    assert list(targets) == ["3d_fullres"]
    assert targets["3d_fullres"].spacing == (3.0, 1.0, 1.5)
    assert targets["3d_fullres"].folder == tmp_path / "testPlans_3d_fullres"


def test_conflicting_spacings_in_one_folder_are_rejected(tmp_path):
    plans = make_plans()
    bad = dict(plans.configurations)
    bad["2d"] = _config("2d", (2.0, 2.0), "3d_fullres")
    from dataclasses import replace
    with pytest.raises(ValueError, match="different spacings"):
        pp.targets_for(replace(plans, configurations=bad), tmp_path)


def test_masked_zscore_zero_outside_nonzero_region(dataset):
    spec, cases = dataset
    data, _, props, _ = pp.preprocess_case(cases[0], spec, make_plans("zscore", use_mask=True), "3d_fullres")
    raw = nib.load(str(cases[0].images[0])).get_fdata()
    mask = data[0] != 0
    assert abs(data[0][mask].mean()) < 1e-4 and abs(data[0][mask].std() - 1) < 1e-3
    assert mask.sum() == (raw != 0).sum()


def test_foreground_location_counts():
    seg = np.zeros((40, 40, 40), np.int8)
    seg[:20, :20, :] = 1  # 16,000 voxels
    seg[30, 30, 30] = 2
    locs = pp.sample_foreground_locations(seg, [1, 2, 3], max_per_class=100, min_fraction=0.01)
    assert locs[1].shape == (160, 3)  # max(min(100, 16000), ceil(0.01 * 16000))
    assert len({tuple(c) for c in locs[1]}) == 160  # without replacement
    assert locs[2].tolist() == [[30, 30, 30]]
    assert locs[3].shape == (0, 3)
    again = pp.sample_foreground_locations(seg, [1, 2, 3], max_per_class=100)
    np.testing.assert_array_equal(locs[1], again[1])  # seeded


def test_location_classes_exclude_background_and_ignore():
    spec = DatasetSpec(name="x", channel_names=("CT",), labels={"background": 0, "a": 1, "b": 2, "ignore": 3},
                       num_training=1, file_ending=".nii.gz", ignore_label=3)
    assert pp.location_classes(spec) == [1, 2]


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_dataset_idempotent_resumable_and_deterministic(dataset, tmp_path):
    spec, cases = dataset
    plans = make_plans("zscore")
    out = tmp_path / "pre"
    first = pp.preprocess_dataset(spec, cases, plans, out, workers=1, progress=False)
    assert first.computed == ("case_00", "case_01") and first.skipped == ()
    assert first.folders == {"2d": out / "testPlans_3d_fullres", "3d_fullres": out / "testPlans_3d_fullres",
                             "3d_lowres": out / "testPlans_3d_lowres"}
    for folder in set(first.folders.values()):
        assert (folder / pp.RECORD_NAME).is_file() and (folder / "case_01.json").is_file()
    second = pp.preprocess_dataset(spec, cases, plans, out, workers=1, progress=False)
    assert second.computed == () and second.skipped == ("case_00", "case_01")
    # an interrupted case (properties JSON missing) is recomputed, the others are left alone
    full = first.folders["3d_fullres"]
    stamp = os.stat(full / "case_00.npy").st_mtime_ns
    (full / "case_01.json").unlink()
    third = pp.preprocess_dataset(spec, cases, plans, out, workers=1, progress=False)
    assert third.computed == ("case_01",)
    assert os.stat(full / "case_00.npy").st_mtime_ns == stamp
    # a second run from scratch gives byte-identical files
    other = pp.preprocess_dataset(spec, cases, plans, tmp_path / "pre2", workers=1, progress=False)
    for name in ("testPlans_3d_fullres", "testPlans_3d_lowres"):
        assert _files(out / name) == _files(tmp_path / "pre2" / name)
    assert set(other.computed) == {"case_00", "case_01"}


def test_changed_plans_recompute_the_folder(dataset, tmp_path):
    spec, cases = dataset
    out = tmp_path / "pre"
    pp.preprocess_dataset(spec, cases, make_plans(), out, configs=["3d_lowres"], workers=1, progress=False)
    assert not (out / "testPlans_3d_fullres").exists()
    result = pp.preprocess_dataset(spec, cases, make_plans(lowres=(3.0, 1.0, 1.5)), out, configs=["3d_lowres"],
                                   workers=1, progress=False)
    assert result.computed == ("case_00", "case_01")
    assert open_case(out / "testPlans_3d_lowres", "case_00").data.shape == (1, 6, 10, 9)


def test_not_enough_disk_space_is_a_clear_error(dataset, tmp_path, monkeypatch):
    spec, cases = dataset
    monkeypatch.setattr(pp, "_free_bytes", lambda path: 1000)
    with pytest.raises(pp.InsufficientDiskSpaceError, match="GB are free"):
        pp.preprocess_dataset(spec, cases, make_plans(), tmp_path / "pre", workers=1, progress=False)
    assert not list((tmp_path / "pre").glob("*/case_*"))


def test_unreadable_file_names_the_file(dataset, tmp_path):
    spec, cases = dataset
    cases[1].images[0].write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="case_01_0000.nii.gz"):
        pp.preprocess_dataset(spec, cases, make_plans(), tmp_path / "pre", workers=1, progress=False)


def test_failure_in_a_case_names_the_case(dataset, tmp_path):
    spec, cases = dataset
    plans = make_plans("ct")  # CT without statistics cannot be applied
    with pytest.raises(pp.PreprocessingError, match="case 'case_00'.*rerun `autoseg plan`"):
        pp.preprocess_dataset(spec, cases, plans, tmp_path / "pre", workers=1, progress=False)


@pytest.mark.slow
def test_worker_pool_matches_inline_run(dataset, tmp_path, monkeypatch):
    spec, cases = dataset
    plans = make_plans("zscore")
    pp.preprocess_dataset(spec, cases, plans, tmp_path / "a", workers=1, progress=False)
    monkeypatch.setattr(pp, "SMALL_JOB_VOXELS", 0)
    result = pp.preprocess_dataset(spec, cases, plans, tmp_path / "b", workers=2, progress=False)
    assert set(result.computed) == {"case_00", "case_01"}
    for name in ("testPlans_3d_fullres", "testPlans_3d_lowres"):
        assert _files(tmp_path / "a" / name) == _files(tmp_path / "b" / name)


@pytest.mark.parametrize("damage", ["empty_npy", "short_seg", "empty_json", "bad_npz"])
def test_a_case_cut_short_before_reaching_the_disk_is_preprocessed_again(dataset, tmp_path, damage):
    """Case files are written without a per-file fsync (one flush of the file system at the end), so a
    power loss can leave a marker beside arrays that never reached the disk: such a case is not done."""
    spec, cases = dataset
    plans = make_plans("zscore", lowres=None)
    out = tmp_path / "pre"
    first = pp.preprocess_dataset(spec, cases, plans, out, workers=1, progress=False)
    full = first.folders["3d_fullres"]
    good = (full / "case_01_seg.npy").read_bytes()
    if damage == "empty_npy":
        (full / "case_01.npy").write_bytes(b"")
    elif damage == "short_seg":
        (full / "case_01_seg.npy").write_bytes(good[:-3])
    elif damage == "empty_json":
        (full / "case_01.json").write_bytes(b"")
    else:
        (full / "case_01_fg.npz").write_bytes(b"PK\x03\x04 cut short")
    again = pp.preprocess_dataset(spec, cases, plans, out, workers=1, progress=False)
    assert again.computed == ("case_01",) and again.skipped == ("case_00",)
    assert (full / "case_01_seg.npy").read_bytes() == good
    assert open_case(full, "case_01").data.shape == open_case(full, "case_00").data.shape


def test_cases_are_flushed_once_not_file_by_file(dataset, tmp_path, monkeypatch):
    spec, cases = dataset
    fsyncs, flushes = [], []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    monkeypatch.setattr(pp, "flush_file_system", lambda folder: flushes.append(folder))
    out = tmp_path / "pre"
    pp.preprocess_dataset(spec, cases, make_plans("zscore", lowres=None), out, workers=1, progress=False)
    assert flushes == [out]
    # 2 cases x 4 files written without fsync; what is left is the folder record (written once)
    assert len(fsyncs) <= 2


def test_flush_file_system_runs_on_this_platform(tmp_path):
    from autoseg.core.fileops import flush_file_system

    flush_file_system(tmp_path)  # must not raise (syncfs on Linux, sync elsewhere)
