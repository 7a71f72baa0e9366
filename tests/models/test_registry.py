import numpy as np
import pytest
import torch
from monai.networks.blocks.dynunet_block import UnetResBlock

from autoseg.models import MODELS, ModelError, build_model
from autoseg.models.registry import swin_feature_size
from autoseg.planning.plans import ConfigurationPlan


def plan(patch=(16, 16, 16), features=(4, 8, 8), kernels=None, strides=None) -> ConfigurationPlan:
    n, d = len(features), len(patch)
    return ConfigurationPlan(
        name="3d_fullres" if d == 3 else "2d", spatial_dims=d, spacing=(1.0,) * d, median_shape=patch,
        patch_size=patch, batch_size=2, kernel_sizes=kernels or ((3,) * d,) * n,
        strides=strides or ((1,) * d,) + ((2,) * d,) * (n - 1), features=features, batch_dice=False,
        data_identifier="x")


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


def test_resenc_unet_is_built_from_residual_blocks():
    net = build_model("resenc_unet", plan(), 1, 3, deep_supervision=False)
    assert any(isinstance(m, UnetResBlock) for m in net.modules())
    assert not any(isinstance(m, UnetResBlock) for m in build_model("unet", plan(), 1, 3).modules())
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ModelError, match="unknown architecture 'vnet'.*unet.*resenc_unet.*swin_unetr"):
        build_model("vnet", plan(), 1, 2)
    assert set(MODELS) == {"unet", "resenc_unet", "swin_unetr", "nnunet"}


def test_too_few_stages_is_a_clear_error():
    with pytest.raises(ModelError, match="at least 3 stages"):
        build_model("unet", plan(features=(4, 8)), 1, 2)


def test_swin_unetr_checks_its_size_constraints():
    with pytest.raises(ModelError, match="divisible by 32"):
        build_model("swin_unetr", plan(patch=(32, 32, 48), features=(12, 24, 48)), 1, 2)
    with pytest.raises(ModelError, match="single voxel"):
        build_model("swin_unetr", plan(patch=(32, 32, 32), features=(12, 24, 48)), 1, 2)


@pytest.mark.parametrize("f0, size", [(12, 12), (32, 36), (48, 48), (4, 12)])
def test_swin_feature_size_is_the_plans_first_features_rounded_up_to_twelve(f0, size):
    assert swin_feature_size(f0) == size


def test_swin_unetr_builds_with_single_output():
    net = build_model("swin_unetr", plan(patch=(32, 32, 64), features=(12, 24, 48)), 1, 3, deep_supervision=True)
    assert net.eval()(torch.randn(1, 1, 32, 32, 64)).shape == (1, 3, 32, 32, 64)


@pytest.mark.parametrize("dims", [2, 3])
def test_group_norm_swap_computes_instance_norm_and_keeps_the_parameter_names(dims):
    from monai.networks.nets import DynUNet

    from autoseg.models.registry import instance_to_group_norm

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
def test_spatial_instance_norm_is_the_same_function_as_the_norms_it_replaces(dims):
    from autoseg.models.registry import SpatialInstanceNorm, spatial_instance_norms

    torch.manual_seed(0)
    group = torch.nn.GroupNorm(4, 4, eps=1e-5)
    torch.nn.init.uniform_(group.weight, 0.5, 1.5)
    torch.nn.init.uniform_(group.bias, -0.5, 0.5)
    instance = {2: torch.nn.InstanceNorm2d, 3: torch.nn.InstanceNorm3d}[dims]
    norms = [group, instance(4, affine=True), instance(4, affine=False), instance(4, eps=1e-3)]
    x = 3 * torch.randn(2, 4, *(6,) * dims) + 1
    for norm in norms:
        np.testing.assert_allclose(SpatialInstanceNorm(norm)(x).detach(), norm(x).detach(), atol=2e-5)
    wrapped = torch.nn.Sequential(*norms, torch.nn.GroupNorm(2, 4), torch.nn.BatchNorm1d(4),
                                  instance(4, track_running_stats=True))
    spatial_instance_norms(wrapped)
    # the per-channel norms are replaced; grouped, batch and running-statistics norms are not
    assert [type(m).__name__ for m in wrapped] == ["SpatialInstanceNorm"] * 4 + [
        "GroupNorm", "BatchNorm1d", instance.__name__]
    assert wrapped[0].weight is group.weight  # shares the parameters


@pytest.mark.parametrize("dims", [2, 3])
def test_concat_free_up_blocks_compute_the_same_outputs_and_gradients_with_the_same_parameter_names(dims):
    import copy

    from monai.networks.nets import DynUNet

    from autoseg.models.registry import ConcatFreeUpBlock, concat_free_up_blocks

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


def test_unet_and_resenc_unet_decoders_are_concat_free():
    from autoseg.models.registry import ConcatFreeUpBlock

    for arch in ("unet", "resenc_unet"):  # DynUNet's decoder is plain in both (res_block is encoder-only)
        assert any(isinstance(m, ConcatFreeUpBlock) for m in build_model(arch, plan(), 1, 3).modules()), arch
