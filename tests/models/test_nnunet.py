"""nnU-Net v2 networks from the architecture entry of nnU-Net's plans (models imported with `autoseg import`)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from autoseg.models import ARCHITECTURES, ModelError, build_model, get_architecture
from autoseg.models.nnunet import build_nnunet_network, nnunet_network_from_plans
from autoseg.planning.plans import ConfigurationPlan



def _nnunet_folder_module():
    """tests/inference/nnunet_folder.py (tiny nnU-Net folders), imported by path from this folder."""
    if "nnunet_folder" not in sys.modules:
        path = Path(__file__).parents[1] / "inference" / "nnunet_folder.py"
        spec = importlib.util.spec_from_file_location("nnunet_folder", path)
        sys.modules["nnunet_folder"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["nnunet_folder"])
    return sys.modules["nnunet_folder"]


make_network, plans_dict = _nnunet_folder_module().make_network, _nnunet_folder_module().plans_dict


def _config(resenc=False):
    return plans_dict(resenc)["configurations"]["3d_fullres"]


@pytest.mark.parametrize("resenc", [False, True], ids=["plain", "resenc"])
def test_built_network_takes_the_weights_of_nnunets_network(resenc):
    spec = nnunet_network_from_plans(_config(resenc), "plans.json")
    net = build_nnunet_network(spec, 1, 3)
    source = make_network(resenc)
    net.load_state_dict(source.state_dict(), strict=True)  # same names and shapes as dynamic_network_architectures'
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), source(x)[0])  # source has deep supervision: full resolution first


def test_older_plans_format_gives_the_same_network():
    new = _config()
    old = {k: v for k, v in new.items() if k != "architecture"}
    old.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=4, unet_max_num_features=16,
               n_conv_per_stage_encoder=[2, 2, 2], n_conv_per_stage_decoder=[2, 2],
               conv_kernel_sizes=[[3, 3, 3]] * 3, pool_op_kernel_sizes=[[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    a, b = nnunet_network_from_plans(new, "new"), nnunet_network_from_plans(old, "old")
    assert (a.class_name, a.features_per_stage, a.strides, a.blocks_per_stage, a.norm_op) == \
        (b.class_name, b.features_per_stage, b.strides, b.blocks_per_stage, b.norm_op)


@pytest.mark.parametrize("key, value, words", [
    ("nonlin", "torch.nn.Hardswish", "'nonlin'"),
    ("conv_op", "my.Conv3d", "'conv_op'"),
    ("block", "BottleneckD", "block"),
])
def test_unsupported_arguments_are_named(key, value, words):
    config = _config(resenc=True)
    config["architecture"]["arch_kwargs"][key] = value
    with pytest.raises(ModelError, match=words):
        nnunet_network_from_plans(config, "plans.json")


def test_nnunet_is_an_imported_entry_not_a_trainable_one():
    assert "nnunet" not in ARCHITECTURES and get_architecture("nnunet").name == "nnunet"
    with pytest.raises(ModelError, match="does not plan or train"):
        get_architecture("nnunet").layout((1.0,) * 3, (32,) * 3, None)


def test_architecture_nnunet_cannot_be_built_from_autoseg_plans():
    plan = ConfigurationPlan(name="3d_fullres", spatial_dims=3, spacing=(1.0,) * 3, median_shape=(16,) * 3,
                             patch_size=(16,) * 3, batch_size=2, kernel_sizes=((3, 3, 3),) * 3,
                             strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), features=(4, 8, 16), batch_dice=False,
                             data_identifier="3d_fullres")
    with pytest.raises(ModelError, match="imported from nnU-Net"):
        build_model("nnunet", plan, 1, 3)
