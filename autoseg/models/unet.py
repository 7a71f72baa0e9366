"""Architecture entry ``unet``: nnU-Net's plain U-Net (MONAI DynUNet, :mod:`autoseg.models.dynunet`).

Planned as nnU-Net v2's default ``ExperimentPlanner`` plans its ``PlainConvUNet``
(``nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py``): the pooling
layout of ``get_pool_and_conv_props`` (:func:`~autoseg.planning.topology.network_topology`), features
doubling from ``base_features`` up to the cap, memory as the feature-map count of the plain network
(:func:`~autoseg.planning.topology.estimate_feature_map_size`). Preset: ``planners/default.toml``.
"""

from __future__ import annotations

from autoseg.models.architecture import Architecture
from autoseg.planning.settings import PlannerSettings
from autoseg.planning.topology import Topology, estimate_feature_map_size, network_topology, stage_features
from autoseg.planning.trainable import unet_problems


def nnunet_layout(spacing, patch, settings: PlannerSettings) -> Topology:
    """nnU-Net's adaptive layout (also used by the residual-encoder U-Net)."""
    return network_topology(spacing, patch, settings.min_feature_map_edge, settings.single_axis_pool_factor,
                            settings.patch_divisible_by)


def nnunet_features(n_stages: int, dims: int, settings: PlannerSettings) -> tuple[int, ...]:
    return stage_features(n_stages, settings.base_features, settings.max_features(dims))


def plain_estimate(topology: Topology, features, n_classes: int, encoder_blocks, decoder_blocks) -> int:
    return estimate_feature_map_size(topology.patch_size, topology.strides, features, n_classes, encoder_blocks,
                                     decoder_blocks)


def build(plan, in_channels: int, out_channels: int, deep_supervision: bool):
    from autoseg.models.dynunet import build_dynunet  # torch and MONAI load only when a network is made

    return build_dynunet(plan, in_channels, out_channels, deep_supervision)


ARCHITECTURE = Architecture(
    name="unet",
    summary="nnU-Net's plain U-Net (2 convs per stage; MONAI DynUNet)",
    preset="default",
    deep_supervision=True,
    head_names=("output_block", "deep_supervision_heads", "super_head"),
    layout=nnunet_layout,
    features=nnunet_features,
    estimate=plain_estimate,
    build=build,
    problems=unet_problems,
)
