"""Bad values (issue 15): voxels that are finite in the file but not where they are used, label values
dataset.json does not declare, previews of broken images, and input that is accepted but deserves a
warning. Every case runs the real command line (``autoseg.cli.main``, in this process) and checks the
exit code, that the message names the file, and what is (not) written.

Classes (docs/reliability.md, "Bad values"):
1. non-finite values where the data are used: after the float32 cast (1e39 in a float64 image), after
   normalisation (finite values that overflow), in fingerprint statistics, in probabilities, in the
   training loss;
2. label values outside dataset.json (undeclared, negative, beyond int32/int64, NaN) in plan and evaluate;
3. previews of images with NaN/inf voxels, all-NaN slices, constant or all-NaN images;
4. accepted with a warning: duplicate JSON keys, repeated MSD cases, constant and all-zero images;
   refused: names that would write outside their folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg import cli
from autoseg.toy import make_toy_dataset
from inference.conftest import DATASET, MODEL_NAME, blob_image, save_fold, tiny_plans, write_nifti  # tests/ on sys.path

from .procs import DATASET as TOY, RUN, TINY_PRESET, plan_args, train_args

SHAPE = (16, 16, 12)
NAME = "Dataset001_Toy"


def run(argv, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def _pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("pristine_values")
    ct = make_toy_dataset(base, n_cases=3, seed=1, shape=SHAPE, name=NAME)
    mr = make_toy_dataset(base, n_cases=2, seed=2, shape=SHAPE, modality="MR", n_channels=2, name="Dataset002_MR")
    return {"ct": ct, "mr": mr}


def img(root: Path, case: int = 0, channel: int = 0) -> Path:
    return root / "imagesTr" / f"toy_{case:03d}_{channel:04d}.nii.gz"


def lab(root: Path, case: int = 0) -> Path:
    return root / "labelsTr" / f"toy_{case:03d}.nii.gz"


def voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def rewrite(path: Path, array: np.ndarray) -> None:
    old = nib.load(str(path))
    nib.save(nib.Nifti1Image(array, old.affine), str(path))


def overflowing(shape, seed: int = 0) -> np.ndarray:
    """float32 voxels, all finite, 95% near +3e38 and 5% near -3e38: subtracting the mean (~2.7e38)
    from the negative ones exceeds the float32 range in any mean-based normalisation."""
    rng = np.random.default_rng(seed)
    a = np.full(shape, 3.0e38, np.float32) * rng.uniform(0.9, 1.0, shape).astype(np.float32)
    a[rng.random(shape) < 0.05] = -3.0e38
    return a


def copy_raw(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "raw" / pristine.name))


def assert_nothing_finished(work: Path) -> None:
    pre = work / "preprocessed"
    finished = [p for p in pre.rglob("*") if p.name in ("plans.json", "splits.json")
                or (p.suffix == ".json" and p.with_suffix(".npy").exists())] if pre.exists() else []
    assert not finished, finished


# --- 1./2. plan: values that become non-finite where they are used; labels beyond the integer types --------

def _beyond_float32(root):
    p = img(root, 1)
    a = voxels(p).astype(np.float64)
    a[4, 4, 4] = 1e39  # finite in float64, inf in float32
    rewrite(p, a)
    return p, ("beyond the float32 range", "1 voxel(s)")


def _beyond_float32_negative(root):
    p = img(root, 2)
    a = voxels(p).astype(np.float64)
    a[1, 2, 3] = -5e40
    rewrite(p, a)
    return p, ("beyond the float32 range",)


def _normalisation_overflow(root):
    """Finite float32 values whose CT normalisation (minus the foreground mean) overflows."""
    for i in range(3):
        rewrite(img(root, i), overflowing(voxels(img(root, i)).shape, seed=i))
    return img(root, 0), ("normalisation", "rescale the image")


def _label_beyond_int64(root):
    p = lab(root, 1)
    a = voxels(p).astype(np.float64)
    a[0, 0, 0] = 1e20  # a whole number, but casting it to int64 overflows
    rewrite(p, a)
    return p, ("[100000000000000000000]", "not declared")


PLAN_VALUES = {"beyond_float32": _beyond_float32, "beyond_float32_negative": _beyond_float32_negative,
               "normalisation_overflow": _normalisation_overflow, "label_beyond_int64": _label_beyond_int64}


@pytest.mark.parametrize("case", list(PLAN_VALUES))
def test_plan_refuses_values_that_are_not_finite_where_used(case, _pristine, tmp_path, capsys):
    root = copy_raw(_pristine["ct"], tmp_path)
    named, words = PLAN_VALUES[case](root)
    work = tmp_path / "work"
    code, text = run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(named) in text and "Traceback" not in text, text
    for w in words:
        assert w in text, text
    assert_nothing_finished(work)


def test_plan_refuses_beyond_float32_in_a_second_channel(_pristine, tmp_path, capsys):
    root = copy_raw(_pristine["mr"], tmp_path)
    p = img(root, 1, channel=1)
    a = voxels(p).astype(np.float64)
    a[3, 3, 3] = 2e39
    rewrite(p, a)
    code, text = run(["plan", root, "--workdir", tmp_path / "work", "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_INPUT and str(p) in text and "float32" in text, text
    assert_nothing_finished(tmp_path / "work")


def test_plan_refuses_a_reused_fingerprint_with_non_finite_statistics(_pristine, tmp_path, capsys):
    """A fingerprint.json written with ``mean: inf`` (older autoseg) is reused while the raw files are
    unchanged: plan must refuse it instead of writing plans that normalise to NaN."""
    root = copy_raw(_pristine["ct"], tmp_path)
    work = tmp_path / "work"
    assert run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)[0] == cli.EXIT_OK
    pre = work / "preprocessed" / NAME
    fp = pre / "fingerprint.json"
    data = json.loads(fp.read_text())
    data["intensity"][0]["mean"], data["intensity"][0]["std"] = float("inf"), float("nan")
    fp.write_text(json.dumps(data))
    (pre / "plans.json").unlink()
    code, text = run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert "non-finite intensity statistics" in text and "--fresh" in text and "Traceback" not in text, text
    assert not (pre / "plans.json").exists()


# --- 1. predict and ensemble ------------------------------------------------------------------------------

FAST = ["--no-tta", "--no-progress", "--device", "cpu", "--backend", "torch"]


@pytest.fixture
def model_ws(tmp_path):
    ws = tmp_path / "ws"
    save_fold(ws / "results" / DATASET / MODEL_NAME, 0, tiny_plans())  # z-score normalisation
    write_nifti(tmp_path / "in" / "good_0000.nii.gz", blob_image())
    return ws


def _input_beyond_float32(in_dir):
    a = blob_image().astype(np.float64)
    a[5, 5, 5] = 1e39
    write_nifti(in_dir / "bad_0000.nii.gz", a)
    return ("bad_0000.nii.gz", "float32")


def _input_normalisation_overflow(in_dir):
    write_nifti(in_dir / "bad_0000.nii.gz", overflowing(blob_image().shape))
    return ("bad_0000.nii.gz", "zscore", "normalisation")


PREDICT_VALUES = {"beyond_float32": _input_beyond_float32, "normalisation_overflow": _input_normalisation_overflow}


@pytest.mark.parametrize("case", list(PREDICT_VALUES))
def test_predict_fails_a_case_whose_values_are_not_finite_where_used(case, model_ws, tmp_path, capsys):
    words = PREDICT_VALUES[case](tmp_path / "in")
    out = tmp_path / "out"
    code, text = run(["predict", "-i", tmp_path / "in", "-o", out, "--workdir", model_ws, *FAST], capsys)
    assert code == cli.EXIT_FAILURE, text
    assert "failed: bad:" in text and "Traceback" not in text, text
    for w in words:
        assert w in text, text
    assert [p.name for p in out.iterdir()] == ["good.nii.gz"]


def test_predict_refuses_a_checkpoint_with_nan_weights(model_ws, tmp_path, capsys):
    """Older autoseg saved diverged runs as checkpoint_final.pt: predicting with one gives background everywhere."""
    import torch

    path = model_ws / "results" / DATASET / MODEL_NAME / "fold_0" / "checkpoint_final.pt"
    ckpt = torch.load(path, weights_only=True)
    first = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][first].fill_(float("nan"))
    for key in ("content_sha256", "weights_sha256"):  # older autoseg wrote no digests (a changed file with
        ckpt.pop(key)  # them is refused as damaged: tests/core/test_checkpoint_file.py)
    torch.save(ckpt, path)  # as an older autoseg would have written it (save_checkpoint now refuses)
    out = tmp_path / "out"
    code, text = run(["predict", "-i", tmp_path / "in", "-o", out, "--workdir", model_ws, *FAST], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(path) in text and "NaN or infinite" in text and "Traceback" not in text, text
    assert not out.exists() or not list(out.iterdir())


def test_ensemble_fails_a_case_with_nan_probabilities(tmp_path, capsys):
    from autoseg.inference.probabilities import SavedProbabilities, save_probabilities

    seg = np.zeros((6, 5, 4), np.uint8)
    dirs = []
    for k in range(2):
        d = tmp_path / f"pred{k}"
        for case in ("good", "bad"):
            probs = np.full((2, 6, 5, 4), 0.5, np.float32)
            if case == "bad" and k == 1:
                probs[1, 2, 2, 2] = np.nan
            save_probabilities(d / f"{case}.npz", SavedProbabilities(probs, ((0, 6), (0, 5), (0, 4)), (6, 5, 4)))
            write_nifti(d / f"{case}.nii.gz", seg)
        dirs.append(d)
    out = tmp_path / "ens"
    code, text = run(["ensemble", *dirs, "-o", out, "--no-progress"], capsys)
    assert code == cli.EXIT_FAILURE, text
    assert str(dirs[1] / "bad.npz") in text and "NaN" in text and "Traceback" not in text, text
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]


# --- 1. training: a non-finite loss stops the run; no NaN weights are ever saved ---------------------------

@pytest.fixture(scope="module")
def _planned_toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("nan_training")
    raw = make_toy_dataset(root / "raw", n_cases=4, shape=SHAPE, seed=0)
    preset = root / "tiny.toml"
    preset.write_text(TINY_PRESET)
    work = root / "work"
    assert cli.main(plan_args(raw, work, preset)) == 0
    return work


def _assert_finite_checkpoint(path: Path) -> dict:
    import torch

    from autoseg.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point()), path
    return ckpt


def test_train_stops_on_nan_in_preprocessed_data_and_saves_nothing(_planned_toy, tmp_path, capsys):
    work = Path(shutil.copytree(_planned_toy, tmp_path / "work"))
    arrays = [p for p in (work / "preprocessed" / TOY).rglob("*.npy") if not p.name.endswith("_seg.npy")]
    assert arrays
    for p in arrays:  # every case, so the first batch is hit whichever cases it draws
        a = np.load(p)
        a[:] = np.nan
        np.save(p, a)
    code, text = run(train_args(work, epochs=2), capsys)
    assert code == cli.EXIT_FAILURE, text
    run_dir = work / RUN / "fold_0"
    assert str(run_dir) in text and "training loss of epoch 0 is nan" in text, text
    assert "no checkpoint had been written yet" in text and "autoseg plan" in text and "Traceback" not in text
    assert not list(run_dir.glob("*.pt"))


def test_train_stops_when_the_loss_turns_nan_and_keeps_the_last_good_checkpoint(_planned_toy, tmp_path, capsys,
                                                                                monkeypatch):
    """From the 5th step on (epoch 2 of 2-step epochs) every batch is NaN: weights turn NaN in that epoch.
    The run must stop with a message, keep epoch 1's checkpoint_latest.pt (finite), and write no final."""
    import torch

    from autoseg.training import trainer

    work = Path(shutil.copytree(_planned_toy, tmp_path / "work"))
    real_step, calls = trainer.train_step, []

    def poisoned_step(run_, image, target):
        calls.append(1)
        if len(calls) >= 5:
            image = torch.full_like(image, float("nan"))
        return real_step(run_, image, target)

    monkeypatch.setattr(trainer, "train_step", poisoned_step)
    code, text = run(train_args(work, epochs=4), capsys)
    assert code == cli.EXIT_FAILURE, text
    run_dir = work / RUN / "fold_0"
    assert "training loss of epoch 2 is nan" in text and "checkpoint_latest.pt" in text, text
    assert "Traceback" not in text
    assert not (run_dir / "checkpoint_final.pt").exists()
    assert _assert_finite_checkpoint(run_dir / "checkpoint_latest.pt")["train_state"]["epoch"] == 2
    if (run_dir / "checkpoint_best.pt").exists():
        _assert_finite_checkpoint(run_dir / "checkpoint_best.pt")
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]


# --- 2. evaluate: label values dataset.json does not declare --------------------------------------------

@pytest.fixture
def eval_dirs(_pristine, tmp_path):
    """(gt, pred): the toy labels and a perfect copy of them as predictions (dataset.json next to gt)."""
    root = copy_raw(_pristine["ct"], tmp_path)
    pred = Path(shutil.copytree(root / "labelsTr", tmp_path / "pred"))
    return root / "labelsTr", pred


def _set_voxel(path: Path, value, dtype, relabel: int | None = None) -> Path:
    """Voxel (0, 0, 0) -- and every voxel of label ``relabel``, when given -- set to ``value``."""
    a = voxels(path).astype(dtype)
    if relabel is not None:
        assert np.any(a == relabel)
        a[a == relabel] = value
    a[0, 0, 0] = value
    old = nib.load(str(path))
    nib.save(nib.Nifti1Image(a, old.affine, dtype=a.dtype), str(path))
    return path


EVAL_CASES = {
    # reference structure 1 relabelled 5: it would drop out of scoring
    "reference_relabelled": (lambda gt, pred: _set_voxel(gt / "toy_001.nii.gz", 5, np.uint8, relabel=1), "[5]"),
    "prediction_undeclared": (lambda gt, pred: _set_voxel(pred / "toy_002.nii.gz", 7, np.uint8), "[7]"),
    "reference_negative": (lambda gt, pred: _set_voxel(gt / "toy_000.nii.gz", -1, np.int16), "[-1]"),
    # 2**32 + 1 wraps to 1 in int32: it would be scored as label 1
    "prediction_beyond_int32": (lambda gt, pred: _set_voxel(pred / "toy_000.nii.gz", 2**32 + 1, np.int64),
                                "[4294967297]"),
    "reference_nan": (lambda gt, pred: _set_voxel(gt / "toy_002.nii.gz", np.nan, np.float32), "NaN"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_evaluate_refuses_label_values_not_in_dataset_json(case, eval_dirs, capsys):
    gt, pred = eval_dirs
    breaker, words = EVAL_CASES[case]
    named = breaker(gt, pred)
    code, text = run(["evaluate", gt, pred, "-j", "1", "--no-progress"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(named) in text and words in text and "Traceback" not in text, text
    assert not (pred / "summary.json").exists() and not (pred / "summary.csv").exists()


def test_evaluate_lists_every_file_with_undeclared_values_at_once(eval_dirs, capsys):
    gt, pred = eval_dirs
    ref = _set_voxel(gt / "toy_001.nii.gz", 5, np.uint8, relabel=1)
    other = _set_voxel(pred / "toy_002.nii.gz", 9, np.uint8)
    code, text = run(["evaluate", gt, pred, "-j", "1", "--no-progress"], capsys)
    assert code == cli.EXIT_INPUT and str(ref) in text and str(other) in text and "not declared" in text, text


# --- 3. show: NaN/inf voxels, all-NaN slices, constant and all-NaN images --------------------------------

def _panel_brightness(png: Path) -> float:
    import matplotlib.image

    rgba = matplotlib.image.imread(str(png))
    h = rgba.shape[0]
    return float(rgba[int(0.15 * h): int(0.85 * h), :, :3].mean())  # the panels, without the title


def _show_input(tmp_path: Path, edit) -> Path:
    a = blob_image(shape=(20, 18, 10)).astype(np.float64)
    if edit is not None:
        edit(a)
    return write_nifti(tmp_path / f"image_{len(list(tmp_path.glob('image_*')))}.nii.gz", a)


SHOW_CASES = {
    "one_nan_voxel": (lambda a: a.__setitem__((3, 3, 3), np.nan), "NaN/inf"),
    "inf_voxel": (lambda a: a.__setitem__((4, 4, 4), np.inf), "NaN/inf"),
    "beyond_float32": (lambda a: a.__setitem__((4, 4, 4), 1e39), "NaN/inf"),
    "all_nan_centre_slice": (lambda a: a.__setitem__((slice(None), slice(None), 5), np.nan), "NaN/inf"),
}


@pytest.mark.parametrize("case", list(SHOW_CASES))
def test_show_stays_readable_with_non_finite_voxels(case, tmp_path, capsys):
    edit, words = SHOW_CASES[case]
    good = _show_input(tmp_path, None)
    bad = _show_input(tmp_path, edit)
    assert run(["show", good, "-o", tmp_path / "good.png"], capsys)[0] == cli.EXIT_OK
    code, text = run(["show", bad, "-o", tmp_path / "bad.png"], capsys)
    assert code == cli.EXIT_OK, text
    assert f"warning: {bad}" in text and words in text, text
    reference = _panel_brightness(tmp_path / "good.png")
    assert reference > 0.05
    assert abs(_panel_brightness(tmp_path / "bad.png") - reference) < 0.25 * reference  # not black


def test_show_says_an_image_is_constant(tmp_path, capsys):
    p = write_nifti(tmp_path / "flat.nii.gz", np.full((12, 10, 8), 7.0, np.float32))
    code, text = run(["show", p, "-o", tmp_path / "flat.png"], capsys)
    assert code == cli.EXIT_OK and f"warning: {p}: constant image" in text, text
    assert (tmp_path / "flat.png").is_file()


def test_show_refuses_an_image_without_finite_voxels(tmp_path, capsys):
    p = write_nifti(tmp_path / "nan.nii.gz", np.full((12, 10, 8), np.nan, np.float32))
    code, text = run(["show", p, "-o", tmp_path / "nan.png"], capsys)
    assert code == cli.EXIT_INPUT and str(p) in text and "no voxel is a finite number" in text, text
    assert not (tmp_path / "nan.png").exists()


def test_show_refuses_a_segmentation_with_nan(tmp_path, capsys):
    image = write_nifti(tmp_path / "image.nii.gz", blob_image(shape=(12, 10, 8)))
    seg = np.zeros((12, 10, 8), np.float32)
    seg[4:8, 4:7, 3:6] = 1
    seg[0, 0, 0] = np.nan
    p = write_nifti(tmp_path / "seg.nii.gz", seg)
    code, text = run(["show", image, p, "-o", tmp_path / "s.png"], capsys)
    assert code == cli.EXIT_INPUT and str(p) in text and "NaN" in text, text
    assert not (tmp_path / "s.png").exists()


# --- 4. accepted, with a warning naming the file; names that would write elsewhere are refused --------

def _check_only(root: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    return run(["plan", root, "--workdir", tmp_path / "work", "--check-only", "--no-progress", "-j", "1"], capsys)


def test_duplicate_keys_in_dataset_json_are_warned(_pristine, tmp_path, capsys):
    root = copy_raw(_pristine["ct"], tmp_path)
    path = root / "dataset.json"
    text = path.read_text()
    path.write_text(text.replace('"numTraining": 3', '"numTraining": 5, "numTraining": 3', 1))
    assert '"numTraining": 5, "numTraining": 3' in path.read_text()
    code, out = _check_only(root, tmp_path, capsys)
    assert code == cli.EXIT_OK, out
    assert f"warning: {path}: key 'numTraining' appears 2 times" in out and "(5, 3)" in out, out


def test_duplicate_keys_in_user_splits_are_warned(_pristine, tmp_path, capsys):
    root = copy_raw(_pristine["ct"], tmp_path)
    splits = root / "splits_final.json"
    splits.write_text('[{"train": ["toy_000", "toy_001"], "val": ["toy_002"], "val": ["toy_001"]},'
                      ' {"train": ["toy_001", "toy_002"], "val": ["toy_000"]}]')
    code, out = run(["plan", root, "--workdir", tmp_path / "work", "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_OK, out
    assert f"warning: {splits}: key 'val' appears 2 times" in out, out


def test_duplicate_keys_in_evaluate_dataset_json_are_warned(_pristine, tmp_path, capsys):
    root = copy_raw(_pristine["ct"], tmp_path)
    spec = tmp_path / "spec.json"
    data = json.loads((root / "dataset.json").read_text())
    spec.write_text(json.dumps(data)[:-1] + ', "file_ending": ".nii.gz"}')
    code, out = run(["evaluate", root / "labelsTr", root / "labelsTr", "-d", spec, "-o", tmp_path / "ev", "-j", "1",
                     "--no-progress"], capsys)
    assert code == cli.EXIT_OK, out
    assert f"warning: {spec}: key 'file_ending' appears 2 times" in out, out


@pytest.mark.parametrize("value", [0.0, 250.0])
def test_constant_image_is_warned(value, _pristine, tmp_path, capsys):
    root = copy_raw(_pristine["ct"], tmp_path)
    p = img(root, 2)
    rewrite(p, np.full(voxels(p).shape, value, np.int16))
    code, out = _check_only(root, tmp_path, capsys)
    assert code == cli.EXIT_OK, out
    expected = "image is all zero but its label toy_002.nii.gz has foreground" if value == 0 else \
        "image is constant (every voxel is 250)"
    assert f"warning: {p}: {expected}" in out, out


def _msd_task(root: Path, training: list[dict], num_training: int) -> Path:
    task = root / "Task09_Spleen"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    for i in range(2):
        write_nifti(task / "imagesTr" / f"spleen_{i}.nii.gz", blob_image(shape=(12, 10, 8), seed=i))
        write_nifti(task / "labelsTr" / f"spleen_{i}.nii.gz", (blob_image(shape=(12, 10, 8), seed=i) > 0.5)
                    .astype(np.uint8))
    meta = {"name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
            "numTraining": num_training, "training": training, "test": []}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def _entry(i: int, label: int | None = None) -> dict:
    return {"image": f"./imagesTr/spleen_{i}.nii.gz",
            "label": f"./labelsTr/spleen_{i if label is None else label}.nii.gz"}


def test_convert_msd_warns_about_a_repeated_case_and_counts_it_once(tmp_path, capsys):
    task = _msd_task(tmp_path, [_entry(0), _entry(1), _entry(1)], num_training=3)
    code, out = run(["convert-msd", task, tmp_path / "raw"], capsys)
    assert code == cli.EXIT_OK, out
    assert f"warning: {task / 'dataset.json'}: case 'spleen_1' is listed 2 times" in out, out
    assert "numTraining is 3 but 'training' lists 2 distinct case(s)" in out, out
    converted = tmp_path / "raw" / "Dataset009_Spleen"
    assert json.loads((converted / "dataset.json").read_text())["numTraining"] == 2
    assert run(["plan", converted, "--workdir", tmp_path / "w", "--check-only", "--no-progress"], capsys)[0] == 0


def test_convert_msd_refuses_one_case_listed_with_different_files(tmp_path, capsys):
    task = _msd_task(tmp_path, [_entry(0), _entry(1), _entry(1, label=0)], num_training=3)
    code, out = run(["convert-msd", task, tmp_path / "raw"], capsys)
    assert code == cli.EXIT_INPUT, out
    assert "case 'spleen_1' is listed 2 times in 'training' with different files" in out, out
    assert not (tmp_path / "raw" / "Dataset009_Spleen").exists()


@pytest.mark.parametrize("name", ["../escaped", "sub/Dataset1_X", "..", "a\\b"])
def test_demo_data_refuses_names_that_leave_the_output_folder(name, tmp_path, capsys):
    out_dir = tmp_path / "deep" / "raw"
    code, text = run(["demo-data", out_dir, "--name", name, "--cases", "1"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert repr(name) in text and "plain folder name" in text and "Traceback" not in text, text
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written anywhere
