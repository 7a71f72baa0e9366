"""Loading trained folds and finding the model to predict with."""

from __future__ import annotations

import pytest
import torch

from autoseg.inference.predictor import PredictorError, find_model_dir, load_predictor, resolve_trained
from autoseg.workspace import Workspace

from .conftest import DATASET, MODEL_NAME, save_fold, tiny_plans


def test_all_finished_numbered_folds_are_loaded_by_default(tmp_path):
    plans = tiny_plans()
    for fold in (0, 1, "all"):
        save_fold(tmp_path / "m", fold, plans)
    save_fold(tmp_path / "m", 2, plans, name="checkpoint_best.pt")  # fold 2 still training
    model = load_predictor(tmp_path / "m")
    assert model.folds == (0, 1) and len(model.networks) == 2
    assert not model.networks[0].training and model.mirror_axes == (0, 1, 2)
    assert model.spec.labels == plans.labels and model.config.patch_size == (16, 16, 16)
    assert load_predictor(tmp_path / "m", folds=["all"]).folds == ("all",)
    assert load_predictor(tmp_path / "m", folds=[2], checkpoint="best").folds == (2,)
    assert load_predictor(tmp_path / "m" / "fold_1").folds == (1,)


def test_networks_are_built_when_first_used_and_their_digest_needs_no_build(tmp_path):
    from autoseg.core.checkpoint import weights_digest

    for fold in (0, 1):
        save_fold(tmp_path / "m", fold, tiny_plans(), seed=fold)
    model = load_predictor(tmp_path / "m")
    nets = model.networks
    assert len(nets) == 2 and not nets.is_built(0) and not nets.is_built(1)
    digests = [nets.digest(0), nets.digest(1)]
    assert not nets.is_built(0) and digests[0] != digests[1]
    first = nets[0]
    assert nets.is_built(0) and not nets.is_built(1) and nets[0] is first and nets[-2] is first
    assert [weights_digest(n) for n in nets] == digests == [nets.digest(0), nets.digest(1)]
    with pytest.raises(IndexError):
        nets[2]


def test_digest_of_half_precision_checkpoint_weights_is_that_of_the_network_they_make(tmp_path):
    """Weights stored as float16 become float32 in the network; the digest without building says so."""
    from autoseg.core.checkpoint import weights_digest
    from autoseg.core.checkpoint import load_checkpoint, save_checkpoint

    path = save_fold(tmp_path / "m", 0, tiny_plans())
    ckpt = load_checkpoint(path)
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(ckpt, path)
    nets = load_predictor(tmp_path / "m").networks
    assert nets.digest(0) == weights_digest(nets[0])
    assert next(iter(nets[0].parameters())).dtype == torch.float32


def test_weights_that_do_not_fit_the_network_are_reported_when_it_is_built(tmp_path):
    from autoseg.core.checkpoint import load_checkpoint, save_checkpoint

    path = save_fold(tmp_path / "m", 0, tiny_plans())
    ckpt = load_checkpoint(path)
    ckpt["model"].pop(next(iter(ckpt["model"])))
    save_checkpoint(ckpt, path)
    model = load_predictor(tmp_path / "m")
    with pytest.raises(PredictorError, match="weights do not fit the unet network"):
        model.networks[0]


def test_unfinished_or_untrained_folds_say_what_to_do(tmp_path):
    save_fold(tmp_path / "m", 0, tiny_plans(), name="checkpoint_best.pt")
    with pytest.raises(PredictorError, match="--checkpoint best"):
        load_predictor(tmp_path / "m")
    with pytest.raises(PredictorError, match="fold 3 was not trained"):
        load_predictor(tmp_path / "m", folds=[3], checkpoint="best")
    with pytest.raises(PredictorError, match="choices: final, best"):
        load_predictor(tmp_path / "m", checkpoint="latest")


def test_folds_from_different_plans_are_refused(tmp_path):
    save_fold(tmp_path / "m", 0, tiny_plans())
    save_fold(tmp_path / "m", 1, tiny_plans(spacing=(2.0, 2.0, 2.0)))
    with pytest.raises(PredictorError, match="other plans"):
        load_predictor(tmp_path / "m")


def test_model_found_in_workspace_by_dataset_config_and_arch(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(PredictorError, match="no trained model"):
        resolve_trained(ws, None)
    save_fold(ws.results_dir(DATASET) / MODEL_NAME, 0, tiny_plans())
    assert find_model_dir(ws) == ws.results_dir(DATASET) / MODEL_NAME
    assert resolve_trained(ws, "901") == DATASET
    save_fold(ws.results_dir(DATASET) / "resenc_unet__autosegPlans__3d_fullres", 0, tiny_plans(), arch="resenc_unet")
    with pytest.raises(PredictorError, match="several trained models"):
        find_model_dir(ws, DATASET)
    assert find_model_dir(ws, DATASET, arch="resenc_unet").name.startswith("resenc_unet")
    with pytest.raises(PredictorError, match="no trained model with --config 2d"):
        find_model_dir(ws, DATASET, config="2d")
    with pytest.raises(PredictorError, match="has no trained model"):
        resolve_trained(ws, "Dataset002_Other")


def test_model_found_by_plans_when_two_plans_trained_the_same_configuration(tmp_path):
    ws = Workspace(tmp_path)
    save_fold(ws.results_dir(DATASET) / MODEL_NAME, 0, tiny_plans())
    other = ws.results_dir(DATASET) / "unet__autosegPlans_resenc_m__3d_fullres"
    save_fold(other, 0, tiny_plans())
    with pytest.raises(PredictorError, match="several trained models.*--plans"):
        find_model_dir(ws, DATASET, arch="unet")
    assert find_model_dir(ws, DATASET, plans="resenc_m") == other
    assert find_model_dir(ws, DATASET, plans="autosegPlans_resenc_m") == other
    assert find_model_dir(ws, DATASET, plans="default") == ws.results_dir(DATASET) / MODEL_NAME
    with pytest.raises(PredictorError, match="no trained model with --plans resenc_l"):
        find_model_dir(ws, DATASET, plans="resenc_l")
