import torch

from autoseg.models import build_model, get_architecture
from autoseg.planning.settings import load_preset
from conv_outputs import conv_output_elements
from model_plans import entry_plan


def test_estimate_counts_the_networks_convolution_outputs():
    plan = entry_plan("mednext", (32, 32, 48))
    net = build_model("mednext", plan, 1, 3, deep_supervision=False)
    topo = get_architecture("mednext").layout((1.0,) * 3, plan.patch_size, load_preset("mednext"))
    expected = conv_output_elements(net, torch.randn(1, 1, *plan.patch_size))
    assert get_architecture("mednext").estimate(topo, plan.features, 3, (), ()) == expected


def test_deep_supervision_drops_the_weight_zero_output_and_freezes_only_its_head():
    plan = entry_plan("mednext", (32, 32, 32))
    net = build_model("mednext", plan, 1, 3, deep_supervision=True).train()
    outs = net(torch.randn(2, 1, *plan.patch_size))
    assert [tuple(o.shape[2:]) for o in outs] == [(32,) * 3, (16,) * 3, (8,) * 3, (4,) * 3]  # not the 2^3 one
    sum(o.sum() for o in outs).backward()
    frozen = {n.rsplit(".", 1)[0] for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("net.out_blocks.0.") for n in frozen)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert net.eval()(torch.randn(1, 1, *plan.patch_size)).shape == (1, 3, *plan.patch_size)
