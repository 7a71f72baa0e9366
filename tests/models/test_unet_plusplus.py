import torch

from autoseg.models import build_model, get_architecture
from autoseg.planning.settings import load_preset
from conv_outputs import conv_output_elements
from model_plans import entry_plan


def test_features_are_monais_default_for_base_32():
    assert get_architecture("unet_plusplus").features(5, 3, load_preset("unet_plusplus")) == (32, 32, 64, 128, 256, 32)


def test_estimate_counts_the_networks_convolution_outputs():
    plan = entry_plan("unet_plusplus", (32, 32, 48))
    net = build_model("unet_plusplus", plan, 1, 3)
    x = torch.randn(1, 1, *plan.patch_size)
    topo = get_architecture("unet_plusplus").layout((1.0,) * 3, plan.patch_size, load_preset("unet_plusplus"))
    assert get_architecture("unet_plusplus").estimate(topo, plan.features, 3, (), ()) == conv_output_elements(net, x)


def test_one_output_and_only_the_used_head_is_trained():
    plan = entry_plan("unet_plusplus", (32, 32, 32))
    net = build_model("unet_plusplus", plan, 1, 3, deep_supervision=True).train()
    out = net(torch.randn(2, 1, *plan.patch_size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *plan.patch_size)
    out.sum().backward()
    frozen = {n.split(".")[1] for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"final_conv_0_1", "final_conv_0_2", "final_conv_0_3"}
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
