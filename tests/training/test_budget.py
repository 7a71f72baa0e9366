import json

import numpy as np
import pytest
import torch

from autoseg.training import session
from autoseg.training.session import TrainRequest
from autoseg.cli import main
from autoseg.core.checkpoint import FINAL, LATEST, load_checkpoint
from autoseg.models import build_model
from autoseg.training import budget
from autoseg.training.budget import MEASURE_EPOCHS, RESERVE, TimeBudget, fit_epochs
from autoseg.training.durations import BudgetError, format_duration, parse_duration
from autoseg.training.losses import make_loss
from autoseg.training.schedule import poly_lr
from autoseg.training.trainer import Callback, Run, Targets, TrainSettings, fit, make_optimizer
from tiny_workspace import DATASET, make_workspace, tiny_plan, toy_case


def test_durations_are_read_as_users_write_them():
    assert parse_duration("90m") == 5400 and parse_duration("8h") == 8 * 3600 and parse_duration("2d") == 172800
    assert parse_duration("1h30m") == 5400 and parse_duration("45s") == 45 and parse_duration("600") == 600
    assert parse_duration(" 1.5H ") == 5400
    for bad in ("", "ten minutes", "5x", "0", "0m", "-5m", "m"):
        with pytest.raises(BudgetError, match="--time-budget"):
            parse_duration(bad)
    assert format_duration(3900) == "1h 05m" and format_duration(750) == "12m 30s" and format_duration(45) == "45s"


def test_fitted_epochs_leave_room_for_the_final_validation_and_the_reserve():
    # 1000 s budget, 100 s used, 30 s final validation, 50 s epochs: (970 - 100 - 30) // 50 = 16 more
    assert fit_epochs(1000, 100, 2, 50, 30, cap=1000) == 2 + int((1000 * (1 - RESERVE) - 130) // 50)
    assert fit_epochs(1000, 100, 2, 50, 30, cap=10) == 10  # --epochs is the most
    assert fit_epochs(1000, 990, 7, 50, 30, cap=1000) == 7  # nothing left: stop where it is


# --- the loop on in-memory batches, with a clock that the test advances -------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tick(Callback):
    """Every training step takes ``seconds`` on the test's clock."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds = clock, seconds

    def on_batch_end(self, run, epoch, step, loss):
        self.clock.now += self.seconds


def _batches(batch=2):
    def factory(start):
        def gen():
            i = start
            while True:
                pairs = [toy_case(batch * i + j) for j in range(batch)]
                yield (torch.from_numpy(np.stack([p[0][None] for p in pairs])),
                       torch.from_numpy(np.stack([p[1][None] for p in pairs]).astype(np.int64)))
                i += 1
        return gen()
    return factory


def _run(tmp_path, budget, clock, windows=0, **settings) -> Run:
    torch.manual_seed(0)
    s = TrainSettings(**{"iters_per_epoch": 2, "val_iters": 1, "time_budget": budget, **settings})
    model = build_model("unet", tiny_plan(features=(4, 8, 8)), 1, 3, True)
    run = Run(model=model, network=model, loss_fn=make_loss(3, False), optimizer=make_optimizer(model, s),
              scaler=None, settings=s, targets=Targets(3), device=torch.device("cpu"), amp_dtype=None,
              run_dir=tmp_path)
    run.budget = TimeBudget(budget, windows, cap=s.epochs, batch_size=2, clock=clock)
    return run


class LearningRates(Callback):
    def __init__(self):
        self.lrs = []

    def on_epoch_start(self, run, epoch):
        self.lrs.append(run.optimizer.param_groups[0]["lr"])


def test_epochs_are_fitted_to_the_budget_and_the_schedule_runs_over_the_fitted_length(tmp_path):
    clock = Clock()
    run = _run(tmp_path, budget=100.0, clock=clock)
    lrs = LearningRates()
    fit(run, _batches(), lambda epoch: _batches()(10_000), [Tick(clock, 5.0), lrs])  # 10 s per epoch
    expected = int(100 * (1 - RESERVE) // 10)  # 9 epochs of 10 s fit in 97 s
    assert run.settings.epochs == expected and run.state.epoch == expected and clock.now <= 100 * (1 - RESERVE)
    assert run.state.budget_plan["epochs"] == expected and run.state.budget_plan["epoch_seconds"] == 10.0
    # the poly schedule over the fitted length, from the first epoch on (not a longer schedule cut short)
    np.testing.assert_allclose(lrs.lrs, [poly_lr(e, expected, 1e-2) for e in range(expected)], rtol=1e-12)
    assert run.state.history[0]["budget_plan"]["epochs"] == expected


def test_a_machine_that_slows_down_gets_fewer_epochs(tmp_path):
    clock = Clock()
    run = _run(tmp_path, budget=200.0, clock=clock)

    class SlowerLater(Tick):
        def on_batch_end(self, run, epoch, step, loss):
            self.clock.now += 5.0 if epoch < MEASURE_EPOCHS + 1 else 15.0  # 10 s, then 30 s epochs

    fit(run, _batches(), lambda epoch: _batches()(10_000), [SlowerLater(clock, 0)])
    assert clock.now <= 200 * (1 - RESERVE) and run.state.epoch == run.settings.epochs
    assert run.settings.epochs < int(200 * (1 - RESERVE) // 10)  # the first plan (19 epochs) was cut back


def test_a_resumed_run_keeps_to_what_is_left_of_the_budget(tmp_path):
    clock = Clock()
    first = _run(tmp_path, budget=100.0, clock=clock)

    class Stop(Tick):
        def on_epoch_end(self, run, record):
            if run.state.epoch == 3:
                run.stop_requested = True

    fit(first, _batches(), lambda epoch: _batches()(10_000), [Stop(clock, 5.0)])
    assert first.state.epoch == 3 and first.state.budget_elapsed == 30.0
    clock.now = 5000.0  # time between the interruption and the resubmission does not count
    resumed = _run(tmp_path, budget=100.0, clock=clock)
    resumed.state = first.state
    resumed.settings = first.settings
    resumed.budget.session_start = clock.now
    fit(resumed, _batches(), lambda epoch: _batches()(10_000), [Tick(clock, 5.0)])
    assert resumed.state.epoch == int(100 * (1 - RESERVE) // 10) and resumed.state.budget_elapsed <= 97


def test_a_budget_with_no_room_for_more_epochs_ends_the_run(tmp_path):
    clock = Clock()
    run = _run(tmp_path, budget=100.0, clock=clock)
    run.state.epoch, run.state.budget_elapsed = 2, 99.0
    run.state.history = [{"epoch_time": 10.0, "val_time": 0.1}] * 2
    fit(run, _batches(), lambda epoch: _batches()(10_000), [Tick(clock, 5.0)])
    assert run.state.epoch == 2 and run.settings.epochs == 2


def test_the_final_validation_is_budgeted_from_the_measured_patch_time(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "calibrate", lambda run, val_batches: (1.0, 0.01))  # not the machine's load
    clock = Clock()
    run = _run(tmp_path, budget=100.0, clock=clock, windows=100)
    fit(run, _batches(), lambda epoch: _batches()(10_000), [Tick(clock, 5.0)])
    plan = run.state.budget_plan
    assert plan["final_validation"] > 0
    assert plan["epochs"] == fit_epochs(100.0, plan["elapsed"], plan["fitted_after"], 10.0, plan["final_validation"],
                                        1000)


# --- through the command line ----------------------------------------------------------------------

def _cli(capsys, ws, *args):
    code = main(["--workdir", str(ws.root), "train", DATASET, "--num-workers", "0", "--no-progress", *args])
    return code, capsys.readouterr().err


def test_cli_time_budget_is_fitted_logged_and_stored(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    code, err = _cli(capsys, ws, "--time-budget", "1h", "--epochs", "2", "--iters-per-epoch", "1", "--val-iters", "1")
    run_dir = ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", 0)
    assert code == 0, err
    ckpt = load_checkpoint(run_dir / FINAL)
    assert ckpt["settings"]["time_budget"] == 3600 and ckpt["settings"]["epochs"] == 2  # --epochs caps the fit
    assert ckpt["train_state"]["budget_plan"]["epochs"] == 2 and ckpt["train_state"]["budget_elapsed"] > 0
    log = (run_dir / "training_log.txt").read_text()
    assert "time budget 1h 00m: 2 epochs" in log and "final validation took" in log and "(estimated" in log
    # neither --optimizer nor --lr: the budget picked AdamW for this 2-iteration schedule, and said so
    assert ckpt["settings"]["optimizer"] == "adamw" and ckpt["settings"]["lr"] == budget.SHORT_SCHEDULE_LR
    assert "AdamW lr 0.001, picked for a short schedule (first plan: 2 iterations < 1000)" in log
    assert json.loads((run_dir / "log.jsonl").read_text().splitlines()[0])["budget_plan"]["cap"] == 2


def test_cli_refuses_a_budget_too_small_for_one_epoch_and_says_the_minimum(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    code, err = _cli(capsys, ws, "--time-budget", "1s", "--iters-per-epoch", "250", "--val-iters", "50")
    assert code == 2 and "--time-budget 1s is too small" in err and "give at least --time-budget" in err, err
    run_dir = ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", 0)
    assert not (run_dir / LATEST).exists() and not (run_dir / FINAL).exists()


def test_cli_rejects_a_duration_it_cannot_read(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    with pytest.raises(SystemExit) as e:
        _cli(capsys, ws, "--time-budget", "soon")
    assert e.value.code == 2 and "'soon' is not a duration" in capsys.readouterr().err


def test_cli_resume_with_a_budget_continues_within_it(tmp_path, capsys):
    ws = make_workspace(tmp_path)

    class Interrupt(Callback):
        def on_epoch_end(self, run, record):
            if run.state.epoch == 1:
                raise KeyboardInterrupt

    settings = dict(time_budget=3600.0, epochs=3, iters_per_epoch=1, val_iters=1, num_workers=0)
    with pytest.raises(KeyboardInterrupt):
        session.train(ws, TrainRequest(settings=settings), progress=False, callbacks=[Interrupt()])
    run_dir = ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", 0)
    used = load_checkpoint(run_dir / LATEST)["train_state"]["budget_elapsed"]
    code, err = _cli(capsys, ws, "--resume", "--time-budget", "1h")
    assert code == 0, err
    final = load_checkpoint(run_dir / FINAL)
    state = final["train_state"]
    assert state["epoch"] == 3 and state["budget_elapsed"] > used and state["budget_plan"]["cap"] == 3
    # the optimiser picked at the start is kept (and named in the plan), not picked again
    assert final["settings"]["optimizer"] == "adamw" and state["budget_plan"]["optimizer"].startswith("AdamW")


def test_one_slow_epoch_does_not_cost_the_run_its_last_epochs(tmp_path):
    """A plan cut back by one slow epoch (another job on the machine for a while) is fitted up again
    once the recent epochs' median says there is room."""
    clock = Clock()
    run = _run(tmp_path, budget=200.0, clock=clock)

    class OneSlowEpoch(Tick):
        def on_batch_end(self, run, epoch, step, loss):
            self.clock.now += 15.0 if epoch == 8 else 5.0  # 10 s epochs, one of 30 s

    fit(run, _batches(), lambda epoch: _batches()(10_000), [OneSlowEpoch(clock, 0)])
    # 194 s usable: 19 epochs of 10 s fit; the slow one costs two, so 17 epochs end at 190 s
    assert run.state.epoch == run.settings.epochs == 17 and clock.now == 190.0
    assert run.state.budget_plan["epochs"] == 17


# --- optimizer "auto": the budget picks SGD or, for a short schedule, AdamW --------------------------

def test_optimizer_auto_is_left_to_budget_runs_from_scratch_without_a_chosen_optimizer_or_lr(tmp_path):
    fresh = tmp_path / "run"
    budgeted = {"time_budget": 600.0}
    cases = [(budgeted, "unet", False, "auto"),
             ({**budgeted, "lr": 3e-3}, "unet", False, "sgd"),        # a chosen lr is one for SGD
             ({**budgeted, "optimizer": "sgd"}, "unet", False, "sgd"),
             ({**budgeted, "optimizer": "auto"}, "unet", False, "auto"),
             (budgeted, "swin_unetr", False, "adamw"),                  # the architecture's own recipe
             (budgeted, "unet", True, "sgd"),                           # fine-tuning keeps nnU-Net's
             ({"optimizer": "auto"}, "unet", False, "sgd"),             # no budget: nothing to pick from
             ({}, "unet", False, "sgd")]
    for given, arch, pretrained, expected in cases:
        settings, _ = session.resolve_settings(dict(given), fresh, False, arch, pretrained)
        assert settings.optimizer == expected, (given, arch, pretrained)
    assert session.resolve_settings(budgeted, fresh, False, "swin_unetr")[0].lr == 1e-4
    with pytest.raises(session.TrainError, match="--optimizer auto picks the learning rate"):
        session.resolve_settings({**budgeted, "optimizer": "auto", "lr": 1e-3}, fresh, False, "unet")


@pytest.mark.parametrize("epochs, short", [(10, True), (600, False)])  # 20 / 1200 iterations of 2
def test_optimizer_auto_is_settled_from_the_fitted_length_before_the_first_step(tmp_path, epochs, short):
    assert (epochs * 2 < budget.SHORT_SCHEDULE_ITERATIONS) == short
    run = _run(tmp_path, budget=1e6, clock=Clock(), optimizer="auto", epochs=epochs)  # the cap decides the fit
    weights = [p.detach().clone() for p in run.model.parameters()]
    run.budget.start(run, lambda epoch: _batches()(10_000))
    assert run.settings.epochs == epochs
    assert type(run.optimizer) is (torch.optim.AdamW if short else torch.optim.SGD)
    assert run.settings.optimizer == ("adamw" if short else "sgd")
    assert run.settings.lr == (budget.SHORT_SCHEDULE_LR if short else 1e-2)
    trained = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in run.model.parameters()}
    assert run.state.budget_plan["optimizer"].startswith("AdamW" if short else "SGD")
    assert all(torch.equal(a, b) for a, b in zip(weights, run.model.parameters()))  # no step taken yet


def test_a_short_budget_run_trains_with_adamw_over_the_poly_schedule_from_its_lr(tmp_path):
    clock = Clock()
    # the calibration (real time, milliseconds here) fits the cap: 40 epochs of 2 iterations, a short schedule
    run = _run(tmp_path, budget=100.0, clock=clock, optimizer="auto", epochs=40)
    lrs = LearningRates()
    fit(run, _batches(), lambda epoch: _batches()(10_000), [Tick(clock, 5.0), lrs])
    assert isinstance(run.optimizer, torch.optim.AdamW) and run.optimizer.state  # it took its steps
    np.testing.assert_allclose(lrs.lrs, [poly_lr(e, run.settings.epochs, budget.SHORT_SCHEDULE_LR)
                                         for e in range(run.settings.epochs)], rtol=1e-12)
