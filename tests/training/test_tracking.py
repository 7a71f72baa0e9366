"""`train --logger tensorboard` (the real tensorboard package reads the event files back) and the warning
when a long schedule starts on the CPU."""

from __future__ import annotations

import io
import json
import types

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from autoseg.cli import main
from autoseg.training.tracking import TENSORBOARD_DIR, CpuScheduleWarning, epoch_scalars, schedule_estimate
from autoseg.training.trainer import TrainSettings, TrainState
from tiny_workspace import DATASET, make_workspace


def test_train_with_tensorboard_logs_scalars_settings_and_plot(tmp_path, capsys):
    ws = make_workspace(tmp_path / "ws")
    code = main(["train", DATASET, "--workdir", str(ws.root), "--no-progress", "--epochs", "2", "--iters-per-epoch",
                 "2", "--val-iters", "1", "--num-workers", "0", "--device", "cpu", "--logger", "tensorboard"])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = (ws.root / "results" / DATASET).glob("*/fold_0")
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "val/loss", "train/lr", "val/pseudo_dice/1", "val/pseudo_dice/2"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    log = [line for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert abs(events.Scalars("train/loss")[1].value - json.loads(log[1])["train_loss"]) < 1e-6
    assert "progress" in tags["images"] and len(events.Images("progress")) == 2
    assert "settings/text_summary" in tags["tensors"]


def test_no_tensorboard_folder_without_logger(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    assert main(["train", DATASET, "--workdir", str(ws.root), "--no-progress", "--epochs", "1", "--iters-per-epoch",
                 "1", "--val-iters", "1", "--num-workers", "0", "--device", "cpu"]) == 0
    (run_dir,) = (ws.root / "results" / DATASET).glob("*/fold_0")
    assert not (run_dir / TENSORBOARD_DIR).exists()


def test_epoch_scalars_leave_out_nan_and_flags():
    record = {"epoch": 3, "train_loss": 0.5, "val_loss": float("nan"), "pseudo_dice": [0.25, float("nan")],
              "lr": 0.01, "improved": True}
    assert epoch_scalars(record) == {"train/loss": 0.5, "train/lr": 0.01, "val/pseudo_dice/1": 0.25}


def _run(epochs, device="cpu", done=0, time_budget=None):
    return types.SimpleNamespace(device=torch.device(device), settings=TrainSettings(epochs=epochs,
                                                                                     time_budget=time_budget),
                                 state=TrainState(epoch=done))


def test_cpu_warning_gives_the_estimate_and_the_flags(monkeypatch):
    clock = iter([100.0, 110.0])  # 5 timed steps in 10 s: 2 s per step
    monkeypatch.setattr("autoseg.training.tracking.time.perf_counter", lambda: next(clock))
    stream = io.StringIO()
    cb = CpuScheduleWarning(stream)
    run = _run(1000)
    cb.on_train_start(run)
    for step in range(7):
        cb.on_batch_end(run, 0, step, None)
    text = stream.getvalue()
    hours = schedule_estimate(2.0, 1000 * 250 - 5)
    assert "2.00 s per step" in text and f"about {hours:.0f} h" in text and "--epochs" in text
    assert "--time-budget" in text
    assert round(hours) == 153  # 250 000 steps x 2 s x 1.1
    # GPU, short, nearly done, or fitted to a time budget: silent
    for run in (_run(1000, "cuda"), _run(50), _run(1000, done=950), _run(1000, time_budget=3600.0)):
        quiet = CpuScheduleWarning(io.StringIO())
        quiet.on_train_start(run)
        assert not quiet.active


def test_train_with_mlflow_logs_params_metrics_and_plot_and_resumes_the_run(tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow")  # the tracking extra (mlflow-skinny); CI installs it
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local folder store, as in the tests of MLflow 3
    ws = make_workspace(tmp_path / "ws")
    args = ["train", DATASET, "--workdir", str(ws.root), "--no-progress", "--iters-per-epoch", "2", "--val-iters",
            "1", "--num-workers", "0", "--device", "cpu", "--logger", "mlflow"]
    assert main([*args, "--epochs", "1"]) == 0, capsys.readouterr().err
    assert main([*args, "--epochs", "2", "--resume"]) == 0, capsys.readouterr().err
    (run_dir,) = (ws.root / "results" / DATASET).glob("*/fold_0")
    run_id = (run_dir / "mlflow_run_id.txt").read_text()
    client = mlflow.tracking.MlflowClient(store.as_uri())
    logged = client.get_run(run_id)
    assert logged.info.run_name == f"{run_dir.parent.name}/fold_0"
    assert client.get_experiment(logged.info.experiment_id).name == DATASET
    assert logged.data.params["epochs"] == "1" and logged.data.params["fold"] == "0"
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [0, 1]  # the resumed epoch went to the same MLflow run
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert abs(history[1].value - log[1]["train_loss"]) < 1e-6
    assert [a.path for a in client.list_artifacts(run_id)] == ["progress.png"]
