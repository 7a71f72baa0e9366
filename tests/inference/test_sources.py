"""`autoseg predict` with DICOM input, output types, --statistics and --num-parts/--part-id, through the
command line (tiny random-weight models; the label content is compared between output types)."""

from __future__ import annotations

import json
import zipfile

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pydicom

import dicom_series as ds
from autoseg.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, main
from autoseg.inference.sources import shard
from autoseg.io import read_volume

from .conftest import DATASET, MODEL_NAME, blob_image, save_fold, tiny_plans, write_nifti

FAST = ["--no-tta", "--no-progress", "--device", "cpu", "--backend", "torch"]
SPACING, ORIGIN = (1.2, 1.4, 2.0), (-30.0, -20.0, 10.0)


def _model(tmp_path, channels=("CT",)):
    ws = tmp_path / "ws"
    save_fold(ws / "results" / DATASET / MODEL_NAME, 0, tiny_plans(spacing=(1.5, 1.5, 2.0), channels=channels))
    return ws


def _ct(seed=0):
    return (blob_image(seed=seed) * 3 - 200).astype(np.int16)


def _predict(ws, in_dir, out_dir, *extra):
    return main(["predict", "-i", str(in_dir), "-o", str(out_dir), "--workdir", str(ws), *FAST, *extra])


def _mixed_input(root):
    """pat1: a CT series and an SR; pat2.zip: two series; bad: a slice missing; n1: a NIfTI case."""
    study = ds.new_study()
    ds.write_series(root / "pat1" / "dicom", _ct(1), SPACING, ORIGIN, ds.oblique_orientation(), study=study)
    ds.write_sr(root / "pat1", study)
    files = ds.write_series(root / "z" / "a", _ct(2), number=3, description="arterial")
    files += ds.write_series(root / "z" / "b", _ct(3), number=5, description="venous")
    (root / "in").mkdir()
    with zipfile.ZipFile(root / "in" / "pat2.zip", "w") as zf:
        for f in files:
            zf.write(f, f"export/{f.parent.name}/{f.name}")
    (root / "pat1").rename(root / "in" / "pat1")
    ds.write_series(root / "in" / "bad", _ct(4), skip_slices=(5,), description="broken")
    write_nifti(root / "in" / "n1_0000.nii.gz", blob_image(seed=5))
    return root / "in"


def test_dicom_in_nifti_and_dicom_seg_out_mixed_folder(tmp_path, capsys):
    ws, in_dir = _model(tmp_path), _mixed_input(tmp_path)
    assert _predict(ws, in_dir, tmp_path / "nii") == EXIT_FAILURE  # "bad" fails, the others are written
    captured = capsys.readouterr()
    assert "4 written" in captured.out and "failed: bad:" in captured.err and "'broken'" in captured.err
    assert "missing slice" in captured.err and "note: DICOM series #99 'dose report' (SR" in captured.err
    names = sorted(p.name for p in (tmp_path / "nii").iterdir())
    assert names == ["n1.nii.gz", "pat1.nii.gz", "pat2_series3.nii.gz", "pat2_series5.nii.gz"]
    expected = ds.lps_affine(_ct().shape, SPACING, ORIGIN, ds.oblique_orientation())
    np.testing.assert_allclose(nib.load(str(tmp_path / "nii" / "pat1.nii.gz")).affine, expected, atol=1e-4)

    assert _predict(ws, in_dir, tmp_path / "seg", "--output-type", "dicom-seg") == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "failed: n1: --output-type dicom-seg needs a DICOM series" in err
    seg = hd.seg.segread(tmp_path / "seg" / "pat1.seg.dcm")
    files = sorted((in_dir / "pat1" / "dicom").iterdir())
    sources = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in files),
                     key=lambda d: float(d.ImagePositionPatient @ np.cross(d.ImageOrientationPatient[:3],
                                                                            d.ImageOrientationPatient[3:])))
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in sources],
                                               combine_segments=True, relabel=False)
    nifti = np.asarray(nib.load(str(tmp_path / "nii" / "pat1.nii.gz")).dataobj)
    assert nifti.any()
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), nifti)  # segment numbers = label values 1, 2 here
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["organ", "tumour"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID


def test_rtstruct_and_image_output_types_match_the_nifti_labels(tmp_path):
    import rt_utils

    ws = _model(tmp_path)
    ds.write_series(tmp_path / "in" / "p", _ct(1), SPACING, ORIGIN, ds.oblique_orientation())
    write_nifti(tmp_path / "in" / "n_0000.nii.gz", blob_image(seed=5))
    assert _predict(ws, tmp_path / "in", tmp_path / "nii") == EXIT_OK
    assert _predict(ws, tmp_path / "in" / "p", tmp_path / "rt", "--output-type", "rtstruct") == EXIT_OK
    rt = rt_utils.RTStructBuilder.create_from(str(tmp_path / "in" / "p"), str(tmp_path / "rt" / "p.rtstruct.dcm"))
    nifti = np.asarray(nib.load(str(tmp_path / "nii" / "p.nii.gz")).dataobj)
    assert rt.get_roi_names() == ["organ", "tumour"]
    for name, value in (("organ", 1), ("tumour", 2)):
        np.testing.assert_array_equal(rt.get_roi_mask_by_name(name), nifti == value)
    for kind, name in (("nrrd", "n.nrrd"), ("seg.nrrd", "n.seg.nrrd")):
        assert _predict(ws, tmp_path / "in", tmp_path / kind, "--output-type", kind) == EXIT_OK
        ref, ref_geometry = read_volume(tmp_path / "nii" / "n.nii.gz")
        arr, geometry = read_volume(tmp_path / kind / name)
        np.testing.assert_array_equal(arr, ref)
        assert not ref_geometry.mismatches(geometry)
    header = nrrd.read_header(str(tmp_path / "seg.nrrd" / "p.seg.nrrd"))
    assert (header["Segment0_Name"], header["Segment1_Name"]) == ("organ", "tumour")


def test_statistics_count_the_written_labels(tmp_path, capsys):
    ws = _model(tmp_path)
    for i in range(2):
        write_nifti(tmp_path / "in" / f"c{i}_0000.nii.gz", blob_image(seed=i))
    assert _predict(ws, tmp_path / "in", tmp_path / "out", "--statistics") == EXIT_OK
    assert "organ: present in" in capsys.readouterr().out
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())["cases"]
    for i in range(2):
        seg, g = read_volume(tmp_path / "out" / f"c{i}.nii.gz")
        for name, value in (("organ", 1), ("tumour", 2)):
            entry = stats[f"c{i}"][name]
            assert entry["voxels"] == int((seg == value).sum())
            assert np.isclose(entry["volume_ml"], entry["voxels"] * np.prod(g.spacing) / 1000)
            image = np.asarray(nib.load(str(tmp_path / "in" / f"c{i}_0000.nii.gz")).dataobj)
            if entry["voxels"]:
                assert np.isclose(entry["intensity"][0]["mean"], image[seg == value].mean(), rtol=1e-5)
    assert (tmp_path / "out" / "statistics.csv").read_text().startswith("case,label,value,voxels,volume_ml,CT_mean")


def test_parts_are_disjoint_and_their_union_is_one_run(tmp_path, capsys):
    ws = _model(tmp_path)
    for i in range(5):
        write_nifti(tmp_path / "in" / f"c{i}_0000.nii.gz", blob_image(seed=i))
    assert _predict(ws, tmp_path / "in", tmp_path / "all") == EXIT_OK
    seen = []
    for k in range(2):
        assert _predict(ws, tmp_path / "in", tmp_path / "parts", "--num-parts", "2", "--part-id", str(k)) == EXIT_OK
        now = sorted(p.name for p in (tmp_path / "parts").iterdir())
        seen.append(set(now) - set().union(*seen) if seen else set(now))
    assert seen == [{"c0.nii.gz", "c2.nii.gz", "c4.nii.gz"}, {"c1.nii.gz", "c3.nii.gz"}]
    for p in (tmp_path / "all").iterdir():
        np.testing.assert_array_equal(read_volume(p)[0], read_volume(tmp_path / "parts" / p.name)[0])
    capsys.readouterr()
    assert _predict(ws, tmp_path / "in", tmp_path / "parts", "--num-parts", "2", "--part-id", "1") == EXIT_OK
    assert "2 skipped" in capsys.readouterr().out
    assert _predict(ws, tmp_path / "in", tmp_path / "x", "--num-parts", "2", "--part-id", "2") == EXIT_INPUT
    assert "--part-id 2: must be 0 to 1" in capsys.readouterr().err


def test_shard_is_a_partition():
    ids = [f"case{i}" for i in (5, 1, 9, 3, 7, 2, 8)]
    parts = [shard(ids, 3, k) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and sum(len(p) for p in parts) == len(ids)
    assert [len(p) for p in parts] == [3, 2, 2] and shard(ids, 3, 0) == shard(list(reversed(ids)), 3, 0)


def test_series_channels_map_series_of_one_folder_to_model_channels(tmp_path, capsys):
    ws = _model(tmp_path, channels=("T1", "T2"))
    study = ds.new_study()
    for number, desc, seed in ((4, "t2_tse_ax", 1), (2, "T1 MPRAGE", 2), (9, "localizer", 3)):
        ds.write_series(tmp_path / "in" / "subj", _ct(seed), study=study, number=number, description=desc,
                        modality="MR")
    assert _predict(ws, tmp_path / "in", tmp_path / "no") == EXIT_FAILURE
    assert "say which series is which with --series-channels" in capsys.readouterr().err
    assert _predict(ws, tmp_path / "in", tmp_path / "amb", "--series-channels", "*t*", "2") == EXIT_FAILURE
    assert "pattern '*t*' (channel T1) matches 2 series" in capsys.readouterr().err
    assert _predict(ws, tmp_path / "in", tmp_path / "out", "--series-channels", "*mprage*", "4",
                    "--statistics") == EXIT_OK
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())["cases"]["subj"]["organ"]
    assert [c["channel"] for c in stats["intensity"]] == ["T1", "T2"]


def test_a_volume_gives_the_same_labels_as_nifti_and_as_its_dicom_series(tmp_path):
    ws = _model(tmp_path)
    ct = _ct(7)
    affine = ds.lps_affine(ct.shape, SPACING, ORIGIN, ds.oblique_orientation())
    write_nifti(tmp_path / "nii_in" / "p_0000.nii.gz", ct.astype(np.float32), affine)
    ds.write_series(tmp_path / "dcm_in" / "p", ct, SPACING, ORIGIN, ds.oblique_orientation())
    assert _predict(ws, tmp_path / "nii_in", tmp_path / "a") == EXIT_OK
    assert _predict(ws, tmp_path / "dcm_in", tmp_path / "b") == EXIT_OK
    a, ga = read_volume(tmp_path / "a" / "p.nii.gz")
    b, gb = read_volume(tmp_path / "b" / "p.nii.gz")
    assert a.any() and not ga.mismatches(gb)
    np.testing.assert_array_equal(a, b)


def test_a_broken_image_file_is_named_as_given_when_staged(tmp_path, capsys):
    ws = _model(tmp_path)
    write_nifti(tmp_path / "in" / "c0_0000.nii.gz", blob_image(seed=0))
    (tmp_path / "in" / "c1_0000.nii.gz").write_bytes(b"garbage")
    assert _predict(ws, tmp_path / "in", tmp_path / "out", "--statistics") == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"failed: c1: {tmp_path / 'in' / 'c1_0000.nii.gz'}" in err and "autoseg-predict-" not in err
    assert (tmp_path / "out" / "c0.nii.gz").is_file() and not (tmp_path / "out" / "c1.nii.gz").exists()


def test_a_damaged_dicom_file_or_zip_fails_its_case_only(tmp_path, capsys):
    ws = _model(tmp_path)
    ds.write_series(tmp_path / "in" / "good", _ct(1))
    files = ds.write_series(tmp_path / "in" / "damaged", _ct(2))
    files[0].write_bytes(files[0].read_bytes()[:300])  # preamble and a few elements, then cut
    (tmp_path / "in" / "cut.zip").write_bytes((b"PK\x03\x04" + b"\0" * 200))
    with zipfile.ZipFile(tmp_path / "in" / "bad.zip", "w") as zf:
        zf.writestr("../evil.dcm", b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert _predict(ws, tmp_path / "in", tmp_path / "out") == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"failed: damaged: {files[0]}: incomplete DICOM file" in err
    assert "failed: bad: " in err and "unsafe path ../evil.dcm" in err
    assert (tmp_path / "out" / "good.nii.gz").is_file() and not (tmp_path.parent / "evil.dcm").exists()


def test_dicom_case_with_probabilities_is_skipped_when_rerun(tmp_path, capsys):
    ws = _model(tmp_path)
    ds.write_series(tmp_path / "in" / "p", _ct(1))
    assert _predict(ws, tmp_path / "in", tmp_path / "out", "--save-probabilities") == EXIT_OK
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.nii.gz", "p.npz"]
    with np.load(tmp_path / "out" / "p.npz") as z:
        assert z["probabilities"].shape == (3, *_ct().shape)
    capsys.readouterr()
    assert _predict(ws, tmp_path / "in", tmp_path / "out", "--save-probabilities") == EXIT_OK
    assert "0 written, 1 skipped" in capsys.readouterr().out
