import numpy as np
import pytest
import torch

from autoseg.models.norms import SpatialInstanceNorm, instance_to_group_norm, spatial_instance_norms


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_instance_norm_is_the_same_function_as_the_norms_it_replaces(dims):
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




def test_a_norm_held_at_two_places_is_replaced_by_one_module_at_both():
    norm = torch.nn.InstanceNorm3d(4, affine=True)
    holder = torch.nn.Module()
    holder.norm, holder.all_modules = norm, torch.nn.Sequential(torch.nn.Identity(), norm)
    instance_to_group_norm(holder)
    assert isinstance(holder.norm, torch.nn.GroupNorm) and holder.all_modules[1] is holder.norm
    assert holder.norm.weight is norm.weight
    spatial_instance_norms(holder)
    assert isinstance(holder.norm, SpatialInstanceNorm) and holder.all_modules[1] is holder.norm
