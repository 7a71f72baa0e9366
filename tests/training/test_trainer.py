import json
import math
import shutil

import numpy as np
import pytest
import torch

from autoseg import api
from autoseg.training import session
from autoseg.training.session import TrainRequest
from autoseg.cli import main
from autoseg.core import runtime
from autoseg.core.checkpoint import FINAL, LATEST, load_checkpoint, save_checkpoint
from autoseg.core.runtime import resolve_amp
from autoseg.models import build_model
from autoseg.training.losses import make_loss
from autoseg.training.schedule import poly_lr
from autoseg.training.trainer import (Callback, Run, Targets, TrainSettings, TrainState, confusion_counts,
                                      finish_epoch, fit, make_optimizer)
from tiny_workspace import DATASET, FAST, IGNORE, REGIONS, make_workspace, tiny_plan, toy_case


# --- the loop on in-memory batches -------------------------------------------------------------------

def _batches(seed_offset=0, batch=2):
    def factory(start):
        def gen():
            i = start
            while True:
                pairs = [toy_case(1000 * seed_offset + batch * i + j) for j in range(batch)]
                yield (torch.from_numpy(np.stack([p[0][None] for p in pairs])),
                       torch.from_numpy(np.stack([p[1][None] for p in pairs]).astype(np.int64)))
                i += 1
        return gen()
    return factory


def _run(tmp_path, **settings) -> Run:
    torch.manual_seed(0)
    s = TrainSettings(**{"iters_per_epoch": 2, "val_iters": 1, **settings})
    model = build_model("unet", tiny_plan(features=(4, 8, 8, 8)), 1, 3, True)
    return Run(model=model, network=model, loss_fn=make_loss(3, False), optimizer=make_optimizer(model, s),
               scaler=None, settings=s, targets=Targets(3), device=torch.device("cpu"), amp_dtype=None,
               run_dir=tmp_path)


def _val(factory):
    return lambda epoch: factory(10_000)


def test_poly_lr_matches_nnunet_formula():
    assert poly_lr(0, 1000, 1e-2) == 1e-2
    assert poly_lr(500, 1000, 1e-2) == pytest.approx(1e-2 * 0.5**0.9)
    assert poly_lr(1000, 1000, 1e-2) == 0
    with pytest.raises(ValueError):
        poly_lr(1001, 1000, 1e-2)


def test_loss_decreases_on_a_learnable_toy(tmp_path):
    run = _run(tmp_path, epochs=4, iters_per_epoch=8)
    fit(run, _batches(), _val(_batches(1)))
    losses = [r["train_loss"] for r in run.state.history]
    assert losses[-1] < 0.75 * losses[0], losses
    assert run.state.history[-1]["mean_pseudo_dice"] > run.state.history[0]["mean_pseudo_dice"]


def test_learning_rate_follows_the_poly_schedule_per_epoch(tmp_path):
    run = _run(tmp_path, epochs=3, iters_per_epoch=1)
    fit(run, _batches(), _val(_batches(1)))
    assert [r["lr"] for r in run.state.history] == [poly_lr(e, 3, 1e-2) for e in range(3)]


def test_early_stop_after_patience_epochs_without_a_better_ema(tmp_path):
    run = _run(tmp_path, epochs=6, lr=0.0, early_stop=2)  # nothing learns: the EMA never improves
    fit(run, _batches(), _val(_batches(1)))
    assert len(run.state.history) == 3 and run.state.history[-1].get("early_stopped")


def test_callbacks_see_every_hook_in_order(tmp_path):
    seen = []

    class Spy(Callback):
        def on_train_start(self, run): seen.append("start")
        def on_epoch_start(self, run, epoch): seen.append(f"e{epoch}")
        def on_batch_end(self, run, epoch, step, loss): seen.append(f"b{step}")
        def on_validation_end(self, run, epoch, dice): seen.append("val")
        def on_epoch_end(self, run, record): seen.append("end")
        def on_train_end(self, run): seen.append("done")

    fit(_run(tmp_path, epochs=1), _batches(), _val(_batches(1)), [Spy()])
    assert seen == ["start", "e0", "b0", "b1", "val", "end", "done"]


def test_finish_epoch_updates_the_moving_average_and_best():
    state = TrainState()
    assert finish_epoch(state, 0, 1.0, 1.0, [0.5, math.nan], 1e-2, 1.0, 0.1)["improved"]
    assert state.ema == 0.5
    rec = finish_epoch(state, 1, 1.0, 1.0, [1.0, 1.0], 1e-2, 1.0, 0.1)
    assert state.ema == pytest.approx(0.55) and rec["improved"] and state.epoch == 2
    rec = finish_epoch(state, 2, 1.0, 1.0, [0.0, 0.0], 1e-2, 1.0, 0.1)
    assert not rec["improved"] and state.best_ema == pytest.approx(0.55) and state.epochs_since_best == 1
    finish_epoch(state, 3, 1.0, 1.0, [math.nan, math.nan], 1e-2, 1.0, 0.1)  # nothing to score: EMA kept
    assert state.ema == pytest.approx(0.9 * 0.55)


def test_confusion_counts_per_class_and_ignore_label():
    target = torch.tensor([0, 1, 1, 2, 3]).view(1, 1, 5, 1, 1)
    pred = torch.tensor([0, 1, 2, 2, 1])
    logits = torch.nn.functional.one_hot(pred, 3).T.reshape(1, 3, 5, 1, 1).float()
    counts = confusion_counts(logits, target, Targets(3, ignore_label=3))
    assert counts.tolist() == [[1, 1], [0, 1], [1, 0]]  # TP, FP, FN for classes 1 and 2; voxel 4 ignored


def test_settings_are_validated():
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(ValueError, match="amp 'half'"):
        TrainSettings(amp="half")
    assert TrainSettings.from_dict(TrainSettings(epochs=3).to_dict()) == TrainSettings(epochs=3)


def test_amp_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_amp("fp32", cpu) == (None, False)
    assert resolve_amp("fp16", cpu) == (torch.float16, False)
    assert resolve_amp("auto", torch.device("cuda")) == (torch.float16, True)
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert resolve_amp("auto", cpu) == (None, False)
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert resolve_amp("auto", cpu) == ((torch.bfloat16, False) if runtime.CPU_BF16_BY_DEFAULT else (None, False))


# --- whole runs through the api --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace with 1-epoch unet and resenc_unet runs on fold 0."""
    ws = make_workspace(tmp_path_factory.mktemp("ws"))
    unet = api.train(ws, TrainRequest(settings=dict(FAST)), progress=False)[0]
    resenc = api.train(ws, TrainRequest(DATASET, arch="resenc_unet",
                                        settings=dict(FAST, save_probabilities=True, val_mirroring=True)),
                       progress=False)[0]
    return ws, unet, resenc


def _check_run_folder(run_dir, arch, epochs=1):
    assert run_dir.name == "fold_0" and run_dir.parent.name == f"{arch}__autosegPlans__3d_fullres"
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    assert len(lines) == epochs and {"train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time",
                                     "data_wait_fraction"} <= set(json.loads(lines[0]))
    assert (run_dir / "progress.png").stat().st_size > 0 and (run_dir / "training_log.txt").is_file()
    assert (run_dir / FINAL).is_file() and not (run_dir / LATEST).exists() and not (run_dir / ".lock").exists()
    ckpt = load_checkpoint(run_dir / FINAL)
    assert (ckpt["arch"], ckpt["fold"], ckpt["configuration"]) == (arch, 0, "3d_fullres")
    summary = json.loads((run_dir / "validation" / "summary.json").read_text())
    assert summary["n_cases"] == 2 and set(summary["mean"]) == {"bright", "dim"}
    for row in summary["per_case"]:
        assert (run_dir / "validation" / f"{row['case']}.nii.gz").is_file()


def test_one_epoch_unet(trained):
    _check_run_folder(trained[1], "unet")


def test_one_epoch_resenc_unet_with_mirroring_and_saved_probabilities(trained):
    _check_run_folder(trained[2], "resenc_unet")
    with np.load(next((trained[2] / "validation").glob("*.npz"))) as z:
        probs = z["probabilities"].astype(np.float32)
        assert probs.shape == (3, 16, 16, 16) and z["bbox"].tolist() == [[0, 16]] * 3
    assert np.allclose(probs.sum(0), 1, atol=1e-2)


def test_one_epoch_2d_configuration(tmp_path):
    ws = make_workspace(tmp_path, extra_plans=(tiny_plan(patch=(16, 16), name="2d", batch_size=4),))
    run_dir = api.train(ws, TrainRequest(config="2d", settings=dict(FAST)), progress=False)[0]
    assert run_dir.parent.name == "unet__autosegPlans__2d"
    assert json.loads((run_dir / "validation" / "summary.json").read_text())["n_cases"] == 2


def test_region_dataset_trains_with_sigmoid_outputs(tmp_path):
    run_dir = api.train(make_workspace(tmp_path, labels=REGIONS), TrainRequest(settings=dict(FAST)),
                        progress=False)[0]
    ckpt = load_checkpoint(run_dir / FINAL)
    assert ckpt["dataset"]["regions_class_order"] == [1, 2]
    assert ckpt["model"]["net.output_block.conv.conv.weight"].shape[0] == 2  # one channel per region
    assert set(json.loads((run_dir / "validation" / "summary.json").read_text())["mean"]) == {"any", "dim"}


def test_ignore_label_dataset_trains_and_is_left_out_of_validation(tmp_path):
    run_dir = api.train(make_workspace(tmp_path, labels=IGNORE), TrainRequest(settings=dict(FAST)),
                        progress=False)[0]
    assert load_checkpoint(run_dir / FINAL)["model"]["net.output_block.conv.conv.weight"].shape[0] == 3
    assert set(json.loads((run_dir / "validation" / "summary.json").read_text())["mean"]) == {"bright", "dim"}


def test_parse_folds():
    assert session.parse_folds(["0", 3, "all", 0], 5) == [0, 3, "all"]
    with pytest.raises(session.TrainError, match="unknown fold 5: splits.json has folds 0-4"):
        session.parse_folds([5], 5)
    with pytest.raises(session.TrainError, match="unknown fold 'x'"):
        session.parse_folds(["x"], 5)


@pytest.mark.slow
def test_one_epoch_swin_unetr(tmp_path):
    shape = (32, 32, 64)
    ws = make_workspace(tmp_path, n_cases=2, shape=shape, plan=tiny_plan(patch=shape, features=(12, 24, 48),
                                                                        batch_size=1))
    run_dir = api.train(ws, TrainRequest(arch="swin_unetr", settings=dict(FAST, iters_per_epoch=1)),
                        progress=False)[0]
    assert load_checkpoint(run_dir / FINAL)["arch"] == "swin_unetr"
    assert (run_dir / "validation" / "summary.json").is_file()


class Interrupt(Callback):
    def on_batch_end(self, run, epoch, step, loss):
        if epoch == 1 and step == 0:
            raise KeyboardInterrupt


def test_resume_after_an_interrupted_epoch_gives_the_uninterrupted_weights(tmp_path):
    settings = dict(FAST, epochs=3)
    ws_a, ws_b = make_workspace(tmp_path / "a"), make_workspace(tmp_path / "b")
    straight = api.train(ws_a, TrainRequest(settings=settings), progress=False)[0]
    with pytest.raises(KeyboardInterrupt):
        api.train(ws_b, TrainRequest(settings=settings), progress=False, callbacks=[Interrupt()])
    run_b = straight.relative_to(tmp_path / "a")
    assert load_checkpoint(tmp_path / "b" / run_b / LATEST)["train_state"]["epoch"] == 1
    assert not (tmp_path / "b" / run_b / ".lock").exists()
    resumed = api.train(ws_b, TrainRequest(settings={}, resume=True), progress=False)[0]
    a, b = load_checkpoint(straight / FINAL), load_checkpoint(resumed / FINAL)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(torch.equal(x, s["momentum_buffer"]) for x, s in zip(momentum, b["optimizer"]["state"].values()))
    losses = [[r["train_loss"] for r in c["train_state"]["history"]] for c in (a, b)]
    assert losses[0] == losses[1]
    assert len((resumed / "log.jsonl").read_text().splitlines()) == 3


def test_resume_may_extend_epochs_but_not_change_the_trajectory(trained, tmp_path):
    ws, unet, _ = trained
    with pytest.raises(session.TrainError, match="cannot change seed"):
        api.train(ws, TrainRequest(settings={"seed": 7}, resume=True), progress=False)


def test_resume_refuses_changed_plans(trained):
    ws = trained[0]
    path = ws.preprocessed_dir(DATASET) / "plans.json"
    original = path.read_text()
    path.write_text(original.replace('"batch_size": 2', '"batch_size": 3'))
    try:
        with pytest.raises(session.TrainError, match="plans.json of Dataset990_Tiny changed"):
            api.train(ws, TrainRequest(settings={}, resume=True), progress=False)
    finally:
        path.write_text(original)


def test_resume_refuses_a_checkpoint_of_another_dataset(trained, tmp_path):
    ws, unet, _ = trained
    latest = unet / "checkpoint_latest.pt" if (unet / "checkpoint_latest.pt").is_file() else unet / FINAL
    original = latest.read_bytes()
    ckpt = torch.load(latest, weights_only=True)
    ckpt["dataset"]["name"] = "Dataset902_Other"  # e.g. a run folder copied from another dataset
    save_checkpoint(ckpt, latest)  # a valid file (digests of its content), not a damaged one
    try:
        with pytest.raises(session.TrainError, match=f"holds a checkpoint of dataset Dataset902_Other, not {DATASET}"):
            api.train(ws, TrainRequest(settings={}, resume=True), progress=False)
    finally:
        latest.write_bytes(original)


def test_pretrained_weights_are_loaded_and_output_heads_may_differ(trained):
    ws, unet, resenc = trained
    weights = load_checkpoint(unet / FINAL)["model"]
    same = build_model("unet", tiny_plan(), 1, 3)
    session.load_pretrained(same, unet)
    assert all(torch.equal(v, weights[k]) for k, v in same.state_dict().items())
    more_classes = build_model("unet", tiny_plan(), 1, 5)
    session.load_pretrained(more_classes, unet)
    conv = "net.input_block.conv1.conv.weight"
    assert torch.equal(more_classes.state_dict()[conv], weights[conv])
    with pytest.raises(session.TrainError, match="incompatible network"):
        session.load_pretrained(build_model("unet", tiny_plan(), 1, 3), resenc)


# --- command-line errors ---------------------------------------------------------------------------

def _cli(capsys, ws, *args):
    code = main(["train", "--workdir", str(ws.root), "--no-progress", *args])
    return code, capsys.readouterr().err


def test_cli_unknown_fold(trained, capsys):
    code, err = _cli(capsys, trained[0], DATASET, "--fold", "7")
    assert code == 2 and "unknown fold 7: splits.json has folds 0-1" in err


def test_cli_missing_plans(tmp_path, capsys):
    code, err = _cli(capsys, make_workspace(tmp_path).__class__(tmp_path / "empty"), "--fold", "0")
    assert code == 2 and "no planned dataset" in err and "autoseg plan" in err


def test_cli_unknown_plans(trained, capsys):
    code, err = _cli(capsys, trained[0], "--plans", "resenc_l")
    assert code == 2 and "no plans named 'resenc_l' (planned: autosegPlans)" in err and "--planner resenc_l" in err


def test_cli_unknown_arch(trained, capsys):
    code, err = _cli(capsys, trained[0], "--arch", "vnet")
    assert code == 2 and "unknown architecture 'vnet'; choices: unet, resenc_unet, swin_unetr" in err


def test_cli_resume_without_checkpoint_starts_the_run(tmp_path, capsys):
    # a job killed before its first checkpoint is resubmitted with the same --resume command
    ws = make_workspace(tmp_path)
    code, err = _cli(capsys, ws, "--fold", "1", "--resume", "--epochs", "1", "--iters-per-epoch", "1",
                     "--val-iters", "1", "--num-workers", "0")
    run_dir = ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", 1)
    assert code == 0 and (run_dir / FINAL).is_file(), err
    assert "starting" in (run_dir / "training_log.txt").read_text()


def test_cli_existing_run_needs_resume(trained, capsys):
    code, err = _cli(capsys, trained[0], "--fold", "0")
    assert code == 2 and "already holds a training run; add --resume" in err


def test_cli_incompatible_pretrained(trained, capsys):
    code, err = _cli(capsys, trained[0], "--fold", "1", "--pretrained", str(trained[2]))
    assert code == 2 and "incompatible network" in err


def test_cli_several_planned_datasets_need_a_name(trained, capsys, tmp_path):
    ws = trained[0]
    other = ws.preprocessed / "Dataset991_Other"
    shutil.copytree(ws.preprocessed_dir(DATASET), other)
    try:
        code, err = _cli(capsys, ws, "--fold", "0")
    finally:
        shutil.rmtree(other)
    assert code == 2 and "several planned datasets, name one: Dataset990_Tiny, Dataset991_Other" in err


def test_cli_trains_the_only_planned_dataset_on_several_folds(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    code = main(["train", "--workdir", str(ws.root), "--no-progress", "--fold", "1", "all", "--epochs", "1",
                 "--iters-per-epoch", "1", "--val-iters", "1", "--num-workers", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "fold_1, validation Dice" in out and "fold_all, validation Dice" in out
    summary = ws.results / DATASET / "unet__autosegPlans__3d_fullres" / "fold_all" / "validation" / "summary.json"
    assert json.loads(summary.read_text())["n_cases"] == 4  # fold 'all' validates on every case


def test_train_picks_the_plans_named_by_preset_and_lists_them_when_unknown(tmp_path):
    import dataclasses

    from autoseg.planning.plans import Plans

    ws = make_workspace(tmp_path / "ws")
    pre = ws.preprocessed_dir(DATASET)
    default = Plans.load(pre / "plans.json")
    other = dataclasses.replace(default, plans_name="autosegPlans_small", planner="small")
    other.save(pre / "plans_small.json")
    shutil.copytree(pre / "autosegPlans_3d_fullres", pre / "autosegPlans_small_3d_fullres")
    run_dir = api.train(ws, TrainRequest(settings=dict(FAST), plans="small"), progress=False)[0]
    assert run_dir.parent.name == "unet__autosegPlans_small__3d_fullres"
    assert load_checkpoint(run_dir / FINAL)["plans"]["plans_name"] == "autosegPlans_small"
    assert not (ws.results_dir(DATASET) / "unet__autosegPlans__3d_fullres").exists()
    with pytest.raises(session.TrainError, match="no plans named 'resenc_m' .*autosegPlans, autosegPlans_small"):
        api.train(ws, TrainRequest(settings=dict(FAST), plans="resenc_m"), progress=False)


def test_cli_no_val_tta_validates_without_mirroring(tmp_path, capsys, monkeypatch):
    seen = []
    real = session.validate
    monkeypatch.setattr(session, "validate", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    ws = make_workspace(tmp_path)
    code, err = _cli(capsys, ws, "--fold", "1", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1",
                     "--num-workers", "0", "--no-val-tta")
    run_dir = ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", 1)
    assert code == 0, err
    assert seen == [()] and load_checkpoint(run_dir / FINAL)["settings"]["val_mirroring"] is False


def test_transformers_start_from_their_authors_adamw_unless_another_optimizer_is_given(tmp_path):
    fresh = tmp_path / "run"
    swin, _ = session.resolve_settings({}, fresh, False, "swin_unetr")
    assert (swin.optimizer, swin.lr, swin.weight_decay) == ("adamw", 1e-4, 1e-5)
    unet, _ = session.resolve_settings({}, fresh, False, "unet")
    assert (unet.optimizer, unet.lr, unet.momentum) == ("sgd", 1e-2, 0.99)
    faster, _ = session.resolve_settings({"lr": 3e-4}, fresh, False, "unetr")
    assert (faster.optimizer, faster.lr) == ("adamw", 3e-4)
    sgd, _ = session.resolve_settings({"optimizer": "sgd"}, fresh, False, "swin_unetr")
    assert (sgd.optimizer, sgd.lr, sgd.weight_decay) == ("sgd", 1e-2, 3e-5)  # nnU-Net's recipe as a whole
    assert TrainSettings.from_dict({"epochs": 3}).optimizer == "sgd"  # checkpoints from before the field
    with pytest.raises(ValueError, match="--optimizer 'adam' is not one of sgd, adamw"):
        TrainSettings(optimizer="adam")
    with pytest.raises(ValueError, match="--lr must be a non-negative number"):
        TrainSettings(lr=-1e-3)
    with pytest.raises(ValueError, match="--lr must be a non-negative number"):
        TrainSettings(lr=math.nan)


def test_make_optimizer_follows_the_settings():
    net = torch.nn.Conv3d(1, 2, 3)
    adamw = make_optimizer(net, TrainSettings(optimizer="adamw", lr=1e-4, weight_decay=1e-5))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == 1e-4
    assert adamw.defaults["weight_decay"] == 1e-5
    sgd = make_optimizer(net, TrainSettings())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.99 and sgd.defaults["nesterov"]


def test_cli_optimizer_and_lr_reach_the_checkpoint(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    code, err = _cli(capsys, ws, "--fold", "1", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1",
                     "--num-workers", "0", "--optimizer", "adamw", "--lr", "0.0005", "--no-val-tta")
    run_dir = ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", 1)
    assert code == 0, err
    settings = load_checkpoint(run_dir / FINAL)["settings"]
    assert (settings["optimizer"], settings["lr"]) == ("adamw", 0.0005)
    code, err = _cli(capsys, ws, "--fold", "1", "--epochs", "2", "--iters-per-epoch", "1", "--val-iters", "1",
                     "--num-workers", "0", "--optimizer", "sgd", "--resume")
    assert code == 2 and "--resume cannot change optimizer" in err


def test_cpu_training_with_autocast_guards_two_voxel_deep_convolutions(tmp_path):
    from autoseg.core import runtime
    from autoseg.training import ddp

    ws = make_workspace(tmp_path)
    job = session.jobs_for(ws, TrainRequest(settings=dict(FAST)))[0]
    run, _ = session.build_run(job, TrainSettings(**dict(FAST), amp="bf16", device="cpu"), ddp.detect({}))
    convs = [m for m in run.model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m.forward.__func__ is runtime._conv3d_forward_guarded for m in convs)
