"""The cascade's training side: the low-res folds leave every case's segmentation for the next stage,
the cascade stage is refused (no run folder) until they exist, then trains on image + one-hot channels.

One tiny workspace (5 cases of 16^3, 2-stage networks, the whole volume one patch) shared by the tests
of this module: its low-res folds and cascade folds are trained once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from autoseg.cascade import one_hot, read_previous_stage
from autoseg.core.checkpoint import FINAL, ModelRecord, load_checkpoint
from autoseg.storage import open_case
from autoseg.training.loader import BatchSpec, Sampling, Workers, make_batch, make_train_loader, make_val_loader
from autoseg.training.augmentation import AugmentSettings
from autoseg.training.cascade_augmentation import CascadeAugmentSettings
from autoseg.training.session import TrainError, TrainRequest, jobs_for, train
from autoseg.workspace import Workspace
from tiny_workspace import DATASET, FAST, make_workspace, tiny_plan

LOW, CASCADE = "3d_lowres", "3d_cascade_fullres"
FOLDS = (0, 1, 2, 3, 4)


def cascade_plans():
    full = tiny_plan(features=(4, 8), batch_size=2)
    low = tiny_plan(features=(4, 8), batch_size=2, name=LOW)
    cascade = tiny_plan(features=(4, 8), batch_size=2, name=CASCADE)
    return full, (low, replace(cascade, previous_stage=LOW))


def make_cascade_workspace(root) -> Workspace:
    full, extra = cascade_plans()
    return make_workspace(root, n_cases=5, plan=full, extra_plans=extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workspace, the refusal before the low-res folds existed); low-res and cascade folds trained."""
    ws = make_cascade_workspace(tmp_path_factory.mktemp("cascade"))
    with pytest.raises(TrainError) as refused:
        train(ws, TrainRequest(DATASET, (0,), CASCADE, settings=FAST), progress=False)
    train(ws, TrainRequest(DATASET, FOLDS, LOW, settings=FAST), progress=False)
    train(ws, TrainRequest(DATASET, FOLDS, CASCADE, settings=FAST), progress=False)
    return ws, str(refused.value)


def _next_stage(ws):
    return ws.next_stage_dir(DATASET, "unet", "autosegPlans", LOW, CASCADE)


def test_cascade_is_refused_before_the_lowres_folds_exist_naming_the_command(trained):
    ws, message = trained
    assert f"`autoseg train {DATASET} --config 3d_lowres --fold 0 1 2 3 4`" in message
    assert "5 of 5 are missing" in message and str(_next_stage(ws)) in message
    # the refusal came before any run folder: the folder the cascade has now was made by its later training
    log = ws.run_dir(DATASET, "unet", "autosegPlans", CASCADE, 0) / "log.jsonl"
    assert log.is_file()


def test_refusal_leaves_no_run_folder_and_names_only_the_missing_folds(tmp_path):
    ws = make_cascade_workspace(tmp_path)
    with pytest.raises(TrainError, match=r"--config 3d_lowres --fold 0 1 2 3 4 --arch unet --plans autosegPlans`"):
        jobs_for(ws, TrainRequest(DATASET, (2,), CASCADE, arch="unet", plans="autosegPlans"))
    assert not ws.results.exists()
    from autoseg.cascade import write_previous_stage
    from autoseg.splits import Splits
    splits = Splits.load(ws.splits_file(DATASET))
    for k in (0, 1, 2):
        for case in splits.fold(k).val:
            write_previous_stage(_next_stage(ws), case, np.zeros((16, 16, 16), np.int16))
    with pytest.raises(TrainError, match=r"2 of 5 are missing.*--fold 3 4`"):
        train(ws, TrainRequest(DATASET, (0,), CASCADE, settings=FAST), progress=False)
    assert not ws.model_dir(DATASET, "unet", "autosegPlans", CASCADE).exists()


def test_lowres_folds_leave_a_segmentation_of_every_case_on_the_next_grid(trained):
    ws, _ = trained
    folder = _next_stage(ws)
    data = ws.data_dir(DATASET, ws_plans(ws), CASCADE)
    cases = sorted(p.stem for p in data.glob("case_*.json"))
    assert sorted(p.stem for p in folder.glob("*.npy")) == cases
    for case in cases:
        labels = read_previous_stage(folder, case, open_case(data, case).data.shape[1:])
        assert labels.shape == (1, 16, 16, 16) and set(np.unique(labels)) <= {0, 1, 2}
    assert not list(folder.glob(".*"))  # written atomically: no temporary left


def ws_plans(ws):
    from autoseg.planning.plans import Plans
    return Plans.load(ws.plans_file(DATASET, "autosegPlans"))


def test_cascade_network_takes_image_and_one_hot_channels_and_says_what_it_needs(trained):
    ws, _ = trained
    ckpt = load_checkpoint(ws.run_dir(DATASET, "unet", "autosegPlans", CASCADE, 0) / FINAL)
    record = ModelRecord.of(ckpt)
    assert (record.previous_stage, record.previous_model) == (LOW, "unet__autosegPlans__3d_lowres")
    first_conv = next(v for k, v in ckpt["model"].items() if v.ndim == 5)
    assert first_conv.shape[1] == 3  # 1 image channel + one per foreground label (bright, dim)
    low = ModelRecord.of(load_checkpoint(ws.run_dir(DATASET, "unet", "autosegPlans", LOW, 0) / FINAL))
    assert low.previous_stage is None and not low.is_cascade


def test_batches_carry_the_previous_stage_one_hot_after_the_image(trained):
    ws, _ = trained
    job = jobs_for(ws, TrainRequest(DATASET, (0,), CASCADE))[0]
    sampling = Sampling(batch_size=2, seed=0)
    cfg = job.plans.configuration(CASCADE)
    image, seg = next(iter(make_val_loader(job.data_folder, list(job.fold_cases.val), cfg, sampling, 1,
                                           previous=job.previous)))
    assert image.shape == (2, 3, 16, 16, 16) and seg.shape == (2, 1, 16, 16, 16)
    case = job.fold_cases.val[0]
    stored = read_previous_stage(job.previous.folder, case, (16, 16, 16))[0]
    expected = torch.from_numpy(one_hot(stored, (1, 2)))
    assert any(torch.equal(image[b, 1:], expected) for b in range(2))
    train_image, _ = next(iter(make_train_loader(job.data_folder, list(job.fold_cases.train), cfg, sampling,
                                                 Workers(num_workers=0), previous=job.previous)))
    assert train_image.shape[1] == 3 and set(torch.unique(train_image[:, 1:]).tolist()) <= {0.0, 1.0}


# every spatial and intensity transform drawn for every patch
ALWAYS = AugmentSettings(p_rotation=1.0, p_scaling=1.0, p_noise=1.0, p_blur=1.0, p_blur_per_channel=1.0,
                         p_brightness=1.0, p_contrast=1.0, p_low_res=1.0, p_low_res_per_channel=1.0,
                         p_gamma=1.0, p_mirror=1.0)


def _label_as_previous_stage(tmp_path):
    """A case whose previous-stage segmentation is its own label, opened as the loader opens it."""
    ws = make_workspace(tmp_path, n_cases=2)
    case = open_case(ws.data_dir(DATASET, ws_plans(ws), "3d_fullres"), "case_000")
    case.previous = np.asarray(case.seg)
    return case


@pytest.mark.parametrize("patch", [(12, 12, 12), (12, 12)])
def test_previous_stage_channels_follow_the_spatial_augmentation_of_the_label_and_no_intensity_one(tmp_path, patch):
    case = _label_as_previous_stage(tmp_path)
    spec = BatchSpec(patch_size=patch, batch_size=4, augment=ALWAYS, previous_labels=(1, 2))
    image, seg = make_batch(spec, ["case_000"], lambda _: case, 0)
    assert image.shape == (4, 3, *patch) and seg.shape == (4, 1, *patch)
    for b in range(4):  # rotated, scaled, mirrored exactly as the label; binary (no noise, blur, gamma)
        np.testing.assert_array_equal(image[b, 1:], one_hot(seg[b, 0], (1, 2)))
    assert not np.isin(image[:, 0], (0.0, 1.0)).all()  # while the image channel did get the intensity transforms


def test_cascade_augmentation_spoils_the_previous_stage_channels_of_training_batches(tmp_path):
    case = _label_as_previous_stage(tmp_path)
    spoil = CascadeAugmentSettings(p_binary_operator=1.0, p_operator_per_label=1.0, p_remove_component=1.0,
                                   p_remove_per_label=1.0)
    spec = BatchSpec(patch_size=(12, 12, 12), batch_size=4, augment=AugmentSettings.off(), previous_labels=(1, 2),
                     cascade_augment=spoil)
    image, seg = make_batch(spec, ["case_000"], lambda _: case, 0)
    differs = [not np.array_equal(image[b, 1:], one_hot(seg[b, 0], (1, 2))) for b in range(4)]
    assert any(differs)
    assert set(np.unique(image[:, 1:])) <= {0.0, 1.0} and image[:, 1:].sum(1).max() <= 1  # still one-hot


def test_a_finished_lowres_fold_without_its_segmentations_writes_them_on_resume(trained):
    ws, _ = trained
    from autoseg.splits import Splits
    case = Splits.load(ws.splits_file(DATASET)).fold(3).val[0]
    path = _next_stage(ws) / f"{case}.npy"
    before = path.read_bytes()
    path.unlink()
    with pytest.raises(TrainError, match=r"1 of 5 are missing.*--config 3d_lowres --fold 3 --resume`"):
        jobs_for(ws, TrainRequest(DATASET, (1,), CASCADE))
    train(ws, TrainRequest(DATASET, (3,), LOW, settings=FAST, resume=True), progress=False)
    assert path.read_bytes() == before
