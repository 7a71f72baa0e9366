"""`autoseg predict / ensemble / export / import / find-best` from the command line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from autoseg.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, main

from .conftest import DATASET, MODEL_NAME, blob_image, save_fold, tiny_plans, write_nifti

FAST = ["--no-tta", "--no-progress", "--device", "cpu", "--backend", "torch"]


def _setup(tmp_path, n_cases=3):
    ws = tmp_path / "ws"
    for fold in (0, 1):
        save_fold(ws / "results" / DATASET / MODEL_NAME, fold, tiny_plans(spacing=(1.5, 1.5, 2.0)), seed=fold)
    for i in range(n_cases):
        write_nifti(tmp_path / "in" / f"c{i}_0000.nii.gz", blob_image(seed=i))
    return ws


def _seg(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_predict_without_dataset_reports_a_broken_case_in_the_exit_code(tmp_path, capsys):
    ws = _setup(tmp_path)
    (tmp_path / "in" / "c1_0000.nii.gz").write_bytes(b"garbage")
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workdir", str(ws), *FAST])
    captured = capsys.readouterr()
    assert code == EXIT_FAILURE
    assert "2 written" in captured.out and "1 failed" in captured.out
    assert "failed: c1:" in captured.err and "c1_0000.nii.gz" in captured.err
    assert (tmp_path / "out" / "c0.nii.gz").is_file() and (tmp_path / "out" / "c2.nii.gz").is_file()


def test_export_import_and_predict_with_the_zip(tmp_path, capsys):
    ws = _setup(tmp_path, n_cases=1)
    zip_path = tmp_path / "model.zip"
    assert main(["export", DATASET, "-o", str(zip_path), "--workdir", str(ws)]) == EXIT_OK
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "a"), "-d", "901",
                 "--workdir", str(ws), *FAST]) == EXIT_OK
    other = tmp_path / "other"
    for _ in range(2):  # the second run finds the model installed by the first
        assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "b"), "--model", str(zip_path),
                     "--workdir", str(other), "--overwrite", *FAST]) == EXIT_OK
    np.testing.assert_array_equal(_seg(tmp_path / "a" / "c0.nii.gz"), _seg(tmp_path / "b" / "c0.nii.gz"))
    assert main(["import", str(zip_path), "--workdir", str(other)]) == EXIT_INPUT  # installed already
    assert "--overwrite" in capsys.readouterr().err
    assert main(["import", str(zip_path), "--workdir", str(other), "--overwrite"]) == EXIT_OK


def test_ensemble_of_two_fold_predictions(tmp_path):
    ws = _setup(tmp_path, n_cases=1)
    for fold in ("0", "1"):
        assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / fold), "--folds", fold,
                     "--save-probabilities", "--workdir", str(ws), *FAST]) == EXIT_OK
    assert main(["ensemble", str(tmp_path / "0"), str(tmp_path / "1"), "-o", str(tmp_path / "ens"),
                 "--no-progress"]) == EXIT_OK
    assert _seg(tmp_path / "ens" / "c0.nii.gz").shape == (20, 18, 10)


def test_clear_errors_without_a_trained_model(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--workdir", str(tmp_path / "empty")]) == EXIT_INPUT
    assert "autoseg train" in capsys.readouterr().err
    assert main(["find-best", "--workdir", str(tmp_path / "empty")]) == EXIT_INPUT


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_predict_runs_bf16_by_default_only_on_cpus_with_native_bf16(tmp_path, capsys, monkeypatch, native, backend):
    """`--precision auto` (the default) on the CPU: bf16 where the CPU computes it natively, f32
    elsewhere; the command's last line names what ran."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    monkeypatch.setattr("autoseg.inference.backends.cpu_supports_bf16", lambda: native)
    ws = _setup(tmp_path, n_cases=1)
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workdir", str(ws),
                 "--no-tta", "--no-progress", "--device", "cpu", "--backend", backend])
    out = capsys.readouterr().out
    assert code == EXIT_OK and (tmp_path / "out" / "c0.nii.gz").is_file()
    assert f"with {backend} {'bf16' if native else 'fp32'} on cpu" in out, out
