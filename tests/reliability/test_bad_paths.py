"""Bad paths and inconsistent headers (issue 15, defects 2, 5, 7, 9), each a class tested through the
real command line (`autoseg.cli.main`, in-process, or a separate process where the pipe matters):

- no command writes over one of its inputs, and an output path of the wrong kind (a folder where a
  file belongs, a file where a folder belongs, a name whose suffix says another format) is refused
  before any work, with the path and the fix;
- two inputs that map to the same case or output (names that differ only in upper/lower case) are
  both reported, by the dataset checks and by predict;
- a NIfTI header whose pixdim, qform and sform disagree, or whose spacing is zero, is refused (plan
  checks, predict) instead of mixing spacing from one and origin/direction from the other;
- file-system errors and odd inputs reach the user as a message naming the path and the fix, never a
  raw errno; messages name command-line options, not Python parameters.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg import cli
from inference.conftest import DATASET, MODEL_NAME, blob_image, write_nifti  # tests/ on sys.path
from reliability.test_bad_input import (FAST, NAME, _planned, _plan_refused, _predict, _pristine,  # noqa: F401
                                        edit_json, img, lab, model_ws, run)

PIXDIM_OFFSET = 80  # byte offset of pixdim[1] in a NIfTI-1 header (three float32 values follow)


def patch_pixdim(path: Path, pixdim) -> None:
    """Overwrite pixdim[1:4] in the stored header only (nibabel would fix or recompute it on save)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<3f", raw, PIXDIM_OFFSET, *pixdim)
    path.write_bytes(gzip.compress(bytes(raw)))


def assert_clean(text: str) -> None:
    assert "Traceback" not in text and "Errno" not in text, text


# --- outputs never replace inputs; an output path of the wrong kind is refused -----------------------

def test_show_refuses_to_write_over_its_image(_pristine, tmp_path, capsys):
    root = Path(shutil.copytree(_pristine["ct"], tmp_path / NAME))
    scan = img(root)
    before = scan.read_bytes()
    spelled_otherwise = scan.parent / ".." / "imagesTr" / scan.name
    for argv in (["show", scan, "-o", scan], ["show", scan, lab(root), "-o", lab(root)],
                 ["show", scan, "-o", spelled_otherwise]):
        code, text = run(argv, capsys)
        assert code == cli.EXIT_INPUT, text
        assert "would destroy it" in text and "-o" in text, text
        assert_clean(text)
    assert scan.read_bytes() == before


@pytest.mark.parametrize("kind", ["folder", "wrong_suffix"])
def test_show_output_must_be_a_png_file(kind, _pristine, tmp_path, capsys):
    target = tmp_path / "views" if kind == "folder" else tmp_path / "preview.nii.gz"
    if kind == "folder":
        target.mkdir()
    code, text = run(["show", img(_pristine["ct"]), "-o", target], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(target) in text and ".png" in text, text
    assert_clean(text)
    assert not target.is_file()


def test_export_refuses_a_folder_and_a_name_of_one_of_its_inputs(model_ws, tmp_path, capsys):
    ckpt = model_ws / "results" / DATASET / MODEL_NAME / "fold_0" / "checkpoint_final.pt"
    before = ckpt.read_bytes()
    folder = tmp_path / "exports"
    folder.mkdir()
    for target, words in ((folder, ("is a folder", ".zip")), (ckpt, ("would destroy it",))):
        code, text = run(["export", DATASET, "-o", target, "--workdir", model_ws], capsys)
        assert code == cli.EXIT_INPUT, text
        assert str(target) in text and all(w in text for w in words), text
        assert_clean(text)
    assert ckpt.read_bytes() == before and not list(folder.iterdir())


def test_import_keeps_a_zip_that_lies_in_the_folder_it_replaces(model_ws, tmp_path, capsys):
    zip_path = tmp_path / "model.zip"
    assert run(["export", DATASET, "-o", zip_path, "--workdir", model_ws], capsys)[0] == cli.EXIT_OK
    other = tmp_path / "other_ws"
    assert run(["import", zip_path, "--workdir", other], capsys)[0] == cli.EXIT_OK
    inside = other / "results" / DATASET / MODEL_NAME / "model.zip"
    shutil.copy(zip_path, inside)
    code, text = run(["import", inside, "--overwrite", "--workdir", other], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(inside) in text and "move the zip out" in text, text
    assert inside.is_file()


def test_convert_msd_never_replaces_the_folder_holding_the_task(tmp_path, capsys):
    from test_msd import make_msd_task

    holder = tmp_path / "Dataset005_Prostate"
    task = make_msd_task(holder, name="Task05_Prostate")
    code, text = run(["convert-msd", task, tmp_path, "--overwrite"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(task) in text and "choose another OUT_DIR" in text, text
    assert (task / "dataset.json").is_file()


def test_plan_refuses_a_workdir_that_puts_preprocessed_data_into_the_raw_dataset(_pristine, tmp_path, capsys):
    work = tmp_path / "work"
    root = Path(shutil.copytree(_pristine["ct"], work / "preprocessed" / NAME))
    code, text = run(["plan", root, "--workdir", work, "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert "choose another --workdir" in text, text
    assert not (root / "plans.json").exists() and not (root / "fingerprint.json").exists()


def test_evaluate_output_that_is_a_file(_pristine, tmp_path, capsys):
    labels = _pristine["ct"] / "labelsTr"
    blocker = tmp_path / "summary_here"
    blocker.write_text("not a folder")
    code, text = run(["evaluate", labels, labels, "-o", blocker, "-j", "1", "--no-progress"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert str(blocker) in text and "needs a folder" in text, text
    assert_clean(text)
    assert blocker.read_text() == "not a folder"


def test_predict_reports_a_folder_standing_at_an_output_path(model_ws, tmp_path, capsys):
    write_nifti(tmp_path / "in" / "second_0000.nii.gz", blob_image(seed=2))
    (tmp_path / "out" / "good.nii.gz").mkdir(parents=True)
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys)
    assert code == cli.EXIT_FAILURE, text
    assert f"failed: good: {tmp_path / 'out' / 'good.nii.gz'}: a folder stands where" in text, text
    assert_clean(text)
    assert (tmp_path / "out" / "second.nii.gz").is_file()  # the other case is still predicted


# --- two inputs that map to the same case or output -------------------------------------------------

def _same_name_other_case(root):
    extra = root / "imagesTr" / "toy_001_0000.NII.GZ"
    shutil.copy(img(root, 0), extra)
    return extra, ("toy_001_0000.nii.gz", "upper/lower case", "keep one")


def _case_ids_differ_in_case(root):
    shutil.copy(img(root, 0), root / "imagesTr" / "TOY_000_0000.nii.gz")
    label = root / "labelsTr" / "TOY_000.nii.gz"
    shutil.copy(lab(root, 0), label)
    edit_json(root, numTraining=4)
    return label, ("toy_000.nii.gz", "upper/lower case")


@pytest.mark.parametrize("breaker", [_same_name_other_case, _case_ids_differ_in_case],
                         ids=["file_names_differ_in_case", "case_ids_differ_in_case"])
def test_plan_reports_names_that_differ_only_in_case(breaker, _pristine, tmp_path, capsys):
    _plan_refused(_pristine["ct"], tmp_path, breaker, capsys)


def test_predict_reports_case_ids_that_differ_only_in_case(model_ws, tmp_path, capsys):
    write_nifti(tmp_path / "in" / "Good_0000.nii.gz", blob_image(seed=1))
    out = tmp_path / "out"
    code, text = _predict(model_ws, tmp_path / "in", out, capsys)
    assert code == cli.EXIT_FAILURE, text
    assert "failed: Good:" in text and "failed: good:" in text, text
    assert "good_0000.nii.gz" in text and "Good_0000.nii.gz" in text and "upper/lower case" in text, text
    assert not list(out.glob("*.nii.gz")) if out.exists() else True


# --- NIfTI headers whose pixdim, qform and sform disagree -----------------------------------------------

def _sform_scaled(root):
    p = lab(root, 1)
    old = nib.load(str(p))
    new = nib.Nifti1Image(np.asanyarray(old.dataobj), old.affine)
    scaled = old.affine.copy()
    scaled[:3, :3] *= 2
    new.set_qform(old.affine, code=1)
    new.set_sform(scaled, code=1)
    nib.save(new, str(p))
    return p, ("qform and sform", "spacing", "re-export")


def _pixdim_zero(root):
    p = img(root, 1)
    patch_pixdim(p, (0.0, 0.0, 0.0))
    return p, ("pixdim", "zero", "re-export")


def _pixdim_not_the_sform(root):
    p = img(root, 1)
    old = nib.load(str(p))
    new = nib.Nifti1Image(np.asanyarray(old.dataobj), old.affine)
    new.set_qform(None, code=0)  # the sform alone places the volume
    nib.save(new, str(p))
    patch_pixdim(p, [1.5 * z for z in old.header.get_zooms()[:3]])
    return p, ("pixdim", "sform", "fix the other")


HEADER_CASES = {"label_sform_scaled_2x": _sform_scaled, "pixdim_zero": _pixdim_zero,
                "pixdim_disagrees_with_sform": _pixdim_not_the_sform}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_plan_refuses_inconsistent_nifti_headers(case, _pristine, tmp_path, capsys):
    _plan_refused(_pristine["ct"], tmp_path, HEADER_CASES[case], capsys)


def test_predict_refuses_an_input_whose_pixdim_disagrees_with_its_sform(model_ws, tmp_path, capsys):
    bad = write_nifti(tmp_path / "in" / "bad_0000.nii.gz", blob_image(seed=4))
    zooms = nib.load(str(bad)).header.get_zooms()[:3]
    patch_pixdim(bad, [1.5 * z for z in zooms])
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys)
    assert code == cli.EXIT_FAILURE, text
    assert "failed: bad:" in text and "bad_0000.nii.gz" in text and "re-export" in text, text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]


# --- odd inputs and file-system errors: a message with the path and the fix -------------------------------

def _dangling_link(root):
    link = root / "imagesTr" / "toy_003_0000.nii.gz"
    os.symlink(root / "nowhere.nii.gz", link)
    shutil.copy(lab(root, 0), root / "labelsTr" / "toy_003.nii.gz")
    edit_json(root, numTraining=4)
    other = lab(root, 1)  # a second problem: the report must still list every problem
    data = np.asanyarray(nib.load(str(other)).dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, nib.load(str(other)).affine), str(other))
    return link, ("broken symbolic link", "fix the link", str(other), "[9]")


def _file_ending_mismatch(root):
    path = edit_json(root, file_ending=".nrrd")
    return path.parent / "imagesTr", ('set "file_ending": ".nii.gz"',)


def _folder_in_images(root):
    folder = root / "imagesTr" / "toy_003_0000.nii.gz"
    folder.mkdir()
    return folder, ("is a folder", "move it out")


ODD_CASES = {"dangling_symlink": _dangling_link, "file_ending_mismatch": _file_ending_mismatch,
             "folder_in_imagesTr": _folder_in_images}


@pytest.mark.parametrize("case", list(ODD_CASES))
def test_plan_reports_odd_entries_among_all_problems(case, _pristine, tmp_path, capsys):
    text = _plan_refused(_pristine["ct"], tmp_path, ODD_CASES[case], capsys)
    assert "Errno" not in text and "stray file" not in text, text


def test_predict_reports_a_dangling_symlink_among_its_inputs(model_ws, tmp_path, capsys):
    link = tmp_path / "in" / "gone_0000.nii.gz"
    os.symlink(tmp_path / "nowhere.nii.gz", link)
    code, text = _predict(model_ws, tmp_path / "in", tmp_path / "out", capsys)
    assert code == cli.EXIT_FAILURE, text
    assert f"failed: gone: case 'gone': {link}: broken symbolic link" in text, text
    assert (tmp_path / "out" / "good.nii.gz").is_file()


def test_dataset_json_with_a_byte_order_mark_is_read(_pristine, tmp_path, capsys):
    root = Path(shutil.copytree(_pristine["ct"], tmp_path / NAME))
    path = root / "dataset.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, text = run(["plan", root, "--check-only", "--workdir", tmp_path / "w", "--no-progress", "-j", "1"], capsys)
    assert code == cli.EXIT_OK, text


def _plan_into_a_closed_pipe(pristine: Path, work: Path, stderr, *options) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(cli.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "autoseg", "plan", str(pristine), "--workdir", str(work),
                             "-j", "1", *options], stdout=subprocess.PIPE, stderr=stderr, env=env)
    proc.stdout.close()  # like `head` exiting: every write to it now fails with EPIPE
    return proc


def test_a_closed_output_pipe_ends_quietly_after_the_work(_pristine, tmp_path):
    """`autoseg plan ... | head`: the reader is gone before anything is printed."""
    proc = _plan_into_a_closed_pipe(_pristine["ct"], tmp_path / "w", subprocess.PIPE, "--no-progress")
    err = proc.stderr.read().decode()
    assert proc.wait() == cli.EXIT_OK, err
    assert "Broken pipe" not in err and "BrokenPipeError" not in err and "Traceback" not in err, err
    assert (tmp_path / "w" / "preprocessed" / NAME / "plans.json").is_file()


def test_closed_output_and_error_pipes_with_progress_bars(_pristine, tmp_path):
    """`autoseg plan ... 2>&1 | head`: progress bars and messages on stderr go nowhere, the work finishes."""
    proc = _plan_into_a_closed_pipe(_pristine["ct"], tmp_path / "w", subprocess.STDOUT)
    assert proc.wait() == cli.EXIT_OK
    assert (tmp_path / "w" / "preprocessed" / NAME / "plans.json").is_file()


@pytest.mark.parametrize("argv, option", [
    (["demo-data", "{tmp}", "--cases", "0"], "--cases"),
    (["demo-data", "{tmp}", "--test-cases", "-1"], "--test-cases"),
    (["demo-data", "{tmp}", "--channels", "2"], "--modality MR"),
], ids=["cases", "test_cases", "channels_for_ct"])
def test_messages_name_command_line_options(argv, option, tmp_path, capsys):
    code, text = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == cli.EXIT_INPUT, text
    assert option in text and "n_cases" not in text and "n_test" not in text and "modality=" not in text, text


def test_existing_output_messages_name_the_overwrite_option(tmp_path, capsys):
    from test_msd import make_msd_task

    assert run(["demo-data", tmp_path / "raw", "--cases", "1"], capsys)[0] == cli.EXIT_OK
    code, text = run(["demo-data", tmp_path / "raw", "--cases", "1"], capsys)
    assert code == cli.EXIT_INPUT and "--overwrite" in text and "overwrite=True" not in text, text
    task = make_msd_task(tmp_path / "msd")
    assert run(["convert-msd", task, tmp_path / "raw"], capsys)[0] == cli.EXIT_OK
    code, text = run(["convert-msd", task, tmp_path / "raw"], capsys)
    assert code == cli.EXIT_INPUT and "--overwrite" in text and "overwrite=True" not in text, text


def test_train_settings_are_named_as_options(_planned, tmp_path, capsys):
    code, text = run(["train", NAME, "--workdir", _planned, "--epochs", "0", "--iters-per-epoch", "0",
                      "--no-progress", "--device", "cpu"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert "--epochs must be at least 1" in text and "--iters-per-epoch" in text, text
    assert "iters_per_epoch" not in text


def test_evaluate_refuses_references_whose_names_differ_only_in_case(_pristine, tmp_path, capsys):
    gt = Path(shutil.copytree(_pristine["ct"] / "labelsTr", tmp_path / "gt"))
    twin = gt / "toy_000.NII.GZ"
    shutil.copy(lab(_pristine["ct"], 1), twin)
    code, text = run(["evaluate", gt, _pristine["ct"] / "labelsTr", "-d", _pristine["ct"], "-o", tmp_path / "ev",
                      "-j", "1", "--no-progress"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert "toy_000.nii.gz" in text and "toy_000.NII.GZ" in text and "upper/lower case" in text, text
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_ensemble_refuses_two_files_for_one_case(model_ws, tmp_path, capsys):
    for name in ("a", "b"):
        code, text = _predict(model_ws, tmp_path / "in", tmp_path / name, capsys, "--save-probabilities")
        assert code == cli.EXIT_OK, text
    twin = tmp_path / "a" / "GOOD.npz"
    shutil.copy(tmp_path / "a" / "good.npz", twin)
    code, text = run(["ensemble", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "ens", "--no-progress"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert "good.npz" in text and "GOOD.npz" in text and "upper/lower case" in text, text
    assert not (tmp_path / "ens" / "good.nii.gz").exists()


@pytest.mark.parametrize("err, words", [
    (IsADirectoryError(21, "Is a directory", "/data/out/case.nii.gz"), ("is a folder where a file is expected",)),
    (NotADirectoryError(20, "Not a directory", "/data/file/sub"), ("a file stands where a folder is needed",)),
    (FileNotFoundError(2, "No such file or directory", "/data/gone.nii.gz"), ("not found", "check the path")),
    (OSError(40, "Too many levels of symbolic links", "/data/loop"), ("symbolic link loop", "fix or remove")),
    (OSError(36, "File name too long", "/data/" + "x" * 300), ("file name too long", "shorter name")),
], ids=["is_a_directory", "not_a_directory", "not_found", "link_loop", "name_too_long"])
def test_every_file_system_error_names_the_path_and_the_fix(err, words, monkeypatch, tmp_path, capsys):
    """Errors raised by a write deep inside a command (here: the toy writer) reach the user as one line."""
    import autoseg.toy

    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr(autoseg.toy, "_write_case", fail)
    code, text = run(["demo-data", tmp_path / "raw", "--cases", "1"], capsys)
    assert code == cli.EXIT_INPUT, text
    assert err.filename in text and all(w in text for w in words), text
    assert_clean(text)


def test_a_folder_where_an_input_file_is_expected(_pristine, tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    for argv in (["show", folder], ["import", folder, "--workdir", tmp_path / "ws"],
                 ["ensemble", tmp_path, tmp_path, "-o", tmp_path / "ens", "--postprocessing", folder]):
        code, text = run(argv, capsys)
        assert code == cli.EXIT_INPUT, text
        assert f"{folder}: is a folder" in text, text
        assert_clean(text)
