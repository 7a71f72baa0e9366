"""Tiny models and images for the inference tests (3-stage U-Nets, the fewest DynUNet allows; 16^3
patches; random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from autoseg.dataset import DatasetSpec
from autoseg.inference.predictor import Predictor
from autoseg.inference.probabilities import SavedProbabilities, save_probabilities
from autoseg.planning.plans import ConfigurationPlan, NormalizationPlan, Plans
from autoseg.splits import Fold, Splits
from autoseg.workspace import Workspace

DATASET = "Dataset901_Tiny"
MODEL_NAME = "unet__autosegPlans__3d_fullres"


def tiny_plans(spacing=(1.0, 1.0, 1.0), transpose=((0, 1, 2), (0, 1, 2)), channels=("CT",), patch=(16, 16, 16),
               labels=None) -> Plans:
    dims = len(patch)
    name = "3d_fullres" if dims == 3 else "2d"
    config = ConfigurationPlan(name=name, spatial_dims=dims, spacing=tuple(spacing), median_shape=patch,
                               patch_size=tuple(patch), batch_size=2, kernel_sizes=((3,) * dims,) * 3,
                               strides=((1,) * dims, (2,) * dims, (2,) * dims), features=(4, 8, 16),
                               batch_dice=False,
                               data_identifier="3d_fullres")
    return Plans(dataset_name=DATASET, plans_name="autosegPlans", planner="test", transpose_forward=transpose[0],
                 transpose_backward=transpose[1], channel_names=tuple(channels),
                 labels=labels or {"background": 0, "organ": 1, "tumour": 2},
                 normalization=tuple(NormalizationPlan(c, "zscore") for c in channels),
                 configurations={name: config}, default_configuration=name)


def dataset_record(plans: Plans, regions_class_order=None) -> dict:
    return {"name": DATASET, "labels": dict(plans.labels), "channel_names": list(plans.channel_names),
            "regions_class_order": regions_class_order, "ignore_label": None, "file_ending": ".nii.gz"}


def save_fold(model_dir: Path, fold, plans: Plans, seed: int = 0, name: str = "checkpoint_final.pt",
              arch: str = "unet", regions_class_order=None) -> Path:
    """A randomly initialised checkpoint of ``plans``' only configuration, saved like a trained fold."""
    from autoseg.core.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
    from autoseg.models import build_model

    config = next(iter(plans.configurations.values()))
    spec = spec_of(plans, regions_class_order)
    torch.manual_seed(seed)
    net = build_model(arch, config, spec.num_channels, spec.num_outputs, True)
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, "autoseg_version": "test",
            "model": net.state_dict(), "optimizer": {}, "settings": {"deep_supervision": True},
            "plans": plans.to_dict(), "configuration": config.name, "arch": arch, "fold": fold,
            "dataset": dataset_record(plans, regions_class_order)}
    return save_checkpoint(ckpt, Path(model_dir) / f"fold_{fold}" / name)


def spec_of(plans: Plans, regions_class_order=None) -> DatasetSpec:
    return DatasetSpec(name=DATASET, channel_names=plans.channel_names, labels=dict(plans.labels), num_training=0,
                       file_ending=".nii.gz", regions_class_order=regions_class_order)


def oblique_affine(spacing=(0.8, 1.1, 2.5), angles=(0.3, -0.2, 0.5), origin=(-20.5, 13.25, 7.0)) -> np.ndarray:
    """A rotated (non-axis-aligned) voxel-to-world affine with anisotropic spacing."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def blob_image(shape=(20, 18, 10), seed=0, border=2) -> np.ndarray:
    """Noise on a positive background with a bright ellipsoid, and a zero border (cropping matters)."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    r = (((grid - centre) / (np.array(shape)[:, None, None, None] / 4)) ** 2).sum(0)
    inner = tuple(slice(border, s - border) for s in shape)
    img[inner] = 100 + rng.normal(0, 5, size=img[inner].shape)
    img[inner] += 200 * (r[inner] < 1)
    return img


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(array, oblique_affine() if affine is None else affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


class PointwiseNet(nn.Module):
    """Logits ``(0, a*x + b, c*x + d)`` per voxel of channel 0 (a 1x1x1 convolution): flip-equivariant,
    and its output is known in closed form."""

    def __init__(self, weights=(1.0, 0.0, -1.0, -2.0), spatial_dims=3):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(1, 3, 1)
        with torch.no_grad():
            a, b, c, d = weights
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight.view(3, -1)[1, 0], self.conv.bias[1] = a, b
            self.conv.weight.view(3, -1)[2, 0], self.conv.bias[2] = c, d
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x[:, :1])


# --- cross-validation results (postprocess, find-best) -------------------------------------------

CASES = ["c0", "c1", "c2", "c3"]
SPLITS = Splits(folds=(Fold(train=("c2", "c3"), val=("c0", "c1")), Fold(train=("c0", "c1"), val=("c2", "c3"))),
                seed=0)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
A, B = "unet__autosegPlans__3d_fullres", "unet__autosegPlans__2d"


def cube(shift=0):
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[4 + shift:8 + shift, 4:8, 4:8] = 1
    return seg


def save_label_map(path, seg):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(seg, AFFINE), str(path))


def validation(model_dir, make_seg, probabilities=True, folds=(0, 1)):
    """Fold folders with a checkpoint and validation predictions made by ``make_seg()``."""
    for k in folds:
        save_fold(model_dir, k, tiny_plans())
        val = model_dir / f"fold_{k}" / "validation"
        for case in SPLITS.folds[k].val:
            seg = make_seg()
            save_label_map(val / f"{case}.nii.gz", seg)
            if probabilities:
                probs = np.stack([np.where(seg == 0, 0.9, 0.1), np.where(seg == 1, 0.9, 0.1)]).astype(np.float32)
                save_probabilities(val / f"{case}.npz", SavedProbabilities(probs, ((0, 12),) * 3, seg.shape))
        (val / "summary.json").write_text("{}")


def crossval_workspace(root: Path) -> Workspace:
    """A workspace whose dataset has two trained models (A: 3d_fullres, B: 2d), each with 2 folds of
    finished validation predictions (A's with a small false-positive island, B's shifted by a voxel)
    and probabilities, for `postprocess` and `find-best`."""
    ws = Workspace(root)
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 4,
                    "file_ending": ".nii.gz"}
    for folder in (ws.raw / DATASET, ws.preprocessed_dir(DATASET)):
        folder.mkdir(parents=True)
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for case in CASES:
        save_label_map(ws.raw / DATASET / "labelsTr" / f"{case}.nii.gz", cube())
    SPLITS.save(ws.preprocessed_dir(DATASET) / "splits.json")

    def with_island():
        seg = cube()
        seg[0, 0, :2] = 1  # a small false positive far from the organ
        return seg

    results = ws.results_dir(DATASET)
    validation(results / A, with_island)
    validation(results / B, lambda: cube(shift=1))
    return ws


def hand_predictor(plans: Plans, networks, postprocessing=None) -> Predictor:
    config = next(iter(plans.configurations.values()))
    return Predictor(model_dir=Path("."), plans=plans, config=config, spec=spec_of(plans), arch="hand",
                     folds=tuple(range(len(networks))), checkpoint="final", networks=tuple(networks),
                     postprocessing=postprocessing)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield
