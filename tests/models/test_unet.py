import numpy as np
import pytest
import torch

from autoseg.models import ModelError, build_model
from autoseg.models.dynunet import ConcatFreeUpBlock, concat_free_up_blocks
from autoseg.models.norms import instance_to_group_norm
from model_plans import make_plan as plan


def test_unet_deep_supervision_returns_outputs_at_their_own_resolution_without_the_weight_zero_one():
    net = build_model("unet", plan(features=(4, 8, 8, 8)), 1, 3, deep_supervision=True).train()
    outs = net(torch.randn(2, 1, 16, 16, 16))
    # 4 stages -> 3 decoder outputs (16^3, 8^3, 4^3); the 4^3 one has weight 0 and is not built
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
    assert tuple(net.eval()(torch.randn(1, 1, 16, 16, 16)).shape) == (1, 3, 16, 16, 16)


def test_unet_every_parameter_gets_a_gradient_with_deep_supervision():
    net = build_model("unet", plan(features=(4, 8, 8, 8)), 1, 2, deep_supervision=True).train()
    sum(o.sum() for o in net(torch.randn(2, 1, 16, 16, 16))).backward()
    assert all(p.grad is not None for p in net.parameters())  # DDP needs no find_unused_parameters


def test_three_stage_unet_has_a_single_output_even_with_deep_supervision():
    out = build_model("unet", plan(), 1, 3, deep_supervision=True).train()(torch.randn(1, 1, 16, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 16, 16, 16)


def test_unet_follows_the_plans_anisotropic_kernels_and_strides():
    p = plan(patch=(4, 16, 16), kernels=((1, 3, 3), (1, 3, 3), (3, 3, 3)),
             strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
    net = build_model("unet", p, 2, 2, deep_supervision=False)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].kernel_size == (1, 3, 3) and convs[0].in_channels == 2
    assert any(m.stride == (1, 2, 2) for m in convs)
    assert net(torch.randn(1, 2, 4, 16, 16)).shape == (1, 2, 4, 16, 16)


def test_unet_2d_configuration():
    net = build_model("unet", plan(patch=(16, 16)), 1, 2, deep_supervision=False)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_too_few_stages_is_a_clear_error():
    # 2 stages (one downsampling) build since plans that train were made the rule; 1 does not
    with pytest.raises(ModelError, match="at least 2 stages"):
        build_model("unet", plan(features=(4,)), 1, 2)


@pytest.mark.parametrize("dims", [2, 3])
def test_group_norm_swap_computes_instance_norm_and_keeps_the_parameter_names(dims):
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    net = DynUNet(dims, 2, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                  filters=[4, 8, 8], norm_name=("INSTANCE", {"affine": True, "eps": 1e-5}))
    for m in net.modules():  # non-trivial scale and shift
        if isinstance(m, torch.nn.InstanceNorm3d | torch.nn.InstanceNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(2, 2, *(16,) * dims)
    before, keys = net(x), list(net.state_dict())  # an InstanceNorm checkpoint...
    state = {k: v.clone() for k, v in net.state_dict().items()}
    swapped = instance_to_group_norm(net)
    assert not any(isinstance(m, torch.nn.InstanceNorm3d | torch.nn.InstanceNorm2d) for m in swapped.modules())
    assert list(swapped.state_dict()) == keys
    swapped.load_state_dict(state)  # ...loads into the swapped network
    assert torch.allclose(swapped(x), before, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_concat_free_up_blocks_compute_the_same_outputs_and_gradients_with_the_same_parameter_names(dims):
    import copy

    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    net = DynUNet(dims, 2, 3, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                  filters=[4, 8, 16, 16], norm_name=("INSTANCE", {"affine": True, "eps": 1e-5}))
    changed = concat_free_up_blocks(copy.deepcopy(net))
    assert len({id(m) for m in changed.modules() if isinstance(m, ConcatFreeUpBlock)}) == 3
    assert list(changed.state_dict()) == list(net.state_dict())
    x = torch.randn(2, 2, *(16,) * dims)
    for mode in (True, False):
        net.train(mode), changed.train(mode)
        net.zero_grad(), changed.zero_grad()
        a, b = net(x), changed(x)
        assert torch.allclose(a, b, atol=1e-5), mode
        if not mode:  # eval runs MONAI's own forward: bit-identical
            assert torch.equal(a, b)
            continue
        (a * a).sum().backward(), (b * b).sum().backward()
        for (name, p), q in zip(net.named_parameters(), changed.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-4 * float(p.grad.abs().max())), name


def test_unet_decoder_is_concat_free():
    assert any(isinstance(m, ConcatFreeUpBlock) for m in build_model("unet", plan(), 1, 3).modules())
