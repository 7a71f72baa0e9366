import random

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD

from autoseg.models import ModelError, build_model, get_architecture
from autoseg.planning.settings import load_preset
from autoseg.planning.topology import network_topology, stage_features
from model_plans import make_plan


def plan(**kwargs):
    return make_plan(architecture="resenc_unet", **kwargs)


def test_resenc_is_nnunets_residual_encoder_unet_with_the_plans_blocks():
    net = build_model("resenc_unet", plan(features=(4, 8, 8, 8), blocks=(1, 3, 2, 1)), 1, 3)
    assert isinstance(net, ResidualEncoderUNet)
    assert [len(s.blocks) for s in net.encoder.stages] == [1, 3, 2, 1]
    assert all(isinstance(b, BasicBlockD) for s in net.encoder.stages for b in s.blocks)
    assert net.encoder.stem is not None and len(net.encoder.stem.convs) == 1
    assert [len(s.convs) for s in net.decoder.stages] == [1, 1, 1]  # one conv per decoder stage
    assert len(net.decoder.seg_layers) == 3


def test_state_dict_names_and_shapes_are_those_of_nnunets_network():
    p = plan(features=(4, 8, 16, 16), blocks=(1, 3, 4, 6))
    ours = build_model("resenc_unet", p, 2, 3).state_dict()
    theirs = ResidualEncoderUNet(
        2, 4, (4, 8, 16, 16), torch.nn.Conv3d, [[3] * 3] * 4, [[1] * 3] + [[2] * 3] * 3, (1, 3, 4, 6), 3, (1, 1, 1),
        True, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
        {"inplace": True}, deep_supervision=True).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]


def test_deep_supervision_drops_the_weight_zero_output_and_freezes_only_its_head():
    net = build_model("resenc_unet", plan(features=(4, 8, 8, 8)), 1, 3, deep_supervision=True).train()
    outs = net(torch.randn(2, 1, 16, 16, 16))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]  # not the 4^3 one
    sum(o.sum() for o in outs).backward()
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"]
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)  # DDP: none unused
    assert tuple(net.eval()(torch.randn(1, 1, 16, 16, 16)).shape) == (1, 3, 16, 16, 16)


def test_eval_output_equals_the_packages_own_forward():
    p = plan(features=(4, 8, 8, 8))
    torch.manual_seed(0)
    net = build_model("resenc_unet", p, 1, 3, deep_supervision=True).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.allclose(net(x), ResidualEncoderUNet.forward(net, x), atol=1e-6)


def test_three_stages_give_one_output_and_2d_plans_build():
    out = build_model("resenc_unet", plan(), 1, 3, deep_supervision=True).train()(torch.randn(2, 1, 16, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 16, 16, 16)
    assert build_model("resenc_unet", plan(patch=(16, 16)), 1, 2).eval()(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_initialisation_zeroes_the_last_norm_of_each_residual_block():
    net = build_model("resenc_unet", plan(features=(4, 8, 8, 8), blocks=(1, 2, 2, 2)), 1, 3)
    blocks = [b for s in net.encoder.stages for b in s.blocks]
    assert all(torch.count_nonzero(b.conv2.norm.weight) == 0 for b in blocks)


def test_a_resenc_plan_without_blocks_per_stage_is_a_clear_error():
    from dataclasses import replace

    with pytest.raises(ModelError, match="block counts do not describe one residual-encoder U-Net"):
        build_model("resenc_unet", replace(plan(), blocks_per_stage=()), 1, 2)


def test_plans_made_for_another_architecture_get_nnunets_blocks():
    # `train --arch resenc_unet` on the default plans: their blocks_per_stage count plain convs (2, 2, ...)
    net = build_model("resenc_unet", make_plan(features=(4, 8, 8, 8, 8)), 1, 3)
    assert [len(s.blocks) for s in net.encoder.stages] == [1, 3, 4, 6, 6]


def test_planner_estimate_is_the_networks_own_feature_map_count():
    # nnU-Net's ResEnc planners budget memory with ResidualEncoderUNet.compute_conv_feature_map_size
    arch, settings = get_architecture("resenc_unet"), load_preset("resenc_l")
    rng = random.Random(0)
    for _ in range(12):
        dims = rng.choice([2, 3])
        spacing = [rng.choice([0.8, 1.0, 2.5, 5.0]) for _ in range(dims)]
        topo = network_topology(spacing, [rng.randint(12, 160) for _ in range(dims)])
        n = topo.n_stages
        features = stage_features(n, 32, settings.max_features(dims))
        p = plan(patch=topo.patch_size, features=features, kernels=topo.kernel_sizes, strides=topo.strides,
                 blocks=settings.encoder_blocks(n))
        with torch.device("meta"):
            net = build_model("resenc_unet", p, 1, 3)
        expected = int(net.compute_conv_feature_map_size(topo.patch_size))
        assert arch.estimate(topo, features, 3, settings.encoder_blocks(n), settings.decoder_blocks(n)) == expected
