"""dataset.json parsing (DatasetSpec) and case discovery (list_cases)."""

import json
from pathlib import Path

import pytest

from autoseg.dataset import Case, DatasetError, DatasetSpec, list_cases

TEMPLATES = Path(__file__).resolve().parents[1] / "data_templates"
BASE = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}


def spec_of(**changes) -> DatasetSpec:
    data = {**BASE, **changes}
    return DatasetSpec.from_json({k: v for k, v in data.items() if v is not None}, Path("x/dataset.json"), "x")


def problems_of(**changes) -> list[str]:
    with pytest.raises(DatasetError) as e:
        spec_of(**changes)
    assert all(p.startswith("x/dataset.json: ") for p in e.value.problems)
    return e.value.problems


@pytest.mark.parametrize("name", ["ct_single_channel", "mri_multi_sequence", "regions", "ignore_label"])
def test_templates_are_valid(tmp_path, name):
    root = tmp_path / "Dataset001_T"
    root.mkdir()
    (root / "dataset.json").write_text((TEMPLATES / f"{name}.json").read_text())
    spec = DatasetSpec.load(root)
    assert spec.name == "Dataset001_T" and spec.file_ending == ".nii.gz"


def test_plain_labels():
    spec = spec_of()
    assert spec.label_values == [0, 1, 2] and spec.foreground_classes == [1, 2]
    assert not spec.has_regions and spec.num_outputs == 3 and spec.regions == [(1,), (2,)]


def test_region_labels():
    spec = spec_of(labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": [3]}, regions_class_order=[1, 2, 3])
    assert spec.has_regions and spec.num_outputs == 3 and spec.regions == [(1, 2, 3), (2, 3), (3,)]
    assert spec.label_values == [0, 1, 2, 3] and spec.regions_class_order == (1, 2, 3)


def test_ignore_label():
    spec = spec_of(labels={"background": 0, "a": 1, "b": 2, "ignore": 3})
    assert spec.ignore_label == 3 and spec.foreground_classes == [1, 2] and spec.num_outputs == 3
    assert spec.label_values == [0, 1, 2, 3]


def test_simpleitk_reader_override():
    assert spec_of(overwrite_image_reader_writer="SimpleITKIO").force_itk
    assert not spec_of().force_itk


@pytest.mark.parametrize("changes,words", [
    (dict(labels={"bg": 0, "liver": 1}), "background"),
    (dict(labels={"background": 0, "a": 1, "ignore": 1}), "ignore"),
    (dict(labels={"background": 0, "a": 1.5}), "must be an integer"),
    (dict(labels={"background": 0, "whole": [1, 2]}), "regions_class_order' is missing"),
    (dict(labels={"background": 0, "whole": [1, 2], "core": [2]}, regions_class_order=[1]), "one entry per region"),
    (dict(file_ending=".png"), "file_ending"),
    (dict(numTraining=-1), "non-negative"),
    (dict(numTraining="2"), "non-negative"),
    (dict(channel_names={"0": "T1", "2": "T2"}), "without gaps"),
    (dict(channel_names={}), "non-empty"),
    (dict(channel_names=None, file_ending=None), "channel_names, file_ending"),
])
def test_schema_problems(changes, words):
    problems = problems_of(**changes)
    assert len(problems) == 1 and words in problems[0], problems


def test_several_schema_problems_at_once():
    problems = problems_of(labels={"bg": 0, "liver": 1}, numTraining=-3, file_ending=".jpg")
    assert len(problems) == 3


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        DatasetSpec.load(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"dataset.json: missing"):
        DatasetSpec.load(tmp_path)
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="must hold a JSON object"):
        DatasetSpec.load(tmp_path)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_list_cases_matches_channels_and_labels(tmp_path):
    spec = spec_of(channel_names={"0": "T1", "1": "T2"})
    for case in ("liver_1", "liver_2"):
        for c in range(2):
            touch(tmp_path / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        touch(tmp_path / "labelsTr" / f"{case}.nii.gz")
    touch(tmp_path / "imagesTr" / ".DS_Store")
    cases, problems = list_cases(tmp_path, spec)
    assert problems == []
    assert cases[0] == Case("liver_1", (tmp_path / "imagesTr/liver_1_0000.nii.gz", tmp_path / "imagesTr/liver_1_0001.nii.gz"),
                            tmp_path / "labelsTr/liver_1.nii.gz")
    assert [c.case_id for c in cases] == ["liver_1", "liver_2"]


def test_list_cases_reports_layout_problems(tmp_path):
    spec = spec_of()
    touch(tmp_path / "imagesTr" / "a_0000.nii.gz")            # no label
    touch(tmp_path / "imagesTr" / "b_0000.nii.gz")
    touch(tmp_path / "imagesTr" / "b_0001.nii.gz")            # channel not declared
    touch(tmp_path / "labelsTr" / "b.nii.gz")
    touch(tmp_path / "labelsTr" / "c.nii.gz")                 # no image
    touch(tmp_path / "imagesTr" / "d.nii.gz")                 # no channel number
    touch(tmp_path / "imagesTr" / "e_0000.nrrd")              # other ending
    cases, problems = list_cases(tmp_path, spec)
    assert cases == []
    expected = [("d.nii.gz", "4-digit channel"), ("e_0000.nrrd", "stray file"), ("a_0000.nii.gz", "image without label"),
                ("b_0001.nii.gz", "not declared"), ("c.nii.gz", "label without image")]
    assert len(problems) == len(expected), problems
    for name, words in expected:
        assert any(name in p and words in p for p in problems), (name, problems)


def test_list_cases_for_test_images_without_labels(tmp_path):
    touch(tmp_path / "imagesTs" / "x_0000.nii.gz")
    cases, problems = list_cases(tmp_path, spec_of(), "imagesTs", None)
    assert problems == [] and cases == [Case("x", (tmp_path / "imagesTs/x_0000.nii.gz",), None)]


def test_list_cases_missing_folders(tmp_path):
    cases, problems = list_cases(tmp_path, spec_of())
    assert cases == [] and "imagesTr: folder missing" in problems[0]
    touch(tmp_path / "imagesTr" / "a_0000.nii.gz")
    _, problems = list_cases(tmp_path, spec_of())
    assert any("labelsTr: folder missing" in p for p in problems)


def test_dataset_error_lists_every_problem():
    err = DatasetError(["first", "second"])
    assert err.problems == ["first", "second"] and "2 problems" in str(err) and "second" in str(err)
    assert json.dumps(err.problems)
