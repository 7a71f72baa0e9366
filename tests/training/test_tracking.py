"""`train --logger tensorboard` (the real tensorboard package reads the event files back) and the warning
when a long schedule starts on the CPU."""

from __future__ import annotations

import io
import types

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
    import json

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


def _run(epochs, device="cpu", done=0):
    return types.SimpleNamespace(device=torch.device(device), settings=TrainSettings(epochs=epochs),
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
    assert round(hours) == 153  # 250 000 steps x 2 s x 1.1
    for run in (_run(1000, "cuda"), _run(50), _run(1000, done=950)):  # GPU, short, nearly done: silent
        quiet = CpuScheduleWarning(io.StringIO())
        quiet.on_train_start(run)
        assert not quiet.active
