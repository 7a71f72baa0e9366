"""Predicting with a cascade model runs both stages; find-best ranks the cascade with the others.

A tiny workspace (5 cases of 16^3, 2-stage networks) with the low-res stage and the cascade trained on
all five folds (one epoch each); the slow test goes through the command line from `autoseg plan` on."""

from __future__ import annotations

import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg import api
from autoseg.inference import pipeline
from autoseg.inference.choice import ModelChoice, PredictOptions
from autoseg.inference.predictor import PredictorError, load_predictor
from autoseg.training.session import TrainRequest, train
from tiny import tw

LOW, CASCADE = "3d_lowres", "3d_cascade_fullres"
FOLDS = (0, 1, 2, 3, 4)
OPTIONS = PredictOptions(tta=False, device="cpu", backend="torch", progress=False)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    full = tw.tiny_plan(features=(4, 8))
    extra = (tw.tiny_plan(features=(4, 8), name=LOW),
             replace(tw.tiny_plan(features=(4, 8), name=CASCADE), previous_stage=LOW))
    ws = tw.make_workspace(tmp_path_factory.mktemp("cascade_predict"), n_cases=5, plan=full, extra_plans=extra)
    settings = {**tw.FAST, "save_probabilities": True}
    for config in (LOW, CASCADE):
        train(ws, TrainRequest(tw.DATASET, FOLDS, config, settings=settings), progress=False)
    return ws


def _inputs(ws, tmp_path, cases=("case_000", "case_003")) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for c in cases:
        shutil.copy(ws.raw / tw.DATASET / "imagesTr" / f"{c}_0000.nii.gz", folder)
    return folder


def test_predict_runs_the_lowres_stage_then_the_cascade_in_the_input_geometry(ws, tmp_path, monkeypatch):
    seen = []
    real = pipeline.previous_stage_labels

    def spy(prepared, model, engine, step, tta):
        labels = real(prepared, model, engine, step, tta)
        seen.append((model.previous.config.name, len(model.previous.folds), labels.shape))
        return labels

    monkeypatch.setattr(pipeline, "previous_stage_labels", spy)
    report = api.predict(ws, _inputs(ws, tmp_path), tmp_path / "out", ModelChoice(tw.DATASET, config=CASCADE),
                         OPTIONS)
    assert report.ok and report.written == ("case_000", "case_003")
    assert seen == [(LOW, 5, (16, 16, 16))] * 2  # the low-res model's five folds, on the cascade's grid
    for case in report.written:
        out = nib.load(tmp_path / "out" / f"{case}.nii.gz")
        source = nib.load(ws.raw / tw.DATASET / "imagesTr" / f"{case}_0000.nii.gz")
        assert out.shape == source.shape and np.allclose(out.affine, source.affine)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}


def test_a_cascade_predictor_feeds_its_networks_image_and_one_hot_channels(ws):
    model = load_predictor(ws.model_dir(tw.DATASET, "unet", "autosegPlans", CASCADE))
    assert model.previous is not None and model.previous.config.name == LOW and model.num_channels == 3
    assert model.networks[0].state_dict()  # builds with 3 input channels (else the weights would not load)
    assert "after" in model.describe() and LOW in model.describe()
    assert load_predictor(ws.model_dir(tw.DATASET, "unet", "autosegPlans", LOW)).previous is None


def test_predict_refuses_a_cascade_whose_lowres_model_is_missing(ws, tmp_path):
    low = ws.model_dir(tw.DATASET, "unet", "autosegPlans", LOW)
    away = tmp_path / "away"
    low.rename(away)
    try:
        with pytest.raises(PredictorError, match=rf"'{LOW}' stage's segmentation, and that model .* is missing; "
                                                 rf"train it with `autoseg train {tw.DATASET} --config {LOW} "
                                                 r"--fold 0 1 2 3 4"):
            api.predict(ws, _inputs(ws, tmp_path), tmp_path / "out", ModelChoice(tw.DATASET, config=CASCADE),
                        OPTIONS)
    finally:
        away.rename(low)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_find_best_ranks_the_cascade_and_ensembles_it(ws):
    result = api.find_best(ws, tw.DATASET, progress=False)
    names = [c.name for c in result.candidates]
    cascade = f"unet__autosegPlans__{CASCADE}"
    assert cascade in names and f"unet__autosegPlans__{LOW}" in names
    assert any(len(c.members) == 2 and cascade in c.members for c in result.candidates)
    saved = json.loads((ws.results_dir(tw.DATASET) / "find_best.json").read_text())
    assert cascade in json.dumps(saved["candidates"])


def test_postprocessing_is_decided_for_the_cascade_and_predict_applies_it(ws, tmp_path):
    path = api.postprocess(ws, tw.DATASET, config=CASCADE, progress=False)
    assert path.parent == ws.model_dir(tw.DATASET, "unet", "autosegPlans", CASCADE)
    model = load_predictor(path.parent)
    assert model.postprocessing is not None and model.previous is not None


def test_openvino_runs_both_stages_with_the_labels_of_torch(ws, tmp_path):
    pytest.importorskip("openvino")
    inputs = _inputs(ws, tmp_path, ("case_001",))
    choice = ModelChoice(tw.DATASET, config=CASCADE)
    f32 = replace(OPTIONS, precision="fp32")  # auto is bf16 on CPUs with native bf16, rounded differently per backend
    torch_report = api.predict(ws, inputs, tmp_path / "torch", choice, f32)
    ov_report = api.predict(ws, inputs, tmp_path / "ov", choice, replace(f32, backend="openvino"))
    assert torch_report.ok and ov_report.ok and ov_report.engine.startswith("openvino")
    a = np.asarray(nib.load(tmp_path / "torch" / "case_001.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "ov" / "case_001.nii.gz").dataobj)
    assert (a != b).mean() < 0.01  # f32 on both; rounding may flip a rare tie


def test_quantize_refuses_a_cascade_stage(ws):
    from autoseg.inference.quantize import QuantizeError

    with pytest.raises(QuantizeError, match="cascade stage .* cannot be quantized"):
        api.quantize(ws, ModelChoice(tw.DATASET, config=CASCADE))


def cli(args: list[str]) -> tuple[int, str, str]:
    """``autoseg ARGS`` in this process: (exit code, stdout, stderr)."""
    from autoseg.cli import main

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_plan_train_both_stages_and_predict_through_the_command_line(tmp_path):
    """From a raw dataset whose images are large for the planned patch: `plan` plans the cascade, the
    commands run in the documented order, predictions come back in the input geometry."""
    from autoseg.toy import make_toy_dataset

    raw = make_toy_dataset(tmp_path / "raw", n_cases=5, shape=(24, 24, 24), seed=0, name="Dataset996_Casc")
    preset = tmp_path / "tiny.toml"
    preset.write_text("base_features = 4\nmax_features_3d = 8\nmax_features_2d = 8\nreference_estimate_3d = 2e4\n"
                      "reference_estimate_2d = 2e4\n")
    work = ["--workdir", str(tmp_path / "w")]
    fast = ["--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", "--num-workers", "0", "--device", "cpu",
            "--amp", "fp32", "--no-progress"]
    code, out, err = cli(["plan", str(raw), *work, "--planner", str(preset), "-j", "1", "--no-progress"])
    assert code == 0 and "3d_cascade_fullres" in out, err
    code, out, err = cli(["train", raw.name, *work, "--config", CASCADE, *fast])
    assert code != 0 and f"autoseg train {raw.name} --config {LOW} --fold 0 1 2 3 4`" in err
    assert not (tmp_path / "w" / "results").exists()
    code, out, err = cli(["train", raw.name, *work, "--config", LOW, "--fold", "0", "1", "2", "3", "4", *fast])
    assert code == 0, err
    code, out, err = cli(["train", raw.name, *work, "--config", CASCADE, *fast])
    assert code == 0, err
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(raw / "imagesTr" / "toy_001_0000.nii.gz", inputs)
    code, out, err = cli(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), *work, "-d", raw.name,
                          "--config", CASCADE, "--no-tta", "--device", "cpu", "--no-progress"])
    assert code == 0, err
    pred, source = nib.load(tmp_path / "out" / "toy_001.nii.gz"), nib.load(inputs / "toy_001_0000.nii.gz")
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
