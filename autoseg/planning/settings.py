"""Planner settings: every constant the experiment planner uses, as one frozen dataclass.

The defaults reproduce nnU-Net v2's default planner (``ExperimentPlanner``, nnunetv2 2.8.1:
nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py and network_topology.py).
Presets in ``planners/*.toml`` override fields by
name; :func:`load_preset` reads them and rejects unknown keys, listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

# the architecture a preset without an ``architecture`` key plans for (an entry of autoseg.models.registry)
DEFAULT_ARCHITECTURE = "unet"


def _presets_dir() -> Path:
    """``autoseg/planners`` in an installed package, else the checkout's top-level ``planners/``."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "planners"
    return installed if installed.is_dir() else package.parent / "planners"


PRESETS_DIR = _presets_dir()


class PresetError(ValueError):
    """A planner preset cannot be found or holds invalid keys or values."""


@dataclass(frozen=True)
class PlannerSettings:
    """Planner constants. Sizes are voxels, memory in GB, spacings in mm.

    ``reference_estimate_*`` is the feature-map estimate
    (:func:`autoseg.planning.heuristics.estimate_feature_map_size`) of a network known to train
    with ``reference_batch_*`` on ``reference_vram_gb``; the budget for a plan is that value times
    ``gpu_memory_gb / reference_vram_gb``.
    """

    preset: str = "default"
    # the network planned for: a name in autoseg.models.registry.ARCHITECTURES (its entry states the
    # layout, feature and memory rules the planner applies)
    architecture: str = DEFAULT_ARCHITECTURE
    # nnU-Net configuration.py ANISO_THRESHOLD: an axis is "thick" when its spacing > 3x the others
    anisotropy_threshold: float = 3.0
    # nnU-Net determine_fullres_target_spacing: thick axis uses the 10th percentile of its spacings
    anisotropic_spacing_percentile: float = 10.0
    # nnU-Net get_plans_for_configuration: initial patch has the volume of 256^3 (3D) / 2048^2 (2D)
    patch_edge_3d: int = 256
    patch_edge_2d: int = 2048
    # nnU-Net UNet_featuremap_min_edge_length: bottleneck feature maps keep edges >= 4
    min_feature_map_edge: int = 4
    # nnU-Net get_pool_and_conv_props: a lone poolable axis needs size >= 3 * min edge (= 12)
    single_axis_pool_factor: int = 3
    # nnU-Net UNet_base_num_features / UNet_max_features_3d / _2d
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    # convolutions (plain U-Net) or residual blocks (ResEnc) per encoder stage; the last value
    # repeats for deeper stages. nnU-Net: 2 per stage; ResEnc presets: 1, 3, 4, 6, 6, 6, ...
    blocks_per_stage_encoder: tuple[int, ...] = (2,)
    # convolutions per decoder stage: nnU-Net 2; ResEnc presets 1
    blocks_per_stage_decoder: tuple[int, ...] = (2,)
    # nnU-Net UNet_reference_val_corresp_GB and -gpu_memory_target default
    reference_vram_gb: float = 8.0
    gpu_memory_gb: float = 8.0
    # nnU-Net UNet_reference_val_3d / _2d (feature-map elements of the reference networks)
    reference_estimate_3d: float = 560e6
    reference_estimate_2d: float = 85e6
    # nnU-Net UNet_reference_val_corresp_bs_3d / _2d
    reference_batch_3d: int = 2
    reference_batch_2d: int = 12
    # the patch shrinks until this batch size fits the budget. nnU-Net default planner: 2 (its
    # loop tests estimate / ref_bs * 2 > reference); ResEnc planners test estimate > reference,
    # i.e. the reference batch (2 in 3D, 12 in 2D)
    shrink_until_batch_3d: int = 2
    shrink_until_batch_2d: int = 2
    # nnU-Net max_dataset_covered: one batch sees at most 5% of the dataset's voxels (1 = no cap;
    # the ResEnc presets remove the cap)
    max_dataset_coverage: float = 0.05
    # nnU-Net UNet_min_batch_size
    min_batch_size: int = 2
    # nnU-Net lowres_creation_threshold: add 3d_lowres when the fullres patch covers < 25% of the
    # median image
    lowres_threshold: float = 0.25
    # nnU-Net spacing_increase_factor of the 3d_lowres search
    lowres_spacing_step: float = 1.03
    # nnU-Net drops 3d_lowres when fullres / lowres median voxel count < 2
    lowres_min_voxel_ratio: float = 2.0
    # nnU-Net: z-score inside the non-zero mask when median relative size after crop < 3/4
    mask_for_norm_threshold: float = 0.75
    # extra divisibility of every patch edge (1 = only the architecture's own rule, e.g. 2**pools)
    patch_divisible_by: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not self.architecture:
            problems.append("architecture must name an architecture")
        for name in ("anisotropy_threshold", "gpu_memory_gb", "reference_vram_gb", "reference_estimate_3d",
                     "reference_estimate_2d", "max_dataset_coverage", "lowres_threshold",
                     "lowres_min_voxel_ratio", "patch_divisible_by", "min_feature_map_edge", "base_features"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.lowres_spacing_step > 1:
            problems.append(f"lowres_spacing_step must be > 1, got {self.lowres_spacing_step}")
        for name in ("blocks_per_stage_encoder", "blocks_per_stage_decoder"):
            blocks = getattr(self, name)
            if not blocks or any(b < 1 for b in blocks):
                problems.append(f"{name} must be a non-empty list of positive integers, got {list(blocks)}")
        if problems:
            raise PresetError(f"invalid planner settings (preset '{self.preset}'): " + "; ".join(problems))

    # --- derived values -------------------------------------------------------------------------
    def patch_volume(self, dims: int) -> int:
        return self.patch_edge_3d ** 3 if dims == 3 else self.patch_edge_2d ** 2

    def max_features(self, dims: int) -> int:
        return self.max_features_3d if dims == 3 else self.max_features_2d

    def reference_estimate(self, dims: int) -> float:
        """Feature-map budget for ``dims`` (2 or 3), scaled to ``gpu_memory_gb``."""
        ref = self.reference_estimate_3d if dims == 3 else self.reference_estimate_2d
        return ref * self.gpu_memory_gb / self.reference_vram_gb

    def reference_batch(self, dims: int) -> int:
        return self.reference_batch_3d if dims == 3 else self.reference_batch_2d

    def shrink_until_batch(self, dims: int) -> int:
        return self.shrink_until_batch_3d if dims == 3 else self.shrink_until_batch_2d

    def encoder_blocks(self, n_stages: int) -> tuple[int, ...]:
        return _repeat_last(self.blocks_per_stage_encoder, n_stages)

    def decoder_blocks(self, n_stages: int) -> tuple[int, ...]:
        """One entry per decoder stage (``n_stages - 1``)."""
        return _repeat_last(self.blocks_per_stage_decoder, n_stages - 1)

    def to_dict(self) -> dict[str, object]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def replace(self, **changes) -> "PlannerSettings":
        """A copy with some fields changed (e.g. ``gpu_memory_gb`` from the command line)."""
        _check_keys(changes, f"overrides of preset '{self.preset}'")
        return dataclasses.replace(self, **{k: _coerce(k, v, "override") for k, v in changes.items()})


def _repeat_last(values: tuple[int, ...], n: int) -> tuple[int, ...]:
    return tuple(values[min(i, len(values) - 1)] for i in range(n))


def _field_types() -> dict[str, object]:
    return typing.get_type_hints(PlannerSettings)


def _check_keys(keys, source: str) -> None:
    valid = [f.name for f in dataclasses.fields(PlannerSettings)]
    unknown = [k for k in keys if k not in valid]
    if unknown:
        raise PresetError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(valid)}")


def _coerce(name: str, value: object, source: str) -> object:
    tp = _field_types()[name]
    bad = PresetError(f"{source}: '{name}' = {value!r} has the wrong type; expected {getattr(tp, '__name__', tp)}")
    if isinstance(value, bool) and tp is not bool:
        raise bad
    if tp is float:
        if not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise bad
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise bad
        return tuple(value)
    return value


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml")) if PRESETS_DIR.is_dir() else []


def preset_path(path_or_name: str | Path) -> Path:
    """``planners/<name>.toml`` for a bare name, else the given path."""
    text = str(path_or_name)
    p = Path(text)
    if p.suffix == ".toml" or p.is_file() or "/" in text:
        if not p.is_file():
            raise PresetError(f"{p}: planner preset file not found")
        return p
    p = PRESETS_DIR / f"{text}.toml"
    if not p.is_file():
        raise PresetError(f"planner preset '{text}' not found in {PRESETS_DIR}; "
                          f"choices: {', '.join(available_presets()) or '(none)'}, or give a path to a .toml file")
    return p


def load_preset(path_or_name: str | Path = "default") -> PlannerSettings:
    """Read a preset TOML (bare name such as ``resenc_l`` or a path) into :class:`PlannerSettings`.

    Keys are the field names of :class:`PlannerSettings`; missing keys keep their defaults.
    ``preset`` defaults to the file's stem.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = preset_path(path_or_name)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"{path}: cannot be read as TOML ({e}); fix the syntax") from None
    _check_keys(data, str(path))
    values = {k: _coerce(k, v, str(path)) for k, v in data.items()}
    values.setdefault("preset", path.stem)
    try:
        return PlannerSettings(**values)
    except PresetError as e:
        raise PresetError(f"{path}: {e}") from None
