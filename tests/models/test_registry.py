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
    code = ("import sys, autoseg.models, autoseg.planning.planner, autoseg.cli_train, autoseg.cli_predict; "
            "print(sorted(m for m in ('torch', 'monai', 'dynamic_network_architectures') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
