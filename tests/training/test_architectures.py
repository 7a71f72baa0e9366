"""Every registered architecture, end to end through the command line on a tiny toy dataset: train
(`--arch`), resume, end-of-training validation, predict, export and import, OpenVINO agreement.

The tiny plan of each architecture is made by its own registry entry (its layout and feature rules on
a 16^3 request, 4 base features), so a new entry is covered here without editing this file."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from autoseg.cli import main
from autoseg.core.checkpoint import FINAL, load_checkpoint
from autoseg.models import ARCHITECTURES, get_architecture
from autoseg.planning.plans import ConfigurationPlan
from autoseg.planning.settings import load_preset
from tiny_workspace import DATASET, make_workspace

SLOW = {"resenc_unet", "swin_unetr", "mednext", "attention_unet"}  # > ~20 s on 2 loaded CPU cores


def tiny_plan_for(name: str, request=(16, 16, 16)) -> ConfigurationPlan:
    """The architecture's own layout and features for a small patch request (base 4 features)."""
    arch = get_architecture(name)
    settings = load_preset(arch.preset).replace(base_features=4)
    topo = arch.layout((1.0, 1.0, 1.0), request, settings)
    return ConfigurationPlan(
        name="3d_fullres", spatial_dims=3, spacing=(1.0,) * 3, median_shape=topo.patch_size,
        patch_size=topo.patch_size, batch_size=2, kernel_sizes=topo.kernel_sizes, strides=topo.strides,
        features=arch.features(topo.n_stages, 3, settings), batch_dice=False, data_identifier="3d_fullres",
        architecture=name, blocks_per_stage=settings.encoder_blocks(topo.n_stages))


def _cli(*args) -> int:
    return main([*args])


def _labels(folder):
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(ARCHITECTURES)])
def test_architecture_trains_resumes_validates_predicts_and_exports(name, tmp_path):
    plan = tiny_plan_for(name)
    ws = make_workspace(tmp_path / "ws", n_cases=2, plan=plan, shape=plan.patch_size)
    common = ["--workdir", str(ws.root), "--no-progress"]
    # fp32: these tiny plans end in 1-2 voxel bottlenecks, where PyTorch CPU bf16 convolution gradients are wrong
    # (segresnet's gradient norm is inf by its second step); the test is about the plumbing, not the numerics
    train = ["train", DATASET, "--arch", name, "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0",
             "--amp", "fp32", *common]
    assert _cli(*train, "--epochs", "1") == 0
    run_dir = ws.results_dir(DATASET) / f"{name}__autosegPlans__3d_fullres" / "fold_0"
    assert load_checkpoint(run_dir / FINAL)["train_state"]["epoch"] == 1
    assert _cli(*train, "--epochs", "2", "--resume") == 0
    ckpt = load_checkpoint(run_dir / FINAL)
    assert (ckpt["arch"], ckpt["train_state"]["epoch"]) == (name, 2)
    recipe = {"optimizer": "sgd", "lr": 1e-2, **dict(get_architecture(name).training)}  # AdamW for transformers
    assert {k: ckpt["settings"][k] for k in ("optimizer", "lr")} == {k: recipe[k] for k in ("optimizer", "lr")}
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 2
    summary = json.loads((run_dir / "validation" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and set(summary["mean"]) == {"bright", "dim"}

    images = ws.raw / DATASET / "imagesTr"
    predict = ["predict", "-i", str(images), "--no-tta", "--device", "cpu", "--no-progress"]
    assert _cli(*predict, "-o", str(tmp_path / "torch"), "--arch", name, "--backend", "torch", "--precision", "fp32",
                "--workdir", str(ws.root)) == 0
    torch_labels = _labels(tmp_path / "torch")
    assert len(torch_labels) == 2 and all(v.shape == plan.patch_size for v in torch_labels.values())

    zip_path = tmp_path / "model.zip"
    assert _cli("export", DATASET, "-o", str(zip_path), "--arch", name, "--workdir", str(ws.root)) == 0
    other = ["--workdir", str(tmp_path / "other")]
    assert _cli("import", str(zip_path), *other) == 0
    assert _cli(*predict, "-o", str(tmp_path / "imported"), "-d", DATASET, "--backend", "torch", "--precision",
                "fp32", *other) == 0
    assert all(np.array_equal(torch_labels[k], v) for k, v in _labels(tmp_path / "imported").items())

    pytest.importorskip("openvino")
    assert _cli(*predict, "-o", str(tmp_path / "ov"), "--arch", name, "--backend", "openvino", "--precision", "fp32",
                "--workdir", str(ws.root)) == 0
    agree = [np.mean(torch_labels[k] == v) for k, v in _labels(tmp_path / "ov").items()]
    assert len(agree) == 2 and min(agree) > 0.999


def _ddp_worker(rank: int, root: str, port: int, name: str) -> None:
    import os
    from pathlib import Path

    import torch

    from autoseg.training import ddp, session
    from autoseg.training.session import TrainRequest
    from autoseg.workspace import Workspace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = ddp.DistContext(rank, 2, rank)
    try:
        session.train(Workspace(Path(root) / "ws"),
                      TrainRequest(arch=name, settings={"epochs": 1, "iters_per_epoch": 2, "val_iters": 1,
                                                        "num_workers": 0, "val_mirroring": False}),
                      dist=ctx, progress=False)
    finally:
        ddp.shutdown(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(ARCHITECTURES) if get_architecture(n).deep_supervision])
def test_deep_supervised_architectures_leave_no_trainable_parameter_unused_under_ddp(name, tmp_path):
    # DistributedDataParallel runs without find_unused_parameters: a head that is built, trainable and
    # left out of the loss (the weight-0 lowest-resolution one) would stop the second step with an error
    import socket

    import torch.multiprocessing as mp

    plan = tiny_plan_for(name, (32, 32, 32))  # 4+ stages: two supervised outputs and a weight-0 head
    make_workspace(tmp_path / "ws", n_cases=2, plan=plan, shape=plan.patch_size)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(str(tmp_path), port, name), nprocs=2, join=True)
    run_dir = tmp_path / "ws" / "results" / DATASET / f"{name}__autosegPlans__3d_fullres" / "fold_0"
    assert load_checkpoint(run_dir / FINAL)["train_state"]["epoch"] == 1
