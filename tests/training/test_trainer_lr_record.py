"""The epoch record's lr is the rate the epoch trained with, also when a callback sets its own schedule
(the training benchmark's time-based poly decay did, and log.jsonl showed the epoch-based value)."""

import numpy as np
import torch

from autoseg.models import build_model
from autoseg.training.losses import make_loss
from autoseg.training.trainer import Callback, Run, Targets, TrainSettings, fit, make_optimizer
from tiny_workspace import tiny_plan, toy_case


def _batches(start):
    i = start
    while True:
        image, label = toy_case(i)
        yield torch.from_numpy(image[None, None]), torch.from_numpy(label[None, None].astype(np.int64))
        i += 1


def test_record_holds_the_lr_a_callback_set_at_epoch_start(tmp_path):
    torch.manual_seed(0)
    s = TrainSettings(epochs=2, iters_per_epoch=1, val_iters=1)
    model = build_model("unet", tiny_plan(features=(4, 8, 8, 8)), 1, 3, True)
    run = Run(model=model, network=model, loss_fn=make_loss(3, False), optimizer=make_optimizer(model, s),
              scaler=None, settings=s, targets=Targets(3), device=torch.device("cpu"), amp_dtype=None,
              run_dir=tmp_path)
    used = []

    class OwnSchedule(Callback):
        def on_epoch_start(self, run, epoch):
            for group in run.optimizer.param_groups:
                group["lr"] = 0.003 / (epoch + 1)

        def on_batch_end(self, run, epoch, step, loss):
            used.append(run.optimizer.param_groups[0]["lr"])

    fit(run, _batches, lambda epoch: _batches(10_000), [OwnSchedule()])
    assert [r["lr"] for r in run.state.history] == used == [0.003, 0.0015]
