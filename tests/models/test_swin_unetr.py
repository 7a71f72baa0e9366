import pytest
import torch

from autoseg.models import ModelError, build_model
from autoseg.models.swin_unetr import swin_feature_size, swin_features, swin_topology
from model_plans import make_plan as plan


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


def test_swin_topology_is_fixed_and_divisible_by_32():
    t = swin_topology((35, 50, 35))
    assert t.patch_size == (32, 64, 32)
    assert t.num_pools == (5, 5, 5) and t.n_stages == 6
    assert swin_topology((20, 200, 15)).patch_size == (32, 192, 32)


def test_swin_topology_never_leaves_a_single_voxel_bottleneck():
    assert swin_topology((30, 40, 33)).patch_size == (32, 64, 32)  # largest requested edge doubled
    assert swin_topology((20, 20, 20)).patch_size == (32, 32, 64)  # ties: the last axis
    assert swin_topology((40, 20)).patch_size == (64, 32)
    assert swin_features(48) == (48, 48, 96, 192, 384, 768)


