"""nnU-Net v2's own networks, for models imported from nnU-Net (``autoseg import``).

nnU-Net v2 builds its networks with ``dynamic_network_architectures`` from the ``architecture`` entry of
a configuration in its plans (``network_class_name`` + ``arch_kwargs``, torch classes given by dotted
name; ``nnunetv2/utilities/plans_handling/plans_handler.py``). :func:`nnunet_network_from_plans` reads
that entry into a :class:`~autoseg.planning.plans.NnUNetNetwork` (refusing what it cannot build) and
:func:`build_nnunet_network` builds the same ``PlainConvUNet`` or ``ResidualEncoderUNet``, whose
state-dict names are those of nnU-Net's checkpoints. Older nnU-Net v2 plans (no ``architecture``
entry: ``UNet_class_name``, ``UNet_base_num_features``, ...) are read the way nnU-Net converts them.

Only inference is supported: the network is built without deep supervision (nnU-Net's predictor
does the same) and returns one logits tensor.
"""

from __future__ import annotations

from typing import Any

from autoseg.models.architecture import Architecture, ModelError
from autoseg.planning.plans import ConfigurationPlan, NnUNetNetwork

# network class -> the arch_kwargs key holding the encoder's convs / residual blocks per stage
NETWORK_CLASSES = {"PlainConvUNet": "n_conv_per_stage", "ResidualEncoderUNet": "n_blocks_per_stage"}
_NETWORK_PREFIX = "dynamic_network_architectures.architectures."
CONV_OPS = ("Conv2d", "Conv3d")
NORM_OPS = ("InstanceNorm2d", "InstanceNorm3d", "BatchNorm2d", "BatchNorm3d")
DROPOUT_OPS = ("Dropout", "Dropout2d", "Dropout3d")
NONLINS = ("LeakyReLU", "ReLU", "ELU", "GELU", "SiLU")
_COMMON_KEYS = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder",
                "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin",
                "nonlin_kwargs"}


def _torch_class(value: Any, allowed: tuple[str, ...], key: str, source: str) -> str | None:
    """``"torch.nn.modules.conv.Conv3d"`` -> ``"Conv3d"`` when allowed; None stays None."""
    if value is None:
        return None
    name = str(value).rsplit(".", 1)[-1]
    if not str(value).startswith("torch.nn.") or name not in allowed:
        raise ModelError(f"{source}: arch_kwargs '{key}' is {value!r}; autoseg builds nnU-Net networks with "
                         f"torch.nn {', '.join(allowed)} only")
    return name


def _legacy_architecture(config: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``architecture`` entry nnU-Net reconstructs from plans written before it had one."""
    try:
        cls = config["UNet_class_name"]
        n_stages = len(config["n_conv_per_stage_encoder"])
        dim = len(config["patch_size"])
        kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [min(config["UNet_base_num_features"] * 2 ** i, config["unet_max_num_features"])
                                   for i in range(n_stages)],
            "conv_op": f"torch.nn.Conv{dim}d", "kernel_sizes": config["conv_kernel_sizes"],
            "strides": config["pool_op_kernel_sizes"],
            NETWORK_CLASSES.get(cls, "n_conv_per_stage"): config["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"], "conv_bias": True,
            "norm_op": f"torch.nn.InstanceNorm{dim}d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    except (KeyError, TypeError) as e:
        raise ModelError(f"{source}: the configuration has no 'architecture' entry and lacks {e} of the older plans "
                         "format; the plans are damaged or from an unsupported nnU-Net version") from None
    return {"network_class_name": f"{_NETWORK_PREFIX}{cls}", "arch_kwargs": kwargs}


def _int_tuples(value: Any, n: int, key: str, source: str) -> tuple[tuple[int, ...], ...]:
    try:
        out = tuple(tuple(int(v) for v in entry) for entry in value)
    except (TypeError, ValueError):
        raise ModelError(f"{source}: arch_kwargs '{key}' must be a list of per-stage lists of integers") from None
    if len(out) != n:
        raise ModelError(f"{source}: arch_kwargs '{key}' has {len(out)} entries for {n} stages")
    return out


def _int_list(value: Any, n: int, key: str, source: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"{source}: arch_kwargs '{key}' must be an integer or a list of integers") from None
    if len(out) != n:
        raise ModelError(f"{source}: arch_kwargs '{key}' has {len(out)} entries, expected {n}")
    return out


def nnunet_network_from_plans(config: dict[str, Any], source: str) -> NnUNetNetwork:
    """The network of one (inheritance-resolved) configuration of nnU-Net v2 plans. ``source`` names
    the plans file and configuration in messages. Raises :class:`ModelError` for a network class or
    argument autoseg cannot build, naming it."""
    arch = config.get("architecture") if "architecture" in config else _legacy_architecture(config, source)
    if not isinstance(arch, dict) or not isinstance(arch.get("arch_kwargs"), dict):
        raise ModelError(f"{source}: 'architecture' must hold 'network_class_name' and 'arch_kwargs'")
    full = str(arch.get("network_class_name", ""))
    cls = full.rsplit(".", 1)[-1]
    if not full.startswith(_NETWORK_PREFIX) or cls not in NETWORK_CLASSES:
        raise ModelError(f"{source}: network class '{full}' is not supported; autoseg runs nnU-Net's "
                         f"{' and '.join(NETWORK_CLASSES)} (dynamic_network_architectures) only")
    kw = arch["arch_kwargs"]
    unknown = sorted(set(kw) - _COMMON_KEYS - {NETWORK_CLASSES[cls]})
    if unknown:
        raise ModelError(f"{source}: arch_kwargs {', '.join(unknown)} of {cls} are not supported by autoseg's import")
    try:
        n = int(kw["n_stages"])
        features = _int_list(kw["features_per_stage"], n, "features_per_stage", source)
        return NnUNetNetwork(
            class_name=cls, n_stages=n, features_per_stage=features,
            conv_op=_torch_class(kw["conv_op"], CONV_OPS, "conv_op", source),
            kernel_sizes=_int_tuples(kw["kernel_sizes"], n, "kernel_sizes", source),
            strides=_int_tuples(kw["strides"], n, "strides", source),
            blocks_per_stage=_int_list(kw[NETWORK_CLASSES[cls]], n, NETWORK_CLASSES[cls], source),
            convs_per_decoder_stage=_int_list(kw["n_conv_per_stage_decoder"], n - 1, "n_conv_per_stage_decoder",
                                              source),
            conv_bias=bool(kw.get("conv_bias", False)),
            norm_op=_torch_class(kw.get("norm_op"), NORM_OPS, "norm_op", source),
            norm_op_kwargs=dict(kw.get("norm_op_kwargs") or {}),
            dropout_op=_torch_class(kw.get("dropout_op"), DROPOUT_OPS, "dropout_op", source),
            dropout_op_kwargs=dict(kw.get("dropout_op_kwargs") or {}),
            nonlin=_torch_class(kw.get("nonlin"), NONLINS, "nonlin", source),
            nonlin_kwargs=dict(kw.get("nonlin_kwargs") or {}))
    except KeyError as e:
        raise ModelError(f"{source}: arch_kwargs of {cls} lack {e}") from None


def build_nnunet_network(net: NnUNetNetwork, in_channels: int, out_channels: int):
    """The ``dynamic_network_architectures`` network ``net`` describes (a ``torch.nn.Module``), without
    deep supervision."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from torch import nn

    ops = {name: getattr(nn, name) for name in (net.conv_op, net.norm_op, net.dropout_op, net.nonlin) if name}
    common = dict(input_channels=in_channels, n_stages=net.n_stages, features_per_stage=list(net.features_per_stage),
                  conv_op=ops[net.conv_op], kernel_sizes=[list(k) for k in net.kernel_sizes],
                  strides=[list(s) for s in net.strides], num_classes=out_channels,
                  n_conv_per_stage_decoder=list(net.convs_per_decoder_stage), conv_bias=net.conv_bias,
                  norm_op=ops.get(net.norm_op), norm_op_kwargs=dict(net.norm_op_kwargs) or None,
                  dropout_op=ops.get(net.dropout_op), dropout_op_kwargs=dict(net.dropout_op_kwargs) or None,
                  nonlin=ops.get(net.nonlin), nonlin_kwargs=dict(net.nonlin_kwargs) or None, deep_supervision=False)
    try:
        if net.class_name == "PlainConvUNet":
            return PlainConvUNet(n_conv_per_stage=list(net.blocks_per_stage), **common)
        if net.class_name == "ResidualEncoderUNet":
            return ResidualEncoderUNet(n_blocks_per_stage=list(net.blocks_per_stage), **common)
    except (AssertionError, TypeError, ValueError) as e:
        raise ModelError(f"nnU-Net {net.class_name} cannot be built from these arguments: {e}") from None
    raise ModelError(f"unknown nnU-Net network class '{net.class_name}'; choices: {', '.join(NETWORK_CLASSES)}")


def build_nnunet(plan: ConfigurationPlan, in_channels: int, out_channels: int, deep_supervision: bool):
    """Registry builder of architecture ``nnunet``: the network of a model imported from nnU-Net v2
    (``plan.nnunet_network``). Inference only: ``deep_supervision`` is ignored."""
    if plan.nnunet_network is None:
        raise ModelError(f"configuration '{plan.name}': architecture 'nnunet' runs models imported from nnU-Net v2 "
                         "(`autoseg import RESULTS_FOLDER`); it cannot be trained from autoseg's plans")
    return build_nnunet_network(plan.nnunet_network, in_channels, out_channels)


def _not_planned(*args, **kwargs):
    raise ModelError("architecture 'nnunet' runs models imported from nnU-Net v2 (`autoseg import`); autoseg does "
                     "not plan or train it: choose another --arch")


# Registry entry (autoseg.models.registry.IMPORTED): built from imported plans only, never planned or trained.
ARCHITECTURE = Architecture(
    name="nnunet",
    summary="a network imported from nnU-Net v2 (PlainConvUNet or ResidualEncoderUNet, as its plans describe)",
    preset="",
    deep_supervision=False,
    head_names=("seg_layers",),
    layout=_not_planned,
    features=_not_planned,
    estimate=_not_planned,
    build=build_nnunet,
)
