"""Import a model trained with nnU-Net v2: its results folder or its exported zip -> an autoseg model folder.

nnU-Net v2 keeps a trained model as ``<Trainer>__<Plans>__<configuration>/`` holding ``plans.json``,
``dataset.json`` and ``fold_<k>/checkpoint_final.pth``; ``nnUNetv2_export_model_to_zip`` zips such
folders as ``<Dataset>/<Trainer>__<Plans>__<configuration>/...`` (``nnunetv2/model_sharing``).
:func:`read_nnunet_model` checks one such folder and translates it; :func:`install_nnunet_model`
writes it as an autoseg model folder ``results/<Dataset>/nnunet__<Plans>.<Trainer>__<configuration>/``
whose checkpoints describe themselves like autoseg's own (architecture ``nnunet``,
:mod:`autoseg.models.nnunet`), so ``autoseg predict``, ``quantize`` and ``export`` use them unchanged.

What is translated (nnU-Net v2 sources named in each function):

- axes: nnU-Net's arrays are the reverse of the file's voxel axes (SimpleITK order; its NibabelIO
  transposes to match), autoseg's are in file order; the transposition ``2 - t`` of nnU-Net's
  ``transpose_forward`` gives autoseg the same array layout after transposing, so spacings, patch,
  kernels, strides and mirror axes carry over unchanged;
- normalisation schemes by class name, resampling functions and their arguments (only nnU-Net's
  default ``resample_data_or_seg_to_shape``), the network (``PlainConvUNet``, ``ResidualEncoderUNet``),
  the mirroring axes the trainer allowed (``inference_allowed_mirroring_axes``: none for
  ``NoMirroring`` trainers), regions (``regions_class_order``).

Anything else is refused with a message naming the file and what is missing, before anything is
written. nnU-Net checkpoints are pickles: they are read with ``torch.load(weights_only=True)`` and
only the numpy scalar and dtype types nnU-Net stores are allowed in addition (an imported file is
untrusted input, so no other object is ever constructed).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.core.checkpoint import FINAL, FORMAT, FORMAT_VERSION, DatasetRecord, ModelRecord, save_checkpoint
from autoseg.core.fileops import staged_folder
from autoseg.dataset import DatasetError, DatasetSpec
from autoseg.models.architecture import ModelError
from autoseg.planning.plans import ConfigurationPlan, NormalizationPlan, Plans, ResamplingPlan
from autoseg.workspace import PLANS_FILE, Workspace, fold_folder_name, model_folder_name

NNUNET_CHECKPOINT = "checkpoint_final.pth"
NNUNET_PLANS = PLANS_FILE  # nnU-Net names a results folder's plans file as autoseg names its default plans
ARCH = "nnunet"
_FOLDER_RE = re.compile(r"^(?P<trainer>[A-Za-z0-9][A-Za-z0-9_.-]*?)__(?P<plans>[A-Za-z0-9][A-Za-z0-9_.-]*?)__"
                        r"(?P<config>[A-Za-z0-9][A-Za-z0-9_.-]*)$")
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
# nnU-Net v2's normalisation classes (nnunetv2/preprocessing/normalization/default_normalization_schemes.py)
NORMALIZATION_SCHEMES = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none",
                         "RescaleTo01Normalization": "rescale_0_1", "RGBTo01Normalization": "rgb_0_1"}
# nnU-Net v2's default resampling (nnunetv2/preprocessing/resampling/default_resampling.py)
RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
ANISOTROPY_THRESHOLD = 3.0  # its ANISO_THRESHOLD, used when the kwargs do not set one
READERS = ("SimpleITKIO", "NibabelIO")  # both give arrays in the reverse of the file's voxel axes
# Trainers of nnunetv2 2.8.1 (nnunetv2/training/nnUNetTrainer/) that build the plans' network unchanged
# and change only training: epochs, losses, optimisers, schedules, sampling, augmentation, mirroring.
KNOWN_TRAINERS = re.compile(
    r"^nnUNetTrainer(?:"
    r"|_\d+epochs?(?:_NoMirroring)?|NoMirroring|NoDA|NoDeepSupervision|DA5(?:_10epochs|ord0|Segord0)?"
    r"|_DASegOrd0(?:_NoMirroring)?|_noDummy2DDA|_onlyMirror01(?:_1500ep|_DA5|_DASegOrd0)?"
    r"|CELoss(?:_5epochs)?|DiceLoss|DiceCELoss_noSmooth|Topk10Loss(?:LS01)?|DiceTopK10Loss"
    r"|CosAnneal|_warmup|Adam(?:1en3|3en4)?|VanillaAdam(?:1en3|3en4)?|Adan(?:1en1|1en3|3en4|CosAnneal)?"
    r"|_probabilisticOversampling(?:_010|_033)?|Benchmark_5epochs(?:_noDataLoading)?)$")


class NnUNetImportError(ValueError):
    """An nnU-Net model that autoseg cannot import (the message names the file and what to do)."""


@dataclass(frozen=True)
class NnUNetModel:
    """One nnU-Net model folder, checked and translated: autoseg plans and dataset description,
    the checkpoint of each fold, and the mirroring axes its trainer allowed."""

    folder: Path
    trainer: str
    plans_identifier: str
    configuration: str
    plans: Plans
    spec: DatasetSpec
    checkpoints: dict[str, Path]  # fold ("0", ..., "all") -> checkpoint_final.pth

    @property
    def model_folder(self) -> str:
        return model_folder_name(ARCH, self.plans.plans_name, self.configuration)


def is_nnunet_folder(path: Path) -> bool:
    """Whether ``path`` looks like an nnU-Net results folder (``plans.json`` + ``dataset.json``)."""
    return Path(path).is_dir() and (Path(path) / NNUNET_PLANS).is_file() and (Path(path) / "dataset.json").is_file()


def is_nnunet_zip(zf: zipfile.ZipFile) -> bool:
    """Whether a zip holds nnU-Net model folders (``.../plans.json`` beside ``fold_*/*.pth``)."""
    names = zf.namelist()
    return any(n.endswith("/plans.json") for n in names) and any(n.endswith(".pth") for n in names)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NnUNetImportError(f"{path}: missing; an nnU-Net results folder holds plans.json and dataset.json "
                                "beside its fold_* folders") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NnUNetImportError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise NnUNetImportError(f"{path}: must hold a JSON object")
    return data


def resolve_configuration(plans: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    """A configuration of nnU-Net plans with its ``inherits_from`` chain merged in (nnU-Net's
    ``PlansManager._internal_resolve_configuration_inheritance``)."""
    configs = plans.get("configurations")
    seen: list[str] = []
    merged: dict[str, Any] = {}
    while name is not None:
        if not isinstance(configs, dict) or name not in configs:
            raise NnUNetImportError(f"{source}: has no configuration '{name}' (it has: "
                                    f"{', '.join(configs) if isinstance(configs, dict) else 'none'})")
        if name in seen:
            raise NnUNetImportError(f"{source}: configurations inherit from each other in a circle ({seen})")
        seen.append(name)
        merged = {**configs[name], **merged}
        name = configs[name].get("inherits_from")
    merged.pop("inherits_from", None)
    return merged


def autoseg_transpose(nnunet_transpose: list[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """autoseg's (forward, backward) transposition giving the arrays nnU-Net's ``transpose_forward``
    gives (see the module docstring): forward ``2 - t`` per entry."""
    forward = tuple(2 - int(t) for t in nnunet_transpose)
    if sorted(forward) != [0, 1, 2]:
        raise ValueError(f"transpose_forward {nnunet_transpose} is not a permutation of 0, 1, 2")
    backward = tuple(forward.index(a) for a in range(3))
    return forward, backward  # type: ignore[return-value]


def _normalization(plans: dict, config: dict, spec: DatasetSpec, source: Path) -> tuple[NormalizationPlan, ...]:
    """nnU-Net's normalisation per channel (``normalization_schemes``, ``use_mask_for_norm``, the
    dataset's foreground intensities for CT) as autoseg's :class:`NormalizationPlan`."""
    schemes, masks = config.get("normalization_schemes"), config.get("use_mask_for_norm")
    if not isinstance(schemes, list) or len(schemes) != spec.num_channels or not isinstance(masks, list):
        raise NnUNetImportError(f"{source}: normalization_schemes / use_mask_for_norm do not give one entry per "
                                f"channel of dataset.json ({spec.num_channels})")
    intensities = plans.get("foreground_intensity_properties_per_channel") or {}
    out = []
    for c, (scheme, use_mask) in enumerate(zip(schemes, masks)):
        ours = NORMALIZATION_SCHEMES.get(str(scheme))
        if ours is None:
            raise NnUNetImportError(f"{source}: channel {c} uses normalisation '{scheme}', which autoseg does not "
                                    f"implement (it maps {', '.join(NORMALIZATION_SCHEMES)})")
        if ours != "ct":
            out.append(NormalizationPlan(spec.channel_names[c], ours, use_mask=bool(use_mask) and ours == "zscore"))
            continue
        stats = intensities.get(str(c))
        try:
            out.append(NormalizationPlan(spec.channel_names[c], "ct", clip_low=float(stats["percentile_00_5"]),
                                         clip_high=float(stats["percentile_99_5"]), mean=float(stats["mean"]),
                                         std=float(stats["std"])))
        except (TypeError, KeyError):
            raise NnUNetImportError(f"{source}: CT normalisation of channel {c} needs its foreground intensity "
                                    "properties (percentile_00_5, percentile_99_5, mean, std) in "
                                    "foreground_intensity_properties_per_channel") from None
    return tuple(out)


def _resampling_kwargs(config: dict, kind: str, source: Path) -> dict[str, Any]:
    fn = config.get(f"resampling_fn_{kind}")
    if fn != RESAMPLING_FUNCTION:
        raise NnUNetImportError(f"{source}: resampling_fn_{kind} is '{fn}'; autoseg implements nnU-Net's default "
                                f"'{RESAMPLING_FUNCTION}' only")
    kwargs = config.get(f"resampling_fn_{kind}_kwargs") or {}
    if kwargs.get("force_separate_z") is not None:
        raise NnUNetImportError(f"{source}: resampling_fn_{kind}_kwargs sets force_separate_z="
                                f"{kwargs['force_separate_z']}; autoseg applies nnU-Net's automatic rule only (None)")
    unknown = sorted(set(kwargs) - {"is_seg", "order", "order_z", "force_separate_z",
                                    "separate_z_anisotropy_threshold"})
    if unknown:
        raise NnUNetImportError(f"{source}: resampling_fn_{kind}_kwargs {', '.join(unknown)} are not supported")
    return kwargs


def _resampling(config: dict, source: Path) -> ResamplingPlan:
    """nnU-Net's resampling arguments (order 3 data, 1 seg and probabilities, order_z 0 along a thick
    axis under its separate-z rule) as autoseg's :class:`ResamplingPlan`."""
    data, seg, probs = (_resampling_kwargs(config, k, source) for k in ("data", "seg", "probabilities"))
    thresholds = {float(k.get("separate_z_anisotropy_threshold", ANISOTROPY_THRESHOLD)) for k in (data, seg, probs)}
    if len(thresholds) > 1 or int(probs.get("order_z", 0)) != int(data.get("order_z", 0)):
        raise NnUNetImportError(f"{source}: data and probabilities resampling use different separate-z settings; "
                                "autoseg resamples both with one")
    return ResamplingPlan(image_order=int(data.get("order", 3)), label_order=int(seg.get("order", 1)),
                          order_z_image=int(data.get("order_z", 0)), order_z_label=int(seg.get("order_z", 0)),
                          anisotropy_threshold=thresholds.pop(), probabilities_order=int(probs.get("order", 1)))


def translate_plans(plans: dict, dataset: dict, config_name: str, plans_name: str, source: Path,
                    dataset_name: str) -> tuple[Plans, DatasetSpec]:
    """autoseg plans (one configuration, architecture ``nnunet``) and dataset description of an nnU-Net
    model: ``plans`` and ``dataset`` are its plans.json and dataset.json, ``source`` the plans file."""
    from autoseg.models.nnunet import nnunet_network_from_plans

    try:
        spec = DatasetSpec.from_json({"numTraining": 0, **dataset}, source.parent / "dataset.json", dataset_name)
    except DatasetError as e:
        raise NnUNetImportError(str(e)) from None
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise NnUNetImportError(f"{source}: image_reader_writer '{reader}' is not supported; autoseg reads images as "
                                f"nnU-Net's {' / '.join(READERS)} do (no reorientation)")
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise NnUNetImportError(f"{source}: label_manager '{plans['label_manager']}' is not supported (LabelManager only)")
    config = resolve_configuration(plans, config_name, source)
    if config.get("previous_stage"):
        raise NnUNetImportError(f"{source}: '{config_name}' is a cascade stage (previous stage "
                                f"'{config['previous_stage']}'); autoseg does not run nnU-Net cascades: import the "
                                "3d_fullres or 3d_lowres model instead")
    try:
        network = nnunet_network_from_plans(config, f"{source} (configuration '{config_name}')")
        forward, backward = autoseg_transpose(plans["transpose_forward"])
        patch = tuple(int(p) for p in config["patch_size"])
        cfg = ConfigurationPlan(
            name=config_name, spatial_dims=len(patch), spacing=tuple(float(s) for s in config["spacing"]),
            median_shape=tuple(int(round(float(s))) for s in config.get("median_image_size_in_voxels", patch)),
            patch_size=patch, batch_size=int(config.get("batch_size", 2)), kernel_sizes=network.kernel_sizes,
            strides=network.strides, features=network.features_per_stage, batch_dice=bool(config.get("batch_dice")),
            data_identifier=str(config.get("data_identifier", config_name)), architecture=ARCH,
            blocks_per_stage=network.blocks_per_stage, resampling=_resampling(config, source), nnunet_network=network)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, (ModelError, NnUNetImportError)):
            raise NnUNetImportError(str(e)) from None
        raise NnUNetImportError(f"{source}: configuration '{config_name}' is incomplete or malformed ({e!r})") from None
    if len(network.kernel_sizes[0]) != len(patch):
        raise NnUNetImportError(f"{source}: the network has {len(network.kernel_sizes[0])}-D kernels but the patch "
                                f"{patch} is {len(patch)}-D")
    out = Plans(dataset_name=dataset_name, plans_name=plans_name,
                planner=f"nnU-Net v2 {plans.get('experiment_planner_used', '')}".strip(),
                transpose_forward=forward, transpose_backward=backward, channel_names=spec.channel_names,
                labels=dict(spec.labels), normalization=_normalization(plans, config, spec, source),
                configurations={config_name: cfg}, default_configuration=config_name,
                settings={"imported_from": "nnU-Net v2"})
    return out, spec


def _safe_globals() -> list:
    """The non-tensor types nnU-Net v2 checkpoints pickle (numpy scalars in its logs, dtypes)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return [scalar, np.dtype, *dtypes]


def load_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """Read an nnU-Net v2 checkpoint without running pickled code (``weights_only=True`` plus the numpy
    scalar types of :func:`_safe_globals`). Raises :class:`NnUNetImportError` naming the file."""
    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NnUNetImportError(f"{path}: missing") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NnUNetImportError(f"{path}: cannot be read as an nnU-Net checkpoint without running code from it "
                                f"({first}); it is damaged or holds objects nnU-Net does not save") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise NnUNetImportError(f"{path}: not an nnU-Net v2 checkpoint (no 'network_weights')")
    return ckpt


def _weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The network weights without the prefixes DDP (``module.``) or torch.compile (``_orig_mod.``) add."""
    out = {}
    for key, value in ckpt["network_weights"].items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _mirror_axes(ckpt: dict[str, Any], dims: int, path: Path) -> tuple[int, ...]:
    """The axes nnU-Net's predictor mirrors for this checkpoint: ``inference_allowed_mirroring_axes``
    (None, or no entry: no mirroring, as nnU-Net's ``predict_from_raw_data`` does)."""
    axes = ckpt.get("inference_allowed_mirroring_axes")
    if axes is None:
        return ()
    try:
        out = tuple(sorted({int(a) for a in axes}))
    except (TypeError, ValueError):
        raise NnUNetImportError(f"{path}: inference_allowed_mirroring_axes {axes!r} is not a list of axes") from None
    if any(not 0 <= a < dims for a in out):
        raise NnUNetImportError(f"{path}: inference_allowed_mirroring_axes {out} do not fit a {dims}-D patch")
    return out


def _check_trainer(name: str, folder: Path, allowed: tuple[str, ...]) -> None:
    if KNOWN_TRAINERS.match(name) or name in allowed:
        return
    raise NnUNetImportError(
        f"{folder}: trainer '{name}' is not one of nnU-Net's trainers that keep the plans' network (nnUNetTrainer, "
        f"nnUNetTrainerNoMirroring, nnUNetTrainer_<N>epochs, the loss, optimiser, schedule and augmentation "
        f"variants); a trainer may build another network than its plans describe. If '{name}' changes only "
        f"training, import with --allow-trainer {name}")


def fold_checkpoints(folder: Path) -> dict[str, Path]:
    """``checkpoint_final.pth`` of every ``fold_*`` folder; a fold folder without one is an error."""
    folds = {m.group(1): p for p in sorted(Path(folder).iterdir()) if (m := _FOLD_RE.match(p.name)) and p.is_dir()}
    if not folds:
        raise NnUNetImportError(f"{folder}: holds no fold_* folder with {NNUNET_CHECKPOINT}; give a results folder "
                                "<Trainer>__<Plans>__<configuration> of a trained model")
    missing = [p / NNUNET_CHECKPOINT for p in folds.values() if not (p / NNUNET_CHECKPOINT).is_file()]
    if missing:
        raise NnUNetImportError(f"{missing[0]}: missing ({len(missing)} of {len(folds)} folds lack it); that fold's "
                                f"training has not finished: finish it (nnUNetv2_train ... --c), or import a copy of "
                                f"the folder without {missing[0].parent.name}")
    return {k: p / NNUNET_CHECKPOINT for k, p in sorted(folds.items(), key=lambda kv: (kv[0] == "all", kv[0].zfill(4)))}


def read_nnunet_model(folder: Path, allowed_trainers: tuple[str, ...] = ()) -> NnUNetModel:
    """Check and translate one nnU-Net results folder ``<Trainer>__<Plans>__<configuration>``."""
    folder = Path(folder)
    m = _FOLDER_RE.match(folder.name)
    if not m:
        raise NnUNetImportError(f"{folder}: an nnU-Net results folder is named <Trainer>__<Plans>__<configuration> "
                                "(e.g. nnUNetTrainer__nnUNetPlans__3d_fullres); keep nnU-Net's folder name")
    trainer, plans_id, config_name = m["trainer"], m["plans"], m["config"]
    _check_trainer(trainer, folder, allowed_trainers)
    plans_path = folder / NNUNET_PLANS
    plans, dataset = _read_json(plans_path), _read_json(folder / "dataset.json")
    checkpoints = fold_checkpoints(folder)
    dataset_name = str(plans.get("dataset_name") or folder.parent.name)
    if not re.match(r"^Dataset\d{3}_[A-Za-z0-9_.-]+$", dataset_name):
        raise NnUNetImportError(f"{plans_path}: dataset_name '{dataset_name}' is not of the form DatasetXXX_Name")
    name = f"{plans_id}.{trainer}"
    if "__" in name:
        raise NnUNetImportError(f"{folder}: trainer or plans name contains '__'; rename them")
    ours, spec = translate_plans(plans, dataset, config_name, name, plans_path, dataset_name)
    return NnUNetModel(folder=folder, trainer=trainer, plans_identifier=plans_id, configuration=config_name,
                       plans=ours, spec=spec, checkpoints=checkpoints)


def convert_checkpoint(model: NnUNetModel, fold: str, path: Path) -> dict[str, Any]:
    """An autoseg checkpoint (weights + self-description) of one nnU-Net fold checkpoint; the weights
    are checked against the network the plans describe (strict load: same names and shapes)."""
    from autoseg.models.nnunet import build_nnunet_network

    ckpt = load_nnunet_checkpoint(path)
    saved_trainer = ckpt.get("trainer_name")
    if saved_trainer is not None and saved_trainer != model.trainer:
        raise NnUNetImportError(f"{path}: was written by trainer '{saved_trainer}', but the folder is named for "
                                f"'{model.trainer}'; put the fold into its own trainer's results folder")
    init = ckpt.get("init_args") if isinstance(ckpt.get("init_args"), dict) else {}
    if init.get("configuration") not in (None, model.configuration):
        raise NnUNetImportError(f"{path}: was trained as configuration '{init['configuration']}', not "
                                f"'{model.configuration}'; put the fold into its own configuration's results folder")
    cfg = model.plans.configuration(model.configuration)
    weights = _weights(ckpt)
    net = build_nnunet_network(cfg.nnunet_network, model.spec.num_channels, model.spec.num_outputs)
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise NnUNetImportError(
            f"{path}: the weights do not fit the {cfg.nnunet_network.class_name} that plans.json describes for "
            f"'{model.configuration}' with {model.spec.num_channels} input channel(s) and {model.spec.num_outputs} "
            f"output(s) ({detail}); the checkpoint comes from other plans or from a trainer that changes the "
            "network: import the folder it was trained in") from None
    s = model.spec
    dataset = DatasetRecord(name=model.plans.dataset_name, labels=dict(s.labels), channel_names=tuple(s.channel_names),
                            regions_class_order=tuple(s.regions_class_order) if s.regions_class_order else None,
                            ignore_label=s.ignore_label, file_ending=s.file_ending)
    record = ModelRecord(
        plans=model.plans.to_dict(), configuration=model.configuration, arch=ARCH,
        fold=int(fold) if fold.isdigit() else fold, dataset=dataset, settings={"deep_supervision": False},
        inference_mirror_axes=tuple(_mirror_axes(ckpt, cfg.spatial_dims, path)),
        imported_from={"tool": "nnU-Net v2", "trainer": model.trainer, "plans": model.plans_identifier,
                       "configuration": model.configuration, "checkpoint": f"{fold_folder_name(fold)}/{path.name}"})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **record.to_dict(), "model": net.state_dict()}


def _model_folders_in(root: Path) -> list[Path]:
    """nnU-Net model folders under ``root`` (folders holding plans.json whose name has two ``__``)."""
    return sorted(p.parent for p in Path(root).rglob(NNUNET_PLANS) if _FOLDER_RE.match(p.parent.name))


def extract_nnunet_zip(zip_path: Path, into: Path) -> list[Path]:
    """Unpack the model files of an ``nnUNetv2_export_model_to_zip`` archive (plans.json, dataset.json,
    fold_*/checkpoint_final.pth of each ``<Trainer>__<Plans>__<configuration>`` folder) into ``into``;
    entries with absolute paths, ``..`` or links are refused. Returns the model folders."""
    from autoseg.inference.export import ExportError, check_member

    wanted = re.compile(r"(^|/)[^/]+__[^/]+__[^/]+/(plans\.json|dataset\.json|fold_(\d+|all)/"
                        + re.escape(NNUNET_CHECKPOINT) + r")$")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                try:
                    check_member(info, zip_path)
                except ExportError as e:
                    raise NnUNetImportError(str(e)) from None
                if not info.is_dir() and wanted.search(info.filename):
                    dest = Path(into).joinpath(*info.filename.split("/"))
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, OSError) as e:
        raise NnUNetImportError(f"{zip_path}: cannot be unpacked ({e})") from None
    folders = _model_folders_in(into)
    if not folders:
        raise NnUNetImportError(f"{zip_path}: holds no <Trainer>__<Plans>__<configuration>/plans.json; not a model "
                                "exported by nnUNetv2_export_model_to_zip")
    return folders


def _write_model(model: NnUNetModel, converted: dict[str, dict], target: Path) -> None:
    """The autoseg model folder: fold_<k>/checkpoint_final.pt, plans.json (autoseg's), dataset.json and
    nnunet_plans.json (nnU-Net's, for reference)."""
    with staged_folder(target) as new:  # a killed import leaves no half-installed model
        for fold, ckpt in converted.items():
            (new / fold_folder_name(fold)).mkdir()
            save_checkpoint(ckpt, new / fold_folder_name(fold) / FINAL)  # with its digests, like a trained fold's
        model.plans.save(new / PLANS_FILE)
        shutil.copyfile(model.folder / "dataset.json", new / "dataset.json")
        shutil.copyfile(model.folder / NNUNET_PLANS, new / "nnunet_plans.json")


def install_nnunet(source: Path, workspace: Workspace, overwrite: bool = False,
                   allowed_trainers: tuple[str, ...] = ()) -> list[Path]:
    """Install the nnU-Net model(s) of ``source`` (a results folder, or a zip of
    ``nnUNetv2_export_model_to_zip``) into ``workspace``; returns the installed model folders. Every
    model and checkpoint is checked and converted before anything is written."""
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="autoseg-nnunet-") as tmp:
        folders = [source] if source.is_dir() else extract_nnunet_zip(source, Path(tmp))
        plans = []
        for folder in folders:
            model = read_nnunet_model(folder, allowed_trainers)
            target = workspace.results_dir(model.plans.dataset_name) / model.model_folder
            if target.exists() and not overwrite:
                raise NnUNetImportError(f"{target}: a model is already installed there; pass --overwrite to "
                                        "replace it")
            converted = {fold: convert_checkpoint(model, fold, path) for fold, path in model.checkpoints.items()}
            axes = {ModelRecord.of(c).inference_mirror_axes for c in converted.values()}
            if len(axes) > 1:
                raise NnUNetImportError(f"{folder}: the folds allow different mirroring axes ({sorted(axes)}); "
                                        "they come from different trainers")
            plans.append((model, converted, target))
        for model, converted, target in plans:
            _write_model(model, converted, target)
    return [target for _, _, target in plans]
