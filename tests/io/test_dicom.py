"""DICOM series input (autoseg.io.dicom) and the described label-map writers (DICOM SEG, RTSTRUCT, .seg.nrrd),
each read back with its own library."""

from __future__ import annotations

import zipfile

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import dicom_series as ds
from autoseg.io.dicom import DicomSeriesError, holds_dicom, read_series, scan_series, write_series_as
from autoseg.io.dicom_seg import write_dicom_seg, write_rtstruct
from autoseg.io.images import _geometry_from_itk, read_volume
from autoseg.io.seg_nrrd import write_seg_nrrd
from autoseg.io.segments import Segment

SPACING, ORIGIN = (0.8, 0.7, 2.5), (-30.0, -20.0, 10.0)


def _volume(shape=(14, 10, 6), seed=0):
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)


def test_series_reads_with_exact_voxels_and_scanner_geometry(tmp_path):
    vol, orient = _volume(), ds.oblique_orientation()
    ds.write_series(tmp_path / "a", vol, SPACING, ORIGIN, orient)  # file names shuffled against slice order
    (series,) = scan_series(tmp_path / "a", "a")
    image = read_series(series)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), vol)
    expected = ds.lps_affine(vol.shape, SPACING, ORIGIN, orient)
    np.testing.assert_allclose(_geometry_from_itk(image).affine_array, expected, atol=1e-9)
    staged = write_series_as(series, tmp_path / "a.nrrd")  # the staged copy keeps it in double precision
    arr, geometry = read_volume(staged)
    np.testing.assert_array_equal(arr, vol)
    np.testing.assert_allclose(geometry.affine_array, expected, atol=1e-9)


def test_series_are_split_by_uid_and_non_images_set_aside(tmp_path):
    study = ds.new_study()
    ds.write_series(tmp_path / "s", _volume(), number=7, description="late", study=study)
    ds.write_series(tmp_path / "s" / "sub", _volume(seed=1), number=2, description="early", study=study)
    ds.write_sr(tmp_path / "s", study)
    found = scan_series(tmp_path / "s", "s")
    assert [(s.number, s.description, len(s.files)) for s in found] == [(2, "early", 6), (7, "late", 6),
                                                                        (99, "dose report", 1)]
    assert not found[0].skip and "SR" in found[2].skip
    with pytest.raises(DicomSeriesError, match=r"#99 'dose report' \(SR.*not an image series"):
        read_series(found[2])


@pytest.mark.parametrize("kind, message", [
    ("missing", "missing slice"), ("uneven", "uneven slice spacing"), ("orientation", "mixes slice orientations"),
    ("single", "single slice")])
def test_broken_series_is_refused_with_its_name(tmp_path, kind, message):
    vol = _volume()
    if kind == "missing":
        ds.write_series(tmp_path / "b", vol, skip_slices=(3,), description="broken")
    elif kind == "uneven":
        z = [0.0, 2.5, 5.0, 7.5, 11.0, 13.5]
        ds.write_series(tmp_path / "b", vol, positions=[(0.0, 0.0, v) for v in z], description="broken")
    elif kind == "orientation":
        files = ds.write_series(tmp_path / "b", vol, description="broken")
        d = pydicom.dcmread(files[0])
        d.ImageOrientationPatient = list(ds.oblique_orientation())
        d.save_as(files[0])
    else:
        ds.write_series(tmp_path / "b", vol[:, :, :1], description="broken")
    (series,) = scan_series(tmp_path / "b", "b")
    with pytest.raises(DicomSeriesError, match=message) as e:
        read_series(series)
    assert "'broken'" in str(e.value) and series.uid in str(e.value)


def test_zip_is_recognised(tmp_path):
    files = ds.write_series(tmp_path / "z", _volume())
    with zipfile.ZipFile(tmp_path / "case.zip", "w") as zf:
        for f in files:
            zf.write(f, f"dicom/{f.name}")
    assert holds_dicom(tmp_path / "case.zip") and holds_dicom(tmp_path / "z")
    (tmp_path / "other.zip").write_bytes(b"not a zip")
    assert not holds_dicom(tmp_path / "other.zip")


def _labels(shape):
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 1:4, 1:4] = 1
    labels[8:13, 5:9, 2:5] = 3
    return labels


SEGMENTS = (Segment(1, "organ", (255, 0, 0)), Segment(3, "tumour", (0, 128, 255)))


def test_dicom_seg_reads_back_with_labels_names_and_references(tmp_path):
    vol = _volume()  # non-square slices: rows and columns cannot be swapped unnoticed
    ds.write_series(tmp_path / "a", vol, SPACING, ORIGIN, ds.oblique_orientation())
    (series,) = scan_series(tmp_path / "a", "a")
    labels = _labels(vol.shape)
    write_dicom_seg(labels, series, SEGMENTS, tmp_path / "c.seg.dcm", "model", "1.0")
    seg = hd.seg.segread(tmp_path / "c.seg.dcm")
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    expected = np.select([labels == 1, labels == 3], [1, 2], 0).transpose(2, 1, 0)
    np.testing.assert_array_equal(frames, expected)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["organ", "tumour"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    rgb = hd.color.CIELabColor.from_dicom_value(seg.SegmentSequence[1].RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, (0, 128, 255), atol=2)


def test_rtstruct_has_one_roi_per_label_with_the_voxels(tmp_path):
    import rt_utils

    vol = _volume()
    files = ds.write_series(tmp_path / "a", vol, SPACING, ORIGIN, ds.oblique_orientation())
    (series,) = scan_series(tmp_path / "a", "a")
    labels = _labels(vol.shape)
    write_rtstruct(labels, series, SEGMENTS, tmp_path / "c.rtstruct.dcm", "model")
    rt = rt_utils.RTStructBuilder.create_from(str(tmp_path / "a"), str(tmp_path / "c.rtstruct.dcm"))
    assert rt.get_roi_names() == ["organ", "tumour"]
    for s in SEGMENTS:
        np.testing.assert_array_equal(rt.get_roi_mask_by_name(s.name), labels == s.value)
    assert rt.ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == pydicom.dcmread(files[0]).FrameOfReferenceUID


def test_seg_nrrd_has_slicer_segment_fields_and_geometry(tmp_path):
    vol = _volume()
    ds.write_series(tmp_path / "a", vol, SPACING, ORIGIN, ds.oblique_orientation())
    (series,) = scan_series(tmp_path / "a", "a")
    _, geometry = read_volume(write_series_as(series, tmp_path / "a.nrrd"))
    labels = _labels(vol.shape)
    write_seg_nrrd(labels, geometry, SEGMENTS, tmp_path / "c.seg.nrrd")
    data, header = nrrd.read(str(tmp_path / "c.seg.nrrd"), index_order="F")
    np.testing.assert_array_equal(data, labels)
    assert header["space"] == "left-posterior-superior"
    expected = ds.lps_affine(vol.shape, SPACING, ORIGIN, ds.oblique_orientation())
    lps = np.diag([-1.0, -1.0, 1.0]) @ expected[:3, :3]  # back to LPS
    np.testing.assert_allclose(np.asarray(header["space directions"]).T, lps, atol=1e-9)
    np.testing.assert_allclose(header["space origin"], ORIGIN, atol=1e-9)
    assert header["Segment1_Name"] == "tumour" and header["Segment1_LabelValue"] == "3"
    assert header["Segment0_Extent"] == "2 5 1 3 1 3" and header["Segment1_Layer"] == "0"
    assert np.allclose([float(v) for v in header["Segment1_Color"].split()], (0, 128 / 255, 1), atol=1e-4)
    # SimpleITK reads the same file with the same geometry (3D Slicer reads it through ITK as well)
    arr, g2 = read_volume(tmp_path / "c.seg.nrrd")
    np.testing.assert_array_equal(arr, labels)
    assert not geometry.mismatches(g2)


def test_show_takes_a_dicom_folder_and_picks_a_series(tmp_path, capsys):
    from autoseg.cli import main

    study = ds.new_study()
    ds.write_series(tmp_path / "s", _volume(), number=3, description="a", study=study)
    ds.write_series(tmp_path / "s", _volume(seed=1), number=4, description="b", study=study)
    assert main(["show", str(tmp_path / "s"), "-o", str(tmp_path / "p.png")]) == 2
    assert "2 image series match (series there: #3 'a'; #4 'b'); give --series NUMBER" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "s"), "--series", "4", "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


def test_a_missing_optional_package_names_the_install_command(tmp_path, monkeypatch):
    import sys

    from autoseg.extras import MissingExtraError

    ds.write_series(tmp_path / "a", _volume())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"DICOM input needs .*'pydicom'.*pip install -e '\.\[dicom\]'"):
        scan_series(tmp_path / "a", "a")
