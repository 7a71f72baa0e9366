import subprocess
import sys

import pytest
import torch

from autoseg.models import ARCHITECTURES, ModelError, build_model, get_architecture
from autoseg.planning.settings import available_presets, load_preset
from model_plans import entry_plan, make_plan


def tiny(name):
    """The entry's own plan for a 32^3 request (4 stages for nnU-Net's layout)."""
    return entry_plan(name, (32, 32, 32))


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ModelError, match="unknown architecture 'vnet'; choices: unet, resenc_unet, swin_unetr"):
        build_model("vnet", make_plan(), 1, 2)
    assert list(ARCHITECTURES)[:3] == ["unet", "resenc_unet", "swin_unetr"]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_entry_builds_a_network_that_keeps_the_conventions(name):
    arch, plan = get_architecture(name), tiny(name)
    torch.manual_seed(0)
    net = build_model(name, plan, 1, 3, deep_supervision=True).train()
    x = torch.randn(2, 1, *plan.patch_size)
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    assert isinstance(out, list) == arch.deep_supervision  # 4+ stages: 2+ supervised outputs
    assert outs[0].shape == (2, 3, *plan.patch_size)
    assert all(o.shape[2] <= outs[0].shape[2] for o in outs)
    assert net.eval()(x[:1]).shape == (1, 3, *plan.patch_size)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_entry_names_heads_that_exist_and_only_heads_depend_on_the_class_count(name):
    arch, plan = get_architecture(name), tiny(name)
    three, five = (build_model(name, plan, 1, c).state_dict() for c in (3, 5))
    heads = [k for k in three if arch.is_head(k)]
    assert heads
    differing = [k for k in three if three[k].shape != five[k].shape]
    assert differing and all(arch.is_head(k) for k in differing)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_entry_has_a_preset_that_plans_for_it(name):
    arch = get_architecture(name)
    assert arch.preset in available_presets()
    assert load_preset(arch.preset).architecture == name


def test_the_registry_and_the_planner_import_no_torch():
    code = ("import sys, autoseg.models, autoseg.planning.planner, autoseg.cli.train, autoseg.cli.predict; "
            "print(sorted(m for m in ('torch', 'monai', 'dynamic_network_architectures') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_too_few_stages_is_a_clear_error():
    with pytest.raises(ModelError, match="at least 2 stages.*rerun `autoseg plan`"):
        build_model("unet", make_plan(features=(4,)), 1, 2)


@pytest.mark.parametrize("arch", ["unet", "resenc_unet"])
@pytest.mark.parametrize("patch", [(12, 16), (16, 12, 16)])
def test_two_stage_unet_builds_and_trains(arch, patch):
    """One downsampling is enough (nnU-Net plans such networks for small images); MONAI's DynUNet
    alone refuses fewer than 3 stages."""
    net = build_model(arch, make_plan(patch=patch, features=(4, 8), architecture=arch), 1, 3,
                      deep_supervision=True).train()
    out = net(torch.randn(2, 1, *patch))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *patch)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert net.eval()(torch.randn(1, 1, *patch)).shape == (1, 3, *patch)


@pytest.mark.parametrize("patch, strides, words", [
    ((10, 16, 16), None, "not divisible by"),  # 10 does not halve twice: the decoder's maps would not fit
    ((4, 4, 4), None, "single-voxel bottleneck"),
    ((16, 16, 16), ((1, 1, 1), (2, 2)), "need 3 entries"),
])
def test_plans_the_network_cannot_take_are_refused_before_building(patch, strides, words):
    from autoseg.models.registry import check_buildable

    p = make_plan(patch=patch, strides=strides, features=(4, 8, 8) if strides is None else (4, 8))
    with pytest.raises(ModelError, match=words):
        check_buildable("unet", p)


def test_swin_unetr_plans_it_cannot_take_are_refused_before_building():
    from autoseg.models.registry import check_buildable

    with pytest.raises(ModelError, match="divisible by 32"):
        check_buildable("swin_unetr", make_plan(patch=(32, 32, 48), features=(12, 24, 48), architecture="swin_unetr"))
    with pytest.raises(ModelError, match="single voxel"):
        check_buildable("swin_unetr", make_plan(patch=(32, 32, 32), features=(12, 24, 48), architecture="swin_unetr"))
