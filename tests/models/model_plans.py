"""Tiny configuration plans for building networks in tests."""

from autoseg.planning.plans import ConfigurationPlan


def make_plan(patch=(16, 16, 16), features=(4, 8, 8), kernels=None, strides=None, blocks=None,
              architecture="unet") -> ConfigurationPlan:
    """A tiny configuration plan: 3-kernels, stride 2 on every axis after the first stage."""
    n, d = len(features), len(patch)
    return ConfigurationPlan(
        name="3d_fullres" if d == 3 else "2d", spatial_dims=d, spacing=(1.0,) * d, median_shape=patch,
        patch_size=patch, batch_size=2, kernel_sizes=kernels or ((3,) * d,) * n,
        strides=strides or ((1,) * d,) + ((2,) * d,) * (n - 1), features=features, batch_dice=False,
        data_identifier="x", blocks_per_stage=blocks or (2,) * n, architecture=architecture)
