import torch

from autoseg.models import build_model, get_architecture
from autoseg.planning.settings import load_preset
from conv_outputs import conv_output_elements
from model_plans import entry_plan


def test_layout_is_four_halvings_with_edges_multiple_of_16():
    arch, settings = get_architecture("segresnet"), load_preset("segresnet")
    topo = arch.layout((1.0, 1.0, 1.0), (35, 50, 35), settings)
    assert topo.patch_size == (32, 48, 32) and topo.divisible_by == (16, 16, 16) and topo.n_stages == 5
    assert arch.features(5, 3, settings) == (32, 64, 128, 256, 512)


def test_estimate_counts_the_networks_convolution_outputs():
    plan = entry_plan("segresnet", (32, 32, 48))
    net = build_model("segresnet", plan, 1, 3)
    x = torch.randn(1, 1, *plan.patch_size)
    topo = get_architecture("segresnet").layout((1.0,) * 3, plan.patch_size, load_preset("segresnet"))
    assert get_architecture("segresnet").estimate(topo, plan.features, 3, (), ()) == conv_output_elements(net, x)
