"""Bad input: every broken input gives a non-zero exit, one message naming the file and the fix, no
traceback (unless --debug), and leaves nothing a later run could mistake for finished work.

Each case breaks a fresh copy of a tiny generated dataset (or model, or input folder) and runs the
real command line (`autoseg.cli.main`) in-process."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg import cli
from autoseg.toy import make_toy_dataset
from inference.conftest import DATASET, MODEL_NAME, blob_image, save_fold, tiny_plans, write_nifti  # tests/ on sys.path

SHAPE = (16, 16, 12)
NAME = "Dataset001_Toy"


# --- helpers -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def _pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("pristine")
    ct = make_toy_dataset(base, n_cases=3, seed=1, shape=SHAPE, name=NAME)
    mr = make_toy_dataset(base, n_cases=2, seed=2, shape=SHAPE, modality="MR", n_channels=2, name="Dataset002_MR")
    return {"ct": ct, "mr": mr}


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and everything printed (stdout + stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def img(root: Path, case: int = 0, channel: int = 0) -> Path:
    return root / "imagesTr" / f"toy_{case:03d}_{channel:04d}.nii.gz"


def lab(root: Path, case: int = 0) -> Path:
    return root / "labelsTr" / f"toy_{case:03d}.nii.gz"


def rewrite(path: Path, array=None, affine=None) -> None:
    """Rewrite a NIfTI file with new voxels and/or affine (the rest kept)."""
    old = nib.load(str(path))
    array = np.asanyarray(old.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(array, old.affine if affine is None else affine), str(path))


def voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def edit_json(root: Path, **changes) -> Path:
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))
    return path


def assert_nothing_finished(work: Path) -> None:
    """No plans, splits or preprocessed case under ``work`` that a later command could take as done."""
    pre = work / "preprocessed"
    finished = [p for p in pre.rglob("*") if p.name in ("plans.json", "splits.json")
                or (p.suffix == ".json" and p.with_suffix(".npy").exists())] if pre.exists() else []
    assert not finished, finished


# --- raw datasets: `autoseg plan` refuses them before writing anything ---------------------------------

def _truncated(root):
    p = img(root, 1)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p, ("truncated",)


def _corrupt_gzip(root):
    p = img(root, 1)
    data = bytearray(p.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    p.write_bytes(bytes(data))
    return p, ("re-export",)


def _wrong_magic(root):
    p = img(root, 1)
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[344:348] = b"xxxx"  # NIfTI-1 magic "n+1\0"
    p.write_bytes(gzip.compress(bytes(raw)))
    return p, ("not a readable NIfTI", "re-export")


def _not_an_image(root):
    p = img(root, 1)
    p.write_bytes(b"this is a text file, not an image\n")
    return p, ("re-export",)


def _empty_file(root):
    p = img(root, 1)
    p.write_bytes(b"")
    return p, ("re-export",)


def _nan(root):
    p = img(root, 1)
    a = voxels(p).astype(np.float32)
    a[3, 3, 3] = np.nan
    rewrite(p, a)
    return p, ("NaN", "replace them")


def _inf(root):
    p = img(root, 1)
    a = voxels(p).astype(np.float32)
    a[2, 2, 2] = -np.inf
    rewrite(p, a)
    return p, ("infinite", "replace them")


def _zero_size(root):
    p = img(root, 1)
    rewrite(p, np.zeros((SHAPE[0], SHAPE[1], 0), np.int16))
    return p, ("empty", "re-export")


def _two_d(root):
    p = img(root, 1)
    rewrite(p, voxels(p)[:, :, 0])
    return p, ("2D", "3D volumes")


def _single_slice(root):
    p, q = img(root, 1), lab(root, 1)
    rewrite(p, voxels(p)[:, :, :1])
    rewrite(q, voxels(q)[:, :, :1])
    return p, ("single slice", "supply the full volume")


def _four_d(root):
    p = img(root, 1)
    a = voxels(p)
    rewrite(p, np.stack([a, a], axis=-1))
    return p, ("4 axes", "_0001")


def _undeclared_label(root):
    p = lab(root, 1)
    a = voxels(p).copy()
    a[0, 0, 0] = 7
    rewrite(p, a)
    return p, ("[7]", "not declared", "add them")


def _fractional_label(root):
    p = lab(root, 1)
    a = voxels(p).astype(np.float32)
    a[a == 1] = 0.5
    rewrite(p, a)
    return p, ("non-integer", "nearest-neighbour")


def _negative_label(root):
    p = lab(root, 1)
    a = voxels(p).astype(np.int16)
    a[0, 0, 0] = -1
    rewrite(p, a)
    return p, ("[-1]", "not declared")


def _label_shape(root):
    p = lab(root, 1)
    rewrite(p, voxels(p)[:-2])
    return p, ("shape", "resample")


def _label_spacing(root):
    p = lab(root, 1)
    affine = nib.load(str(p)).affine.copy()
    affine[:3, :3] *= 1.5
    rewrite(p, affine=affine)
    return p, ("spacing", "resample")


def _label_origin(root):
    p = lab(root, 1)
    affine = nib.load(str(p)).affine.copy()
    affine[:3, 3] += 5.0
    rewrite(p, affine=affine)
    return p, ("origin", "resample")


def _label_direction(root):
    p = lab(root, 1)
    affine = nib.load(str(p)).affine.copy()
    affine[:3, 0] *= -1
    rewrite(p, affine=affine)
    return p, ("direction", "resample")


def _missing_label(root):
    lab(root, 2).unlink()
    return img(root, 2), ("image without label",)


def _label_without_image(root):
    img(root, 2).unlink()
    return lab(root, 2), ("label without image",)


def _stray_file(root):
    p = root / "imagesTr" / "notes.txt"
    p.write_text("exported with viewer X")
    return p, ("stray file", "move it out")


def _no_channel_suffix(root):
    p = root / "imagesTr" / "toy_000.nii.gz"
    shutil.copy(img(root, 0), p)
    return p, ("_XXXX", "4-digit channel")


def _undeclared_channel(root):
    p = img(root, 0, channel=1)
    shutil.copy(img(root, 0), p)
    return p, ("channel 1", "channel_names")


def _case_name_with_space(root):
    p = root / "imagesTr" / "toy 003_0000.nii.gz"
    shutil.copy(img(root, 0), p)
    shutil.copy(lab(root, 0), root / "labelsTr" / "toy 003.nii.gz")
    edit_json(root, numTraining=4)
    return p, ("' '", "rename")


def _all_labels_empty(root):
    for i in range(3):
        rewrite(lab(root, i), np.zeros(voxels(lab(root, i)).shape, np.uint8))
    return root / "labelsTr", ("all 3 labels are empty", "label the foreground")


def _json_missing(root):
    (root / "dataset.json").unlink()
    return root / "dataset.json", ("missing", "needs a dataset.json")


def _json_syntax(root):
    (root / "dataset.json").write_text('{"labels": {"background": 0,')
    return root / "dataset.json", ("not valid JSON", "fix the syntax")


def _json_missing_keys(root):
    return edit_json(root, labels=None, file_ending=None), ("labels", "file_ending", "data_templates")


def _json_wrong_types(root):
    return edit_json(root, numTraining="3"), ("numTraining", "non-negative integer")


def _json_channels_type(root):
    return edit_json(root, channel_names=["CT"]), ("channel_names", "{\"0\": \"CT\"}")


def _json_label_type(root):
    return edit_json(root, labels={"background": 0, "organ1": "1", "organ2": 2, "organ3": 3}), (
        "organ1", "must be an integer")


def _json_file_ending(root):
    return edit_json(root, file_ending=".png"), ("file_ending", ".nii.gz")


def _json_duplicate_labels(root):
    return edit_json(root, labels={"background": 0, "organ1": 1, "organ2": 1, "organ3": 2}), (
        "[1]", "more than one name")


def _json_not_consecutive(root):
    return edit_json(root, labels={"background": 0, "organ1": 1, "organ2": 2, "organ3": 5}), (
        "consecutive", "0..3")


def _json_no_background(root):
    return edit_json(root, labels={"organ0": 0, "organ1": 1, "organ2": 2, "organ3": 3}), ('"background": 0',)


def _json_num_training(root):
    return edit_json(root, numTraining=5), ("numTraining is 5", "set numTraining to 3")


RAW_CASES = {
    "truncated_gzip": _truncated, "corrupt_gzip": _corrupt_gzip, "wrong_magic": _wrong_magic,
    "not_an_image": _not_an_image, "empty_file": _empty_file, "nan_voxels": _nan, "inf_voxels": _inf,
    "zero_size_image": _zero_size, "2d_image": _two_d, "single_slice_in_3d_dataset": _single_slice,
    "4d_image": _four_d, "undeclared_label_value": _undeclared_label, "fractional_label": _fractional_label,
    "negative_label": _negative_label, "label_shape": _label_shape, "label_spacing": _label_spacing,
    "label_origin": _label_origin, "label_direction": _label_direction, "missing_label": _missing_label,
    "label_without_image": _label_without_image, "stray_file": _stray_file,
    "image_without_channel_suffix": _no_channel_suffix, "undeclared_channel": _undeclared_channel,
    "case_name_with_space": _case_name_with_space, "all_labels_empty": _all_labels_empty,
    "dataset_json_missing": _json_missing, "dataset_json_syntax": _json_syntax,
    "dataset_json_missing_keys": _json_missing_keys, "dataset_json_wrong_type": _json_wrong_types,
    "dataset_json_channels_type": _json_channels_type, "dataset_json_label_type": _json_label_type,
    "dataset_json_file_ending": _json_file_ending, "duplicate_label_values": _json_duplicate_labels,
    "labels_not_consecutive": _json_not_consecutive, "no_background_label": _json_no_background,
    "num_training_mismatch": _json_num_training,
}


def _channel_geometry(root):
    p = img(root, 1, channel=1)
    affine = nib.load(str(p)).affine.copy()
    affine[:3, 3] += 4.0
    rewrite(p, affine=affine)
    return p, ("channel geometry differs", "origin", "resample")


def _channel_shape(root):
    p = img(root, 0, channel=1)
    rewrite(p, voxels(p)[:, :-1])
    return p, ("channel geometry differs", "shape")


def _missing_channel(root):
    p = img(root, 1, channel=1)
    p.unlink()
    return p, ("channel file missing", "toy_001", "2 channel(s)")


MR_CASES = {"channel_origin_disagrees": _channel_geometry, "channel_shape_disagrees": _channel_shape,
            "missing_channel_file": _missing_channel}


def _plan_refused(pristine: Path, tmp_path: Path, breaker, capsys, check_only: bool = False):
    root = Path(shutil.copytree(pristine, tmp_path / "raw" / pristine.name))
    named, fixes = breaker(root)
    work = tmp_path / "work"
    argv = ["plan", root, "--workdir", work, "--no-progress", "-j", "1"] + (["--check-only"] if check_only else [])
    code, text = run(argv, capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(named) in text, text
    for words in fixes:
        assert words in text, text
    assert "Traceback" not in text
    assert_nothing_finished(work)
    return text


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_plan_refuses_broken_raw_data(case, _pristine, tmp_path, capsys):
    _plan_refused(_pristine["ct"], tmp_path, RAW_CASES[case], capsys)


@pytest.mark.parametrize("case", list(MR_CASES))
def test_plan_refuses_broken_multichannel_data(case, _pristine, tmp_path, capsys):
    _plan_refused(_pristine["mr"], tmp_path, MR_CASES[case], capsys)


def test_empty_labels_in_some_cases_warn_and_planning_goes_on(_pristine, tmp_path, capsys):
    root = Path(shutil.copytree(_pristine["ct"], tmp_path / "raw" / NAME))
    rewrite(lab(root, 1), np.zeros(voxels(lab(root, 1)).shape, np.uint8))
    code, text = run(["plan", root, "--workdir", tmp_path / "work", "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_OK, text
    assert f"warning: {lab(root, 1)}: label is empty" in text
    assert (tmp_path / "work" / "preprocessed" / NAME / "plans.json").is_file()


def test_unicode_case_names_work_end_to_end(_pristine, tmp_path, capsys):
    """Unicode case names are accepted (spaces are refused, see RAW_CASES): planned, preprocessed, split."""
    root = Path(shutil.copytree(_pristine["ct"], tmp_path / "raw" / NAME))
    img(root, 2).rename(root / "imagesTr" / "leber_ü_µ_002_0000.nii.gz")
    lab(root, 2).rename(root / "labelsTr" / "leber_ü_µ_002.nii.gz")
    work = tmp_path / "work"
    code, text = run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_OK, text
    pre = work / "preprocessed" / NAME
    assert list(pre.glob("*/leber_ü_µ_002.json"))
    assert "leber_ü_µ_002" in json.loads((pre / "splits.json").read_text(encoding="utf-8"))["folds"][0]["val"] + \
        json.loads((pre / "splits.json").read_text(encoding="utf-8"))["folds"][0]["train"]


def test_not_enough_disk_for_preprocessing_is_refused_up_front(_pristine, tmp_path, capsys, monkeypatch):
    import autoseg.preprocessing

    monkeypatch.setattr(autoseg.preprocessing, "_free_bytes", lambda path: 10_000)
    root = Path(shutil.copytree(_pristine["ct"], tmp_path / "raw" / NAME))
    work = tmp_path / "work"
    code, text = run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)
    assert code != cli.EXIT_OK
    assert str(work / "preprocessed" / NAME) in text and "free some space" in text and "Traceback" not in text
    assert_nothing_finished(work)


def _file_in_the_way(tmp_path: Path) -> Path:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder is needed")
    return blocker / "sub"


def test_unwritable_workdir(_pristine, tmp_path, capsys):
    root = Path(shutil.copytree(_pristine["ct"], tmp_path / "raw" / NAME))
    work = _file_in_the_way(tmp_path)
    code, text = run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(work / "preprocessed" / NAME) in text and "choose a folder you can write to" in text
    assert "Traceback" not in text


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_workdir(_pristine, tmp_path, capsys):
    root = Path(shutil.copytree(_pristine["ct"], tmp_path / "raw" / NAME))
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o555)
    try:
        code, text = run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)
    finally:
        work.chmod(0o755)
    assert code == cli.EXIT_INPUT, text
    assert str(work / "preprocessed" / NAME) in text and "fix its permissions" in text
    assert_nothing_finished(work)


def test_debug_shows_the_traceback(_pristine, tmp_path):
    from autoseg.dataset import DatasetError

    root = Path(shutil.copytree(_pristine["ct"], tmp_path / "raw" / NAME))
    _nan(root)
    with pytest.raises(DatasetError):
        cli.main(["plan", str(root), "--workdir", str(tmp_path / "work"), "--no-progress", "--debug"])


def test_a_separate_process_prints_one_message_and_no_traceback(_pristine, tmp_path):
    import subprocess
    import sys

    root = Path(shutil.copytree(_pristine["ct"], tmp_path / "raw" / NAME))
    named, _ = _truncated(root)
    proc = subprocess.run([sys.executable, "-m", "autoseg", "plan", str(root), "--workdir", str(tmp_path / "w"),
                           "--no-progress", "-j", "1"], capture_output=True, text=True)
    assert proc.returncode == cli.EXIT_INPUT
    assert str(named) in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


# --- a planned dataset with a broken artifact ----------------------------------------------------------

@pytest.fixture(scope="module")
def _planned(_pristine, tmp_path_factory):
    work = tmp_path_factory.mktemp("planned")
    assert cli.main(["plan", str(_pristine["ct"]), "--workdir", str(work), "--no-progress", "-j", "1"]) == 0
    return work


@pytest.mark.parametrize("edit, words", [
    (lambda d: {**d, "schema_version": 99}, ("schema version 99", "autoseg plan")),
    (lambda d: {**d, "kind": "fingerprint"}, ("'fingerprint' file", "plans")),
    (lambda d: {k: v for k, v in d.items() if k != "configurations"}, ("missing key 'configurations'", "rerun")),
], ids=["unknown_schema_version", "another_kind", "missing_key"])
def test_train_refuses_a_foreign_or_unknown_plans_json(edit, words, _planned, tmp_path, capsys):
    work = Path(shutil.copytree(_planned, tmp_path / "work"))
    plans = work / "preprocessed" / NAME / "plans.json"
    plans.write_text(json.dumps(edit(json.loads(plans.read_text()))))
    code, text = run(["train", NAME, "--workdir", work, "--epochs", "1", "--no-progress", "--device", "cpu"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(plans) in text and "Traceback" not in text
    for w in words:
        assert w in text, text
    assert not list(work.rglob("*.pt"))


# --- prediction: a model, and inputs or checkpoints that do not fit it ---------------------------------

FAST = ["--no-tta", "--no-progress", "--device", "cpu", "--backend", "torch"]


@pytest.fixture
def model_ws(tmp_path):
    """A workspace with a one-channel tiny model (fold 0) and an input folder of one good case."""
    ws = tmp_path / "ws"
    save_fold(ws / "results" / DATASET / MODEL_NAME, 0, tiny_plans())
    write_nifti(tmp_path / "in" / "good_0000.nii.gz", blob_image())
    return ws


def _predict(ws: Path, in_dir: Path, out_dir: Path, capsys, *extra) -> tuple[int, str]:
    return run(["predict", "-i", in_dir, "-o", out_dir, "--workdir", ws, *FAST, *extra], capsys)


def _input_two_channels(in_dir):
    write_nifti(in_dir / "bad_0000.nii.gz", blob_image())
    write_nifti(in_dir / "bad_0001.nii.gz", blob_image(seed=1))
    return "bad", ("bad_0001.nii.gz", "expects 1 channel(s)")


def _input_4d(in_dir):
    write_nifti(in_dir / "bad_0000.nii.gz", np.stack([blob_image(), blob_image(seed=1)], axis=-1))
    return "bad", ("bad_0000.nii.gz", "3D", "_0001")


def _input_truncated(in_dir):
    p = write_nifti(in_dir / "bad_0000.nii.gz", blob_image())
    p.write_bytes(p.read_bytes()[:200])
    return "bad", ("bad_0000.nii.gz", "re-export")


def _input_nan(in_dir):
    a = blob_image()
    a[5, 5, 5] = np.nan
    write_nifti(in_dir / "bad_0000.nii.gz", a)
    return "bad", ("bad_0000.nii.gz", "NaN", "replace them")


def _input_2d(in_dir):
    write_nifti(in_dir / "bad_0000.nii.gz", blob_image()[:, :, 0])
    return "bad", ("bad_0000.nii.gz", "3D")


def _input_bad_checksum(in_dir):
    # voxels decode fine, only the gzip trailer's CRC is wrong: readers that stop after the voxels miss it
    p = write_nifti(in_dir / "bad_0000.nii.gz", blob_image())
    data = bytearray(p.read_bytes())
    data[-8] ^= 0xFF
    p.write_bytes(bytes(data))
    return "bad", ("bad_0000.nii.gz", "damaged gzip data", "re-export")


PREDICT_INPUTS = {"channel_count": _input_two_channels, "4d_input": _input_4d, "truncated_input": _input_truncated,
                  "nan_input": _input_nan, "2d_input": _input_2d, "bad_checksum_input": _input_bad_checksum}


@pytest.mark.parametrize("case", list(PREDICT_INPUTS))
def test_predict_fails_a_bad_input_case_and_writes_no_output_for_it(case, model_ws, tmp_path, capsys):
    case_id, words = PREDICT_INPUTS[case](tmp_path / "in")
    out = tmp_path / "out"
    code, text = _predict(model_ws, tmp_path / "in", out, capsys)
    assert code == cli.EXIT_FAILURE, text
    assert f"failed: {case_id}:" in text and "Traceback" not in text
    for w in words:
        assert w in text, text
    assert (out / "good.nii.gz").is_file()  # the other cases are still predicted
    assert [p.name for p in out.iterdir()] == ["good.nii.gz"]  # nothing for the bad case, no temporary file


def test_predict_refuses_a_checkpoint_from_another_dataset(model_ws, tmp_path, capsys):
    other = model_ws / "results" / "Dataset902_Other" / MODEL_NAME
    shutil.copytree(model_ws / "results" / DATASET / MODEL_NAME, other)
    shutil.rmtree(model_ws / "results" / DATASET)
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys, "-d", "902")
    assert code == cli.EXIT_INPUT, text
    assert str(other / "fold_0" / "checkpoint_final.pt") in text and f"move {MODEL_NAME} to results/{DATASET}" in text
    assert "Traceback" not in text and not (tmp_path / "out").exists()


def test_predict_refuses_a_dataset_that_does_not_match_the_model(model_ws, tmp_path, capsys):
    model = model_ws / "results" / DATASET / MODEL_NAME
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys, "--model", model, "-d", "902")
    assert code == cli.EXIT_INPUT, text
    assert f"-d 902 does not match --model {model}, which was trained on {DATASET}" in text
    assert "Traceback" not in text and not (tmp_path / "out").exists()
    number = str(int(DATASET[7:10]))  # the same dataset by number is fine
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys, "--model", model, "-d", number)
    assert code == cli.EXIT_OK and (tmp_path / "out" / "good.nii.gz").is_file(), text


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_predict_refuses_a_damaged_checkpoint(damage, model_ws, tmp_path, capsys):
    ckpt = model_ws / "results" / DATASET / MODEL_NAME / "fold_0" / "checkpoint_final.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    else:
        import torch

        torch.save({"network_weights": {}}, ckpt)  # e.g. an nnU-Net checkpoint
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(ckpt) in text and ("truncated" in text if damage == "truncated" else "not an autoseg checkpoint" in text)
    assert "Traceback" not in text and not (tmp_path / "out").exists()


def flip_bytes_in_largest_tensor(ckpt: Path, n: int = 16) -> None:
    """Invert ``n`` bytes in the middle of the checkpoint's largest tensor (same file size): damage that
    ``torch.load`` does not notice (it reads tensor data without checking it)."""
    import struct
    import zipfile

    with zipfile.ZipFile(ckpt) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(ckpt.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start:start + n] = bytes(b ^ 0xFF for b in data[start:start + n])
    ckpt.write_bytes(bytes(data))


def test_predict_refuses_a_checkpoint_with_flipped_bytes(model_ws, tmp_path, capsys):
    ckpt = model_ws / "results" / DATASET / MODEL_NAME / "fold_0" / "checkpoint_final.pt"
    size = ckpt.stat().st_size
    flip_bytes_in_largest_tensor(ckpt)
    assert ckpt.stat().st_size == size
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(ckpt) in text and "damaged" in text and "digest" in text
    assert "Traceback" not in text and not (tmp_path / "out").exists()


def test_predict_refuses_a_checkpoint_with_plans_of_an_unknown_schema(model_ws, tmp_path, capsys):
    import torch

    from autoseg.core.checkpoint import save_checkpoint

    ckpt_path = model_ws / "results" / DATASET / MODEL_NAME / "fold_0" / "checkpoint_final.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["plans"]["schema_version"] = 99
    save_checkpoint(ckpt, ckpt_path)  # a valid file of a newer autoseg (digests of its content)
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(ckpt_path) in text and "schema version 99" in text and "Traceback" not in text


def test_predict_into_an_unwritable_folder(model_ws, tmp_path, capsys):
    out = _file_in_the_way(tmp_path)
    code, text = _predict(model_ws, tmp_path / "in", out, capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(out) in text and "choose a folder you can write to" in text and "Traceback" not in text


def test_predict_handles_unicode_case_names(model_ws, tmp_path, capsys):
    write_nifti(tmp_path / "in" / "herz_ä_1_0000.nii.gz", blob_image(seed=3))
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys)
    assert code == cli.EXIT_OK, text
    assert (tmp_path / "out" / "herz_ä_1.nii.gz").is_file()


@pytest.mark.parametrize("err, words", [
    (PermissionError(13, "Permission denied", "/data/out"), ("/data/out: Permission denied", "fix its permissions")),
    (OSError(30, "Read-only file system", "/mnt/ro/x"), ("/mnt/ro/x", "choose a folder you can write to")),
    (OSError(28, "No space left on device", "/w/pre/a.npy"), ("/w/pre/a.npy", "free some space")),
], ids=["permission", "read_only", "disk_full"])
def test_file_system_errors_anywhere_give_the_path_and_the_fix(err, words, monkeypatch, tmp_path, capsys):
    """Errors raised by a write deep inside a command (here: the toy writer) reach the user as one line."""
    import autoseg.toy

    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr(autoseg.toy, "_write_case", fail)
    code, text = run(["demo-data", tmp_path / "raw", "--cases", "1"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert "Traceback" not in text and all(w in text for w in words), text
    assert not (tmp_path / "raw" / "Dataset999_ToyCT").exists()  # the toy writer cleans up after itself
