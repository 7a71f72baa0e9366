"""Tiny nnU-Net v2 results folders, written the way nnU-Net v2.8.1 writes them (plans.json, dataset.json,
fold_<k>/checkpoint_final.pth with its keys and numpy scalars), with dynamic_network_architectures
networks of 3 stages (4, 8, 16 features) on 16^3 patches. No nnunetv2 needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

DATASET = "Dataset905_TinyNN"
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def arch_kwargs(resenc: bool = False, features=(4, 8, 16)) -> dict:
    n = len(features)
    kw = {"n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
          "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
          "n_conv_per_stage_decoder": [1 if resenc else 2] * (n - 1), "conv_bias": True,
          "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
          "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
          "nonlin_kwargs": {"inplace": True}}
    kw["n_blocks_per_stage" if resenc else "n_conv_per_stage"] = [1, 2, 2][:n] if resenc else [2] * n
    return kw


def plans_dict(resenc: bool = False, scheme: str = "ZScoreNormalization", transpose=(0, 1, 2)) -> dict:
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": [16, 16, 16], "median_image_size_in_voxels": [16.0, 16.0, 16.0],
              "spacing": [1.0, 1.0, 1.0], "normalization_schemes": [scheme], "use_mask_for_norm": [False],
              **resampling,
              "architecture": {"network_class_name": RESENC if resenc else PLAIN, "arch_kwargs": arch_kwargs(resenc),
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": False}
    back = [transpose.index(a) for a in range(3)]
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
            "original_median_shape_after_transp": [16, 16, 16], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": list(transpose), "transpose_backward": back,
            "configurations": {"3d_fullres": config,
                               "3d_lowres_test": {"inherits_from": "3d_fullres", "batch_size": 3}},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {
                "max": 400.0, "mean": 150.0, "median": 140.0, "min": 10.0, "percentile_00_5": 20.0,
                "percentile_99_5": 380.0, "std": 60.0}}}


def dataset_dict(regions: bool = False) -> dict:
    labels = ({"background": 0, "whole": [1, 2], "core": 2} if regions
              else {"background": 0, "organ": 1, "tumour": 2})
    data = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz"}
    if regions:
        data["regions_class_order"] = [1, 2]
    return data


def make_network(resenc: bool = False, outputs: int = 3, seed: int = 0, features=(4, 8, 16)) -> nn.Module:
    """A dynamic_network_architectures network with random weights (also the norms' affine ones)."""
    torch.manual_seed(seed)
    kw = arch_kwargs(resenc, features)
    kw.update(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU, dropout_op=None)
    net = (ResidualEncoderUNet if resenc else PlainConvUNet)(input_channels=1, num_classes=outputs,
                                                             deep_supervision=True, **kw)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return net.eval()


def checkpoint(net: nn.Module, plans: dict, dataset: dict, trainer: str = "nnUNetTrainer", config="3d_fullres",
               mirror_axes=(0, 1, 2)) -> dict:
    """What nnUNetTrainer.save_checkpoint writes (nnunetv2 2.8.1): weights, optimiser, logs with numpy
    scalars, init arguments, trainer name, mirroring axes."""
    return {"network_weights": net.state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.25)], "ema_fg_dice": [np.float64(0.025)],
                        "dice_per_class_or_region": [[np.float32(0.1), np.float32(0.4)]],
                        "train_losses": [np.float32(0.9)], "val_losses": [np.float32(0.8)],
                        "lrs": [0.01], "epoch_start_timestamps": [1.0], "epoch_end_timestamps": [2.0]},
            "_best_ema": np.float64(0.025), "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": config, "fold": 0, "dataset_json": dataset,
                          "device": torch.device("cpu")},
            "trainer_name": trainer, "inference_allowed_mirroring_axes": mirror_axes}


def make_results_folder(root: Path, trainer: str = "nnUNetTrainer", resenc: bool = False, regions: bool = False,
                        folds=(0,), mirror_axes=(0, 1, 2), plans: dict | None = None) -> tuple[Path, list]:
    """``root/<Dataset>/<trainer>__nnUNetPlans__3d_fullres`` with one checkpoint per fold; returns the
    folder and the networks (fold order)."""
    folder = Path(root) / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"
    plans = plans or plans_dict(resenc)
    dataset = dataset_dict(regions)
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    nets = []
    for fold in folds:
        net = make_network(resenc, outputs=2 if regions else 3, seed=fold)
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint(net, plans, dataset, trainer, mirror_axes=mirror_axes),
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
        nets.append(net)
    return folder, nets
