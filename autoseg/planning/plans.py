"""The plans artifact (``plans.json``): everything later stages need to preprocess, train and predict.

One dataset can hold several plans side by side, one per planner preset (as nnU-Net keeps
``nnUNetPlans.json`` next to ``nnUNetResEncUNetMPlans.json``): the default preset's plans are named
``autosegPlans`` and written to ``plans.json``; preset ``P`` gives ``autosegPlans_P`` in
``plans_P.json``. Each has its own preprocessed folders (``<plans_name>_<data_identifier>``) and run
folders (``<arch>__<plans_name>__<config>``); fingerprint and splits are shared.

Axis order: every per-axis tuple here is in the *transposed* order used inside preprocessed data
(``transpose_forward`` applied to the (X, Y, Z) file order; the coarsest axis comes first, so the
``2d`` configuration slices along axis 0). Spacings in mm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from autoseg.artifacts import Artifact
from autoseg.planning.settings import DEFAULT_ARCHITECTURE

PLANS_SCHEMA_VERSION = 1
DEFAULT_PRESET = "default"
DEFAULT_PLANS_NAME = "autosegPlans"
_PRESET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(?:_[A-Za-z0-9.-]+)*$")  # no "__": it splits run folders


@dataclass(frozen=True)
class NormalizationPlan:
    """How one channel is normalised.

    scheme: "ct" (clip to [clip_low, clip_high], then (x - mean) / std with dataset foreground
    statistics), "zscore" (per image, over the non-zero mask when ``use_mask``), "rescale_0_1",
    "rgb_0_1" (divided by 255) or "none".
    """

    channel_name: str
    scheme: str
    use_mask: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class ResamplingPlan:
    """Interpolation orders. ``order_z`` is used along a thick axis when the spacing ratio exceeds
    ``anisotropy_threshold`` (separate in-plane / out-of-plane resampling)."""

    image_order: int = 3
    label_order: int = 1
    order_z_image: int = 0
    order_z_label: int = 0
    anisotropy_threshold: float = 3.0
    probabilities_order: int = 1


@dataclass(frozen=True)
class NnUNetNetwork:
    """The network of a model imported from nnU-Net v2 (``autoseg import``): the
    ``dynamic_network_architectures`` class and its arguments, read from the ``architecture`` entry
    of nnU-Net's plans. torch classes are named by their ``torch.nn`` name (``Conv3d``,
    ``InstanceNorm3d``, ``LeakyReLU``); ``blocks_per_stage`` is ``n_conv_per_stage`` of a
    ``PlainConvUNet`` or ``n_blocks_per_stage`` of a ``ResidualEncoderUNet``. Built by
    :func:`autoseg.models.nnunet.build_nnunet_network`."""

    class_name: str
    n_stages: int
    features_per_stage: tuple[int, ...]
    conv_op: str
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    blocks_per_stage: tuple[int, ...]
    convs_per_decoder_stage: tuple[int, ...]
    conv_bias: bool
    norm_op: str | None
    norm_op_kwargs: dict[str, Any]
    dropout_op: str | None
    dropout_op_kwargs: dict[str, Any]
    nonlin: str | None
    nonlin_kwargs: dict[str, Any]


@dataclass(frozen=True)
class ConfigurationPlan:
    """One trainable configuration (``2d``, ``3d_fullres``, ``3d_lowres``, ``3d_cascade_fullres``).

    ``kernel_sizes`` and ``strides`` hold one entry per network stage (the first stride is all 1s);
    ``features`` the channel count per stage; ``patch_size`` has ``spatial_dims`` entries (for 2D:
    axes 1 and 2 of the preprocessed volume). ``data_identifier`` names the preprocessed folder the
    configuration reads (``2d`` shares the full-resolution data).
    """

    name: str
    spatial_dims: int
    spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    features: tuple[int, ...]
    batch_dice: bool
    data_identifier: str
    architecture: str = DEFAULT_ARCHITECTURE
    blocks_per_stage: tuple[int, ...] = ()
    resampling: ResamplingPlan = field(default_factory=ResamplingPlan)
    previous_stage: str | None = None
    nnunet_network: NnUNetNetwork | None = None  # architecture "nnunet": a model imported from nnU-Net v2

    @property
    def num_pools_per_axis(self) -> tuple[int, ...]:
        return tuple(sum(1 for s in self.strides if s[a] > 1) for a in range(self.spatial_dims))


@dataclass(frozen=True)
class Plans(Artifact):
    KIND = "plans"
    SCHEMA_VERSION = PLANS_SCHEMA_VERSION

    dataset_name: str
    plans_name: str
    planner: str
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    channel_names: tuple[str, ...]
    labels: dict[str, object]
    normalization: tuple[NormalizationPlan, ...]
    configurations: dict[str, ConfigurationPlan]
    default_configuration: str
    settings: dict[str, object] = field(default_factory=dict)

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise KeyError(f"configuration '{name}' is not in the plans of {self.dataset_name}; "
                           f"choices: {', '.join(self.configurations)}")
        return self.configurations[name]


def plans_name_for(preset: str) -> str:
    """The plans name of a planner preset: ``autosegPlans`` for the default one, else ``autosegPlans_<preset>``."""
    if not _PRESET_RE.match(preset):
        raise ValueError(f"planner preset name '{preset}' cannot name plans: use letters, digits, '.', '-' and "
                         "single '_' (rename the .toml file)")
    return DEFAULT_PLANS_NAME if preset == DEFAULT_PRESET else f"{DEFAULT_PLANS_NAME}_{preset}"


def matches_plans(plans_name: str, wanted: str) -> bool:
    """Whether ``wanted`` (a plans name such as ``autosegPlans_resenc_m``, or the preset name
    ``resenc_m``; ``default`` for the default plans) names the plans ``plans_name``."""
    return wanted == plans_name or (_PRESET_RE.match(wanted) is not None and plans_name_for(wanted) == plans_name)
