import pytest
import torch

from autoseg.models import ModelError, build_model, get_architecture
from autoseg.models.unetr import conv_feature_map_size, transformer_activations
from autoseg.planning.settings import load_preset
from conv_outputs import conv_output_elements
from model_plans import entry_plan, make_plan


def test_paper_sizes_at_feature_size_16():
    assert get_architecture("unetr").features(5, 3, load_preset("unetr")) == (16, 32, 64, 128, 768)


def test_convolution_part_of_the_estimate_counts_the_networks_convolution_outputs():
    plan = entry_plan("unetr", (32, 32, 48))
    net = build_model("unetr", plan, 1, 3)
    assert conv_feature_map_size(plan.patch_size, plan.features, 3) == conv_output_elements(
        net, torch.randn(1, 1, *plan.patch_size))


def test_transformer_activations_grow_with_the_square_of_the_tokens():
    one, eight = transformer_activations(1, 768), transformer_activations(8, 768)
    assert eight - 8 * one == 12 * 2 * 12 * (64 - 8)


def test_the_network_is_built_for_the_planned_patch_and_checks_it():
    plan = entry_plan("unetr", (32, 32, 32))
    assert build_model("unetr", plan, 1, 3).eval()(torch.randn(1, 1, *plan.patch_size)).shape == (1, 3, *plan.patch_size)
    with pytest.raises(ModelError, match="divisible by 16"):
        build_model("unetr", make_plan(patch=(24, 32, 32)), 1, 3)
