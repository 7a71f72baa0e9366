"""Training-time data augmentation of one patch, nnU-Net v2's recipe on MONAI / numpy building blocks.

Randomness is drawn apart from applying it (like torchio's ``RandomFlip`` -> ``Flip``): :func:`draw_augmentation`
turns a ``numpy.random.Generator`` into an :class:`AugmentParams` (plain numbers);
:func:`apply_augmentation` is deterministic given those numbers. The loader derives the generator
from (seed, rank, batch index), so a batch is the same whatever process or worker computes it. (We
draw the parameters ourselves instead of seeding MONAI's ``Rand*`` transforms: same determinism,
but the parameters can be inspected, forced and tested.)

Order and probabilities (batchgeneratorsv2 as configured by ``nnUNetTrainer.get_training_transforms``,
nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py):

1. spatial: rotation p 0.2 (3D: each axis U(-30, 30) deg; 2D: U(-180, 180), or U(-15, 15) when the
   patch's long/short side > 1.5), isotropic scaling p 0.2 U(0.7, 1.4), no elastic deformation.
   One affine grid for image (linear) and label (nearest); MONAI ``AffineGrid`` + ``Resample``.
   The input is the enlarged patch of ``autoseg/sampling.py``; the centre ``patch_size`` is sampled.
   Scale is a coordinate scale as in batchgenerators: > 1 shows more context (zooms out).
2. Gaussian noise p 0.1, std U(0, 0.1) (nnU-Net calls the range "noise_variance"; batchgenerators
   uses the drawn value as the standard deviation), same std for all channels.
3. Gaussian blur p 0.2, per channel p 0.5, sigma U(0.5, 1) drawn per axis.
4. multiplicative brightness p 0.15, per channel factor in (0.75, 1.25).
5. contrast p 0.15, per channel factor in (0.75, 1.25), around the mean, range preserved.
6. simulated low resolution p 0.25, per channel p 0.5, zoom U(0.5, 1) (nearest down, linear up).
7. inverted gamma p 0.1 and 8. gamma p 0.3, per channel gamma in (0.7, 1.5), statistics retained.
9. mirroring: each allowed axis with p 0.5.

"Factor in (a, b)" is batchgenerators' ``BGContrast`` draw: with probability 0.5 uniform in (a, 1),
otherwise uniform in (1, b), so shrinking and growing are equally likely.

Dummy 2D (3D patch with max(patch) / patch[0] > 3, i.e. few thick slices): rotation only in the
plane of axes 1, 2 with U(-180, 180) deg, scaling only in that plane, low resolution leaves axis 0
alone. Labels keep their values: only nearest-neighbour resampling, flips and crops touch them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import AffineGrid, Resample
from monai.transforms.utils import create_rotate, create_scale
from scipy import ndimage

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentSettings:
    """Probabilities and ranges; defaults are nnU-Net v2's (``nnUNetTrainer.get_training_transforms``).
    ``off()`` disables all."""

    p_rotation: float = 0.2              # nnU-Net SpatialTransform p_rotation
    rotation_3d_deg: float = 30.0        # 3D: +-30 deg about every axis
    rotation_2d_deg: float = 180.0       # 2D and dummy 2D: +-180 deg in plane
    rotation_2d_elongated_deg: float = 15.0  # 2D patches with long/short side > elongated_aspect
    elongated_aspect: float = 1.5
    p_scaling: float = 0.2               # nnU-Net p_scaling, isotropic ("synchronised across axes")
    scaling: Range = (0.7, 1.4)
    dummy_2d_anisotropy: float = 3.0     # nnU-Net ANISO_THRESHOLD: max(patch) / patch[0] > 3
    p_noise: float = 0.1
    noise_std: Range = (0.0, 0.1)        # nnU-Net "noise_variance", used as std (batchgenerators)
    p_blur: float = 0.2
    p_blur_per_channel: float = 0.5
    blur_sigma: Range = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: Range = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: Range = (0.75, 1.25)
    p_low_res: float = 0.25
    p_low_res_per_channel: float = 0.5
    low_res_zoom: Range = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: Range = (0.7, 1.5)
    p_mirror: float = 0.5                # per allowed axis
    mirror_axes: tuple[int, ...] | None = None   # spatial axes that may be flipped; None = all

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentSettings.{f.name} must be a probability in [0, 1], got {value}")
            if isinstance(value, tuple) and f.name != "mirror_axes" and not value[0] <= value[1]:
                raise ValueError(f"AugmentSettings.{f.name} must be a (low, high) range, got {value}")
        if self.scaling[0] <= 0 or self.low_res_zoom[0] <= 0:
            raise ValueError("AugmentSettings.scaling and low_res_zoom must be positive")

    @classmethod
    def off(cls) -> "AugmentSettings":
        """Every transform disabled (probabilities 0)."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")})


@dataclass(frozen=True)
class AugmentParams:
    """The drawn augmentation of one patch. Empty tuples mean "not applied"; per-channel entries are
    None for channels the transform skips. ``rotation`` is in radians (MONAI's rotate order)."""

    rotation: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    noise_std: float = 0.0
    noise_seed: int = 0
    blur_sigma: tuple[tuple[float, ...] | None, ...] = ()
    brightness: tuple[float, ...] = ()
    contrast: tuple[float, ...] = ()
    low_res: tuple[tuple[float, ...] | None, ...] = ()
    gamma_inverted: tuple[float, ...] = ()
    gamma: tuple[float, ...] = ()
    mirror: tuple[int, ...] = ()

    @property
    def spatial(self) -> bool:
        return bool(self.rotation or self.scale)


def is_dummy_2d(patch_size: Sequence[int], settings: AugmentSettings) -> bool:
    """3D patch much thinner along axis 0 than in plane: augment it slice-wise (in plane)."""
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > settings.dummy_2d_anisotropy


def _bg_contrast(rng: np.random.Generator, low: float, high: float) -> float:
    """Half the draws below 1, half above (batchgenerators BGContrast) when the range spans 1."""
    if low < 1.0 < high:
        return float(rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


def _draw_rotation(rng: np.random.Generator, s: AugmentSettings, patch_size: Sequence[int]) -> tuple[float, ...]:
    if len(patch_size) == 2:
        elongated = max(patch_size) / min(patch_size) > s.elongated_aspect
        limit = math.radians(s.rotation_2d_elongated_deg if elongated else s.rotation_2d_deg)
        return (float(rng.uniform(-limit, limit)),)
    if is_dummy_2d(patch_size, s):
        limit = math.radians(s.rotation_2d_deg)
        return (float(rng.uniform(-limit, limit)), 0.0, 0.0)   # about axis 0: the (1, 2) plane
    limit = math.radians(s.rotation_3d_deg)
    return tuple(float(a) for a in rng.uniform(-limit, limit, 3))


def _per_channel(rng, n: int, p: float, draw) -> tuple:
    return tuple(draw() if rng.random() < p else None for _ in range(n))


def draw_augmentation(rng: np.random.Generator, settings: AugmentSettings, patch_size: Sequence[int],
                      num_channels: int) -> AugmentParams:
    """Draw every random choice for one patch of spatial size ``patch_size`` (2 or 3 axes)."""
    s, dims = settings, len(patch_size)
    dummy = is_dummy_2d(patch_size, s)
    out: dict = {}
    if rng.random() < s.p_rotation:
        out["rotation"] = _draw_rotation(rng, s, patch_size)
    if rng.random() < s.p_scaling:
        f = float(rng.uniform(*s.scaling))
        out["scale"] = (1.0, f, f) if dummy else (f,) * dims
    if rng.random() < s.p_noise:
        out["noise_std"] = float(rng.uniform(*s.noise_std))
        out["noise_seed"] = int(rng.integers(2**31))
    if rng.random() < s.p_blur:
        out["blur_sigma"] = _per_channel(rng, num_channels, s.p_blur_per_channel,
                                         lambda: tuple(float(v) for v in rng.uniform(*s.blur_sigma, dims)))
    if rng.random() < s.p_brightness:
        out["brightness"] = tuple(_bg_contrast(rng, *s.brightness) for _ in range(num_channels))
    if rng.random() < s.p_contrast:
        out["contrast"] = tuple(_bg_contrast(rng, *s.contrast) for _ in range(num_channels))
    if rng.random() < s.p_low_res:
        def zoom():
            z = float(rng.uniform(*s.low_res_zoom))
            return tuple(1.0 if dummy and a == 0 else z for a in range(dims))
        out["low_res"] = _per_channel(rng, num_channels, s.p_low_res_per_channel, zoom)
    if rng.random() < s.p_gamma_inverted:
        out["gamma_inverted"] = tuple(_bg_contrast(rng, *s.gamma) for _ in range(num_channels))
    if rng.random() < s.p_gamma:
        out["gamma"] = tuple(_bg_contrast(rng, *s.gamma) for _ in range(num_channels))
    axes = range(dims) if s.mirror_axes is None else s.mirror_axes
    out["mirror"] = tuple(a for a in axes if rng.random() < s.p_mirror)
    return AugmentParams(**out)


# ----------------------------------------------------------------------------------------------
# Applying (deterministic)


def spatial_matrix(params: AugmentParams, dims: int) -> np.ndarray:
    """``(dims, dims)`` matrix mapping output offsets from the patch centre to input offsets."""
    m = np.eye(dims + 1)
    if params.rotation:
        m = m @ np.asarray(create_rotate(dims, params.rotation))
    if params.scale:
        m = m @ np.asarray(create_scale(dims, params.scale))
    return m[:dims, :dims]


def read_margin(params: AugmentParams | None, patch_size: Sequence[int]) -> tuple[int, ...]:
    """Voxels to add on each side of the final patch so the spatial transform only samples read data.

    The source points of the output grid lie within ``centre +- sum_j |A_ij| (patch_j - 1) / 2``;
    an input of size ``patch + 2 m`` covers ``centre +- (patch - 1) / 2 + m``.
    """
    if params is None or not params.spatial:
        return (0,) * len(patch_size)
    half = (np.asarray(patch_size, dtype=float) - 1) / 2
    reach = np.abs(spatial_matrix(params, len(patch_size))) @ half
    return tuple(max(0, math.ceil(r - h - 1e-6)) for r, h in zip(reach, half))


def centre_crop(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Crop the centre ``size`` of the last ``len(size)`` axes (input larger by an even amount)."""
    lead = array.ndim - len(size)
    starts = [(n - s) // 2 for n, s in zip(array.shape[lead:], size)]
    return array[(slice(None),) * lead + tuple(slice(a, a + s) for a, s in zip(starts, size))]


def apply_spatial(image: np.ndarray, seg: np.ndarray, params: AugmentParams,
                  patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rotate/scale about the patch centre and sample the centre ``patch_size`` (one grid for both)."""
    if not params.spatial:
        return centre_crop(image, patch_size), centre_crop(seg, patch_size)
    dims = len(patch_size)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = spatial_matrix(params, dims)
    grid, _ = AffineGrid(affine=torch.as_tensor(affine, dtype=torch.float32))(spatial_size=tuple(patch_size))
    resample = Resample(padding_mode="zeros", dtype=torch.float32)
    img = resample(torch.from_numpy(np.ascontiguousarray(image)), grid=grid, mode="bilinear")
    lab = resample(torch.from_numpy(seg.astype(np.float32)), grid=grid, mode="nearest")
    return (torch.as_tensor(img).numpy().astype(np.float32, copy=False),
            np.rint(torch.as_tensor(lab).numpy()).astype(seg.dtype))


def add_noise(image: np.ndarray, std: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)
    return image + np.float32(std) * noise


def blur(channel: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    return ndimage.gaussian_filter(channel, sigma=tuple(sigma), truncate=4.0)


def adjust_contrast(channel: np.ndarray, factor: float) -> np.ndarray:
    """Scale deviations from the mean by ``factor``, then clip to the original range."""
    lo, hi, mean = channel.min(), channel.max(), channel.mean()
    return np.clip((channel - mean) * np.float32(factor) + mean, lo, hi)


def simulate_low_resolution(channel: np.ndarray, zoom: Sequence[float]) -> np.ndarray:
    """Downsample by ``zoom`` per axis (nearest), then upsample back (linear)."""
    shape = channel.shape
    small = tuple(max(1, round(n * z)) for n, z in zip(shape, zoom))
    if small == shape:
        return channel
    x = torch.from_numpy(np.ascontiguousarray(channel))[None, None]
    x = F.interpolate(x, size=small, mode="nearest-exact")
    x = F.interpolate(x, size=shape, mode="trilinear" if len(shape) == 3 else "bilinear", align_corners=False)
    return x[0, 0].numpy()


def gamma_transform(channel: np.ndarray, gamma: float, invert: bool = False) -> np.ndarray:
    """Gamma on the channel rescaled to [0, 1], mapped back, mean and std retained (nnU-Net v2)."""
    x = -channel if invert else channel
    mean, std = x.mean(), x.std()
    lo = x.min()
    span = x.max() - lo
    x = np.power((x - lo) / max(span, 1e-7), gamma, dtype=np.float32) * span + lo
    x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
    return (-x if invert else x).astype(np.float32, copy=False)


def _per_channel_apply(image: np.ndarray, values: Sequence, fn) -> np.ndarray:
    for c, v in enumerate(values):
        if v is not None:
            image[c] = fn(image[c], v)
    return image


def apply_augmentation(image: np.ndarray, seg: np.ndarray, params: AugmentParams | None,
                       patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Augment ``image`` (C, *E) float32 and ``seg`` (1, *E) int; returns (C, *patch), (1, *patch).

    ``E`` is ``patch_size`` plus ``2 * read_margin(params, patch_size)``; ``params`` None only crops.
    """
    if params is None:
        return np.ascontiguousarray(centre_crop(image, patch_size)), np.ascontiguousarray(centre_crop(seg, patch_size))
    image, seg = apply_spatial(image, seg, params, patch_size)
    image = np.array(image, dtype=np.float32)  # own, writable copy for the in-place steps below
    if params.noise_std > 0:
        image = add_noise(image, params.noise_std, params.noise_seed)
    _per_channel_apply(image, params.blur_sigma, blur)
    _per_channel_apply(image, params.brightness, lambda x, f: x * np.float32(f))
    _per_channel_apply(image, params.contrast, adjust_contrast)
    _per_channel_apply(image, params.low_res, simulate_low_resolution)
    _per_channel_apply(image, params.gamma_inverted, lambda x, g: gamma_transform(x, g, invert=True))
    _per_channel_apply(image, params.gamma, gamma_transform)
    if params.mirror:
        axes = tuple(a + 1 for a in params.mirror)
        image, seg = np.flip(image, axes), np.flip(seg, axes)
    return np.ascontiguousarray(image), np.ascontiguousarray(seg)
