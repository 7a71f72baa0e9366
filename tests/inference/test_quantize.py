"""`autoseg quantize`: int8 networks calibrated on training patches, checked against f32, used by predict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg import api
from autoseg.inference.choice import ModelChoice, PredictOptions
from autoseg.training.session import TrainRequest
from autoseg.cli import EXIT_INPUT, EXIT_OK, main
from autoseg.core.checkpoint import FINAL, load_checkpoint, save_checkpoint, weights_digest
from autoseg.dataset import DatasetSpec
from autoseg.inference.backends import BackendError
from autoseg.inference.conversion import QUANTIZATION_FILE, QuantizeError
from autoseg.inference.predictor import load_predictor
from autoseg.inference.quantize import calibration_patches, check_against_f32, quantize_network
from tiny import tw

from .conftest import PointwiseNet

pytest.importorskip("openvino")
pytest.importorskip("nncf")


FAST_PREDICT = dict(tta=False, device="cpu", progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny planned workspace with fold 0 trained for a few iterations (2 training, 2 validation cases)."""
    ws = tw.make_workspace(tmp_path_factory.mktemp("ws"))
    run = api.train(ws, TrainRequest(settings=dict(tw.FAST, iters_per_epoch=40)), progress=False)[0]
    return ws, run


@pytest.fixture(scope="module")
def quantized(trained, tmp_path_factory):
    """A copy of the trained workspace, quantized through the command line."""
    ws, _ = trained
    root = tmp_path_factory.mktemp("q") / "ws"
    shutil.copytree(ws.root, root)
    # a generous tolerance: the tiny model's int8 Dice differs by ~0.004 here, and int8 kernels differ by CPU
    code = main(["quantize", "--workdir", str(root), "--patches", "6", "--check-cases", "2", "--tolerance", "0.05"])
    return type(ws)(root), code


def _fold_dir(ws) -> Path:
    return ws.results_dir(tw.DATASET) / "unet__autosegPlans__3d_fullres" / "fold_0"


def test_calibration_patches_are_seeded_and_shaped_like_the_network_input(trained):
    ws, _ = trained
    folder = ws.preprocessed_dir(tw.DATASET) / "autosegPlans_3d_fullres"
    a = calibration_patches(folder, ["case_000", "case_001"], (8, 8, 8), 5, seed=1)
    b = calibration_patches(folder, ["case_000", "case_001"], (8, 8, 8), 5, seed=1)
    c = calibration_patches(folder, ["case_000", "case_001"], (8, 8, 8), 5, seed=2)
    assert len(a) == 5 and all(p.shape == (1, 1, 8, 8, 8) and p.dtype == np.float32 for p in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    flat = calibration_patches(folder, ["case_000"], (8, 8), 2, seed=0)  # a 2D network's input
    assert flat[0].shape == (1, 1, 8, 8)
    with pytest.raises(QuantizeError, match="no training cases"):
        calibration_patches(folder, [], (8, 8, 8), 2, seed=0)


def test_the_check_compares_dice_per_class_and_fails_beyond_the_tolerance(trained):
    ws, _ = trained
    pre = ws.preprocessed_dir(tw.DATASET)
    folder, spec = pre / "autosegPlans_3d_fullres", DatasetSpec.load(pre)
    config = tw.tiny_plan()
    good = PointwiseNet((4.0, -4.0, 2.0, -1.0))  # bright (x~2) -> 1, dim (x~1) -> 2, background (x~0) -> 0
    blind = PointwiseNet((4.0, -4.0, -10.0, -10.0))  # never predicts the dim class
    same = check_against_f32(good, good, folder, ["case_002", "case_003"], config, spec, tolerance=0.005)
    assert same["passed"] and same["max_dice_drop"] == 0.0 and same["voxel_agreement"] == 1.0
    assert same["dice_fp32"]["bright"] > 0.8 and same["dice_fp32"]["dim"] > 0.2  # dim overlaps the noise
    worse = check_against_f32(good, blind, folder, ["case_002", "case_003"], config, spec, tolerance=0.005)
    assert worse["dice_fp32"] == same["dice_fp32"] and worse["dice_int8"]["dim"] == 0.0
    drops = [worse["dice_fp32"][c] - worse["dice_int8"][c] for c in ("bright", "dim")]
    assert worse["max_dice_drop"] == pytest.approx(max(drops)) and max(drops) >= same["dice_fp32"]["dim"]
    assert not worse["passed"]
    assert check_against_f32(good, blind, folder, ["case_002"], config, spec, tolerance=1.0)["passed"]
    assert worse["voxel_agreement"] < 1.0


def test_quantize_writes_a_checked_int8_network_per_fold(trained, quantized):
    ws, code = quantized
    assert code == EXIT_OK
    fold = _fold_dir(ws)
    record = json.loads((fold / QUANTIZATION_FILE).read_text())["checkpoints"][FINAL]
    net = load_predictor(fold.parent).networks[0]
    assert record["weights_sha256"] == weights_digest(net) and record["input_shape"] == [1, 1, 16, 16, 16]
    splits = json.loads((ws.preprocessed_dir(tw.DATASET) / "splits.json").read_text())
    assert record["check"]["cases"] == list(splits["folds"][0]["val"])[:2] and record["check"]["passed"]
    assert record["calibration"]["patches"] == 6 and record["check_cases"] == "validation"
    assert record["check"]["tolerance"] == 0.05 and record["check"]["voxel_agreement"] > 0.95
    assert (fold / record["model"]).is_file() and (fold / record["model"]).with_suffix(".bin").is_file()


def _predict(ws, out: Path, precision: str):
    return api.predict(ws, ws.raw / tw.DATASET / "imagesTr", out, options=PredictOptions(precision=precision, **FAST_PREDICT))


def _labels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))])


def test_predict_runs_int8_when_asked_and_by_default_once_it_passed(quantized, tmp_path):
    ws, _ = quantized
    int8, auto, f32 = (_predict(ws, tmp_path / p, p) for p in ("int8", "auto", "fp32"))
    assert (int8.engine, auto.engine, f32.engine) == ("openvino int8 on cpu", "openvino int8 on cpu",
                                                      "openvino fp32 on cpu")
    assert int8.ok and len(int8.written) == 4
    np.testing.assert_array_equal(_labels(tmp_path / "int8"), _labels(tmp_path / "auto"))
    assert (_labels(tmp_path / "int8") == _labels(tmp_path / "fp32")).mean() > 0.95


def test_other_weights_or_a_failed_check_keep_f32(quantized, tmp_path, monkeypatch):
    monkeypatch.setattr("autoseg.inference.backends.cpu_has_bf16", lambda: False)  # auto: f32, not bf16
    src, _ = quantized
    root = tmp_path / "ws"
    shutil.copytree(src.root, root)
    ws = type(src)(root)
    fold = _fold_dir(ws)
    record_file = fold / QUANTIZATION_FILE
    doc = json.loads(record_file.read_text())
    doc["checkpoints"][FINAL]["check"]["passed"] = False
    record_file.write_text(json.dumps(doc))
    assert _predict(ws, tmp_path / "a", "auto").engine == "openvino fp32 on cpu"
    with pytest.raises(BackendError, match="failed its check"):
        _predict(ws, tmp_path / "b", "int8")
    doc["checkpoints"][FINAL]["check"]["passed"] = True
    record_file.write_text(json.dumps(doc))
    ckpt = load_checkpoint(fold / FINAL)  # retrained: other weights under the same name
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(ckpt, fold / FINAL)
    assert _predict(ws, tmp_path / "c", "auto").engine == "openvino fp32 on cpu"
    with pytest.raises(BackendError, match="other weights"):
        _predict(ws, tmp_path / "d", "int8")
    record_file.write_text("{not json")
    with pytest.raises(BackendError, match="unreadable"):
        _predict(ws, tmp_path / "e", "int8")


def test_int8_without_a_quantized_network_says_how_to_make_one(trained, tmp_path):
    ws, _ = trained
    with pytest.raises(BackendError, match="autoseg quantize"):
        _predict(ws, tmp_path / "out", "int8")
    with pytest.raises(BackendError, match="--backend openvino"):
        api.predict(ws, ws.raw / tw.DATASET / "imagesTr", tmp_path / "t",
                    options=PredictOptions(precision="int8", backend="torch", **FAST_PREDICT))


def test_export_carries_the_int8_network_to_another_machine(quantized, tmp_path):
    ws, _ = quantized
    zip_path = tmp_path / "model.zip"
    assert main(["export", tw.DATASET, "-o", str(zip_path), "--workdir", str(ws.root)]) == EXIT_OK
    other = type(ws)(tmp_path / "other")
    report = api.predict(other, ws.raw / tw.DATASET / "imagesTr", tmp_path / "b", ModelChoice(model=zip_path),
                         PredictOptions(precision="int8", **FAST_PREDICT))
    assert report.engine == "openvino int8 on cpu"
    _predict(ws, tmp_path / "a", "int8")
    np.testing.assert_array_equal(_labels(tmp_path / "a"), _labels(tmp_path / "b"))


def test_quantize_needs_the_planned_data_the_model_was_trained_on(trained, tmp_path, capsys):
    ws, _ = trained
    zip_path = tmp_path / "model.zip"
    assert main(["export", tw.DATASET, "-o", str(zip_path), "--workdir", str(ws.root)]) == EXIT_OK
    other = tmp_path / "other"
    assert main(["import", str(zip_path), "--workdir", str(other)]) == EXIT_OK
    assert main(["quantize", "--workdir", str(other)]) == EXIT_INPUT
    assert "autoseg plan" in capsys.readouterr().err
    assert main(["quantize", "--workdir", str(ws.root), "--patches", "0"]) == EXIT_INPUT
    assert "calibration patch" in capsys.readouterr().err


def test_without_nncf_quantize_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf raises ImportError
    with pytest.raises(QuantizeError, match="pip install"):
        quantize_network(object(), [np.zeros((1, 1, 4, 4, 4), np.float32)])


def test_weights_digest_depends_on_values_only():
    a, b = PointwiseNet(), PointwiseNet()
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.conv.bias[0] = 1e-6
    assert weights_digest(a) != weights_digest(b)


def test_openvino_and_nncf_send_no_usage_statistics(tmp_path):
    # Both send statistics by default when the user's home holds no consent file; autoseg switches
    # them off around conversion and quantization (they decide once per process: a fresh one here).
    script = (
        "import numpy as np, torch\n"
        "from autoseg.inference.conversion import convert_to_openvino\n"
        "from autoseg.inference.quantize import quantize_network\n"
        "model = convert_to_openvino(torch.nn.Conv3d(1, 2, 3, padding=1), (1, 1, 8, 8, 8))\n"
        "quantize_network(model, [np.random.default_rng(0).normal(size=(1, 1, 8, 8, 8)).astype(np.float32)])\n"
        "import os, openvino_telemetry, nncf.telemetry.wrapper as w\n"
        "stub = isinstance(w.telemetry, w.NNCFTelemetryStub)\n"
        "print(openvino_telemetry.Telemetry().consent, stub, os.environ.get('CI'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI", "NNCF_DEV")}
    env["HOME"] = str(tmp_path)  # exists, holds no consent file: OpenVINO's converter would send (checked)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["False", "True", "None"]  # and the environment restored


def test_a_2d_model_is_quantized_slice_by_slice(tmp_path):
    ws = tw.make_workspace(tmp_path, extra_plans=(tw.tiny_plan(patch=(16, 16), name="2d", batch_size=4),))
    api.train(ws, TrainRequest(config="2d", settings=dict(tw.FAST, iters_per_epoch=20)), progress=False)
    [result] = api.quantize(ws, ModelChoice(config="2d"), patches=4, check_cases=1, tolerance=1.0)
    assert result.record["input_shape"] == [1, 1, 16, 16] and result.record["check"]["passed"]
    report = api.predict(ws, ws.raw / tw.DATASET / "imagesTr", tmp_path / "out", ModelChoice(config="2d"),
                         PredictOptions(precision="int8", **FAST_PREDICT))
    assert report.ok and report.engine == "openvino int8 on cpu" and len(report.written) == 4


def test_folds_linked_to_a_quantized_checkpoint_share_its_int8_network(quantized, tmp_path):
    ws, _ = quantized
    linked = tmp_path / "results" / tw.DATASET / "unet__autosegPlans__3d_fullres"
    for fold in (0, 1):
        (linked / f"fold_{fold}").mkdir(parents=True)
        (linked / f"fold_{fold}" / FINAL).symlink_to(_fold_dir(ws) / FINAL)
    report = api.predict(type(ws)(tmp_path), ws.raw / tw.DATASET / "imagesTr", tmp_path / "out",
                         ModelChoice(model=linked), PredictOptions(**FAST_PREDICT))
    assert report.ok and report.engine == "openvino int8 on cpu"


def test_weights_digest_takes_zero_dim_tensors_and_keeps_the_bytes_of_the_others():
    import hashlib

    from autoseg.core.checkpoint import state_digest

    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    h = hashlib.sha256()
    h.update(b"w|torch.float32|(2, 3)|" + w.numpy().tobytes())
    assert state_digest({"w": w}) == h.hexdigest()  # unchanged for every tensor with a dimension
    with_count = state_digest({"w": w, "bn.num_batches_tracked": torch.tensor(3)})
    assert with_count != state_digest({"w": w, "bn.num_batches_tracked": torch.tensor(4)})
