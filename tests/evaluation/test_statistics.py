"""Per-structure statistics on a volume with known answers."""

from __future__ import annotations

import json

import numpy as np

from autoseg.evaluation.statistics import (
    StatisticsReport,
    label_statistics,
    statistics_csv,
    summary_lines,
    world_box,
    write_statistics,
)

SPACING = (0.5, 2.0, 3.0)  # voxel volume 3 mm^3
AFFINE = np.array([[0.5, 0, 0, 10.0], [0, 2.0, 0, -4.0], [0, 0, 3.0, 1.0], [0, 0, 0, 1]])


def _case():
    labels = np.zeros((10, 8, 6), np.uint8)
    labels[2:4, 1:5, 0:3] = 1  # 2 x 4 x 3 = 24 voxels
    image = np.zeros((2, 10, 8, 6), np.float32)
    image[0][labels == 1] = np.tile([1.0, 3.0], 12)  # mean 2, std 1, min 1, max 3
    image[1] = 7.0
    return labels, image


def test_volume_voxels_intensity_and_boxes():
    labels, image = _case()
    stats = label_statistics(labels, SPACING, AFFINE, [("organ", 1), ("tumour", 2)], image, ("CT", "PET"))
    organ = stats["organ"]
    assert organ.voxels == 24 and np.isclose(organ.volume_ml, 24 * 3 / 1000)
    ct, pet = organ.intensity
    assert (ct.mean, ct.std, ct.min, ct.max) == (2.0, 1.0, 1.0, 3.0)
    assert (pet.channel, pet.mean, pet.std) == ("PET", 7.0, 0.0)
    assert organ.bbox_voxels == ((2, 3), (1, 4), (0, 2))
    assert organ.extent_mm == (1.0, 8.0, 9.0)
    # voxel corners: x from index 1.5 to 3.5 -> 10.75..11.75; y 0.5..4.5 -> -3..5; z -0.5..2.5 -> -0.5..8.5
    np.testing.assert_allclose(organ.bbox_world_min_mm, (10.75, -3.0, -0.5))
    np.testing.assert_allclose(organ.bbox_world_max_mm, (11.75, 5.0, 8.5))
    tumour = stats["tumour"]
    assert tumour.voxels == 0 and tumour.volume_ml == 0 and tumour.bbox_voxels is None
    assert tumour.intensity[0].mean is None


def test_world_box_of_a_rotated_grid_encloses_the_corners():
    rot = np.array([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # x -> y, y -> -x
    lo, hi = world_box(((0, 0), (0, 1), (0, 0)), rot)
    np.testing.assert_allclose(lo, (-1.5, -0.5, -0.5))
    np.testing.assert_allclose(hi, (0.5, 0.5, 0.5))


def test_json_and_csv_round_trip(tmp_path):
    labels, image = _case()
    report = StatisticsReport(cases={"c0": label_statistics(labels, SPACING, AFFINE, [("organ", 1)], image, ("CT", "PET"))})
    json_path, csv_path = write_statistics(report, tmp_path)
    assert StatisticsReport.load(json_path) == report
    assert json.loads(json_path.read_text())["cases"]["c0"]["organ"]["voxels"] == 24
    head, row = csv_path.read_text().splitlines()
    assert head.split(",")[:9] == ["case", "label", "value", "voxels", "volume_ml", "CT_mean", "CT_std", "CT_min",
                                   "CT_max"]
    assert row.startswith("c0,organ,1,24,0.072,2,1,1,3,7,0,7,7,2-3 1-4 0-2,1 8 9,")
    assert statistics_csv(report) == csv_path.read_text()
    assert summary_lines(report) == ["organ: present in 1/1 case(s), volume 0.07 mL (range 0.07-0.07)"]


def test_evaluate_statistics_of_references_through_the_cli(tmp_path, capsys):
    import nibabel as nib

    from autoseg.cli import main

    (tmp_path / "gt").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2}, "numTraining": 1,
         "file_ending": ".nii.gz"}))
    labels, image = _case()
    nib.save(nib.Nifti1Image(labels, AFFINE), str(tmp_path / "gt" / "c0.nii.gz"))
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(labels, AFFINE), str(tmp_path / "pred" / "c0.nii.gz"))
    (tmp_path / "img").mkdir()
    nib.save(nib.Nifti1Image(image[0], AFFINE), str(tmp_path / "img" / "c0_0000.nii.gz"))
    assert main(["evaluate", str(tmp_path / "gt"), str(tmp_path / "pred"), "--statistics", "--images",
                 str(tmp_path / "img"), "-j", "1", "--no-progress"]) == 0
    assert "reference organ: present in 1/1 case(s)" in capsys.readouterr().out
    stats = json.loads((tmp_path / "pred" / "reference_statistics.json").read_text())["cases"]["c0"]
    assert stats["organ"]["voxels"] == 24 and stats["organ"]["intensity"][0]["mean"] == 2.0
    assert stats["tumour"]["voxels"] == 0
    (tmp_path / "img" / "c0_0000.nii.gz").unlink()
    assert main(["evaluate", str(tmp_path / "gt"), str(tmp_path / "pred"), "--statistics", "--images",
                 str(tmp_path / "img"), "-j", "1", "--no-progress"]) == 2
    assert "no c0_0000.nii.gz for the reference c0.nii.gz" in capsys.readouterr().err
