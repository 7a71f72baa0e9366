"""Conversion of a synthetic Medical Segmentation Decathlon task to the nnU-Net v2 layout."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.dataset import DatasetError
from autoseg.integrity import check_dataset
from autoseg.msd import convert_msd

SHAPE = (12, 10, 8)


def _affine(i: int) -> np.ndarray:
    a = np.diag([-0.6, -0.6, 3.0, 1.0])
    a[:3, 3] = [40.0 + i, 30.0, -20.0]
    a[0, 1] = 0.05  # slightly oblique
    return a


def make_msd_task(root: Path, n_train: int = 3, n_channels: int = 2, name: str = "Task05_Prostate") -> Path:
    """A small MSD task: 4D (X, Y, Z, C) images (3D when one channel), labels, a test image, ._ files."""
    task = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    training = []
    for i in range(n_train + 1):
        shape = SHAPE + ((n_channels,) if n_channels > 1 else ())
        image = nib.Nifti1Image(rng.integers(0, 1000, shape).astype(np.int16), _affine(i))
        image.set_qform(_affine(i), code=1)
        image.header.set_xyzt_units("mm", "sec")
        sub = "imagesTr" if i < n_train else "imagesTs"
        nib.save(image, str(task / sub / f"prostate_{i:02d}.nii.gz"))
        (task / sub / f"._prostate_{i:02d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        if i < n_train:
            label = rng.integers(0, 3, SHAPE).astype(np.uint8)
            nib.save(nib.Nifti1Image(label, _affine(i)), str(task / "labelsTr" / f"prostate_{i:02d}.nii.gz"))
            training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    training.append({"image": "./imagesTr/._prostate_00.nii.gz", "label": "./labelsTr/._prostate_00.nii.gz"})
    meta = {"name": "PROSTATE", "description": "synthetic", "licence": "CC-BY-SA 4.0", "tensorImageSize": "4D",
            "modality": {str(c): ["T2", "ADC", "X"][c] for c in range(n_channels)},
            "labels": {"0": "background", "1": "PZ", "2": "TZ"}, "numTraining": n_train, "numTest": 1,
            "training": training, "test": [f"./imagesTs/prostate_{n_train:02d}.nii.gz"]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_converts_4d_task_to_channel_files(tmp_path):
    task = make_msd_task(tmp_path)
    out = convert_msd(task, tmp_path / "raw")
    assert out == tmp_path / "raw" / "Dataset005_Prostate"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T2", "1": "ADC"}
    assert meta["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    src = nib.load(str(task / "imagesTr" / "prostate_01.nii.gz"))
    for c in range(2):
        part = nib.load(str(out / "imagesTr" / f"prostate_01_{c:04d}.nii.gz"))
        assert part.shape == SHAPE and part.get_data_dtype() == np.int16
        np.testing.assert_array_equal(np.asanyarray(part.dataobj), np.asanyarray(src.dataobj)[..., c])
        np.testing.assert_allclose(part.affine, src.affine)
        assert int(part.header["qform_code"]) == 1 and part.header.get_xyzt_units() == ("mm", "sec")
    assert (out / "labelsTr" / "prostate_01.nii.gz").read_bytes() == (task / "labelsTr" / "prostate_01.nii.gz").read_bytes()
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["prostate_03_0000.nii.gz", "prostate_03_0001.nii.gz"]
    assert not any(p.name.startswith("._") for p in out.rglob("*"))
    spec, cases = check_dataset(out)
    assert len(cases) == 3 and spec.num_channels == 2


def test_3d_single_channel_task_is_copied(tmp_path):
    task = make_msd_task(tmp_path, n_channels=1, name="Task04_Hippocampus")
    out = convert_msd(task, tmp_path / "raw")
    assert out.name == "Dataset004_Hippocampus"
    copied = out / "imagesTr" / "prostate_00_0000.nii.gz"
    assert copied.read_bytes() == (task / "imagesTr" / "prostate_00.nii.gz").read_bytes()
    check_dataset(out)


def test_scaled_voxels_keep_their_values(tmp_path):
    task = make_msd_task(tmp_path, n_train=1)
    path = task / "imagesTr" / "prostate_00.nii.gz"
    img = nib.load(str(path))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj.get_unscaled()), img.affine, img.header), str(path))
    expected = nib.load(str(path)).get_fdata()
    out = convert_msd(task, tmp_path / "raw")
    part = nib.load(str(out / "imagesTr" / "prostate_00_0001.nii.gz")).get_fdata()
    np.testing.assert_allclose(part, expected[..., 1])


def test_dataset_id_override(tmp_path):
    out = convert_msd(make_msd_task(tmp_path), tmp_path / "raw", dataset_id=123)
    assert out.name == "Dataset123_Prostate"


def test_refuses_to_overwrite_unless_asked(tmp_path):
    task = make_msd_task(tmp_path)
    out = convert_msd(task, tmp_path / "raw")
    (out / "marker.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_msd(task, tmp_path / "raw")
    assert (out / "marker.txt").exists()
    convert_msd(task, tmp_path / "raw", overwrite=True)
    assert not (out / "marker.txt").exists() and (out / "dataset.json").is_file()
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset005_Prostate"]  # no temporary leftovers


def test_missing_dataset_json(tmp_path):
    task = make_msd_task(tmp_path)
    (task / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="dataset.json: missing"):
        convert_msd(task, tmp_path / "raw")


@pytest.mark.parametrize("key", ["modality", "labels", "training"])
def test_missing_key(tmp_path, key):
    task = make_msd_task(tmp_path)
    meta = json.loads((task / "dataset.json").read_text())
    del meta[key]
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=f"missing key '{key}'") as e:
        convert_msd(task, tmp_path / "raw")
    assert str(task / "dataset.json") in e.value.problems[0]


def test_every_missing_file_is_reported_and_nothing_written(tmp_path):
    task = make_msd_task(tmp_path)
    (task / "imagesTr" / "prostate_01.nii.gz").unlink()
    (task / "labelsTr" / "prostate_02.nii.gz").unlink()
    with pytest.raises(DatasetError) as e:
        convert_msd(task, tmp_path / "raw")
    assert len(e.value.problems) == 2
    assert str(task / "imagesTr" / "prostate_01.nii.gz") in e.value.problems[0]
    assert str(task / "labelsTr" / "prostate_02.nii.gz") in e.value.problems[1]
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_channel_count_disagreeing_with_modality(tmp_path):
    task = make_msd_task(tmp_path)
    meta = json.loads((task / "dataset.json").read_text())
    meta["modality"] = {"0": "T2", "1": "ADC", "2": "DWI"}
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="3 channel"):
        convert_msd(task, tmp_path / "raw")


def test_unknown_task_number_needs_dataset_id(tmp_path):
    task = make_msd_task(tmp_path, name="Prostate")
    with pytest.raises(DatasetError, match="--dataset-id"):
        convert_msd(task, tmp_path / "raw")
    assert convert_msd(task, tmp_path / "raw", dataset_id=7).name == "Dataset007_Prostate"
