"""Tiny configuration plans for building networks in tests."""

from autoseg.models import get_architecture
from autoseg.planning.plans import ConfigurationPlan
from autoseg.planning.settings import load_preset


def make_plan(patch=(16, 16, 16), features=(4, 8, 8), kernels=None, strides=None, blocks=None,
              architecture="unet") -> ConfigurationPlan:
    """A tiny configuration plan: 3-kernels, stride 2 on every axis after the first stage."""
    n, d = len(features), len(patch)
    return ConfigurationPlan(
        name="3d_fullres" if d == 3 else "2d", spatial_dims=d, spacing=(1.0,) * d, median_shape=patch,
        patch_size=patch, batch_size=2, kernel_sizes=kernels or ((3,) * d,) * n,
        strides=strides or ((1,) * d,) + ((2,) * d,) * (n - 1), features=features, batch_dice=False,
        data_identifier="x", blocks_per_stage=blocks or (2,) * n, architecture=architecture)


def entry_plan(name: str, request=(16, 16, 16), base_features: int = 4) -> ConfigurationPlan:
    """The plan an architecture's own layout and feature rules give a small patch request."""
    arch = get_architecture(name)
    settings = load_preset(arch.preset).replace(base_features=base_features)
    topo = arch.layout((1.0,) * len(request), request, settings)
    d = len(request)
    return ConfigurationPlan(
        name="3d_fullres" if d == 3 else "2d", spatial_dims=d, spacing=(1.0,) * d, median_shape=topo.patch_size,
        patch_size=topo.patch_size, batch_size=2, kernel_sizes=topo.kernel_sizes, strides=topo.strides,
        features=arch.features(topo.n_stages, d, settings), batch_dice=False, data_identifier="x",
        architecture=name, blocks_per_stage=settings.encoder_blocks(topo.n_stages))
