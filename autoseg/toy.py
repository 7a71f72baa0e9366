"""Small synthetic datasets in the nnU-Net v2 raw layout, for demos and tests.

Every case is drawn in two steps: :func:`draw_case` picks all random parameters (grid shape,
spacing, oblique affine, body and organ ellipsoids, intensities, noise seed) from a seeded
generator; :func:`render_case` turns them into voxels deterministically. Case ``i`` of seed ``s``
always gets the generator ``default_rng([s, i])``, so it does not depend on ``n_cases``.

What the volumes look like (arrays ``(X, Y, Z)``, spacing in mm, RAS+ affine):

- A body-like ellipsoid holding 2-3 organ-like blobs (labels 1..n, lumpy ellipsoids at different
  positions and sizes, each about 0.7-2 % of the grid), or, with ``regions=True``, three nested tumour-like blobs (BraTS-like
  region labels: whole = {1,2,3}, core = {2,3}, enhancing = {3}).
- **CT**: int16 Hounsfield-like values: air -1000 inside a cylindrical reconstruction field of
  view, a fat-like body (~-100 HU) holding organs with distinct soft-tissue to enhanced-organ HU
  (~60, 150, 240: a small abdominal CT after contrast), blurred edges, Gaussian noise. Outside the field of view the
  value is **0** (the padding value some exporters write), so crop-to-non-zero removes the
  corners, as it would for such real scans. (Air at -1000 is non-zero, so without that padding the
  crop would keep the whole volume.)
- **MR**: float32 with an arbitrary per-case scale, a smooth multiplicative bias field and noise
  inside the body; background is exactly 0 (as after masking), so cropping removes it.
  ``n_channels=2`` gives two sequences ("T1", "T2") with different tissue contrasts.
- Shapes vary +-20 % around ``shape`` per case; spacing ~1 mm isotropic, or with
  ``anisotropic=True`` ~0.8 x 0.8 x 4 mm with a third of the slices. Affines are oblique
  (a few degrees of rotation) with an offset origin that varies between cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.core.fileops import atomic_write_json, staged_folder
from autoseg.workspace import folder_name

FILE_ENDING = ".nii.gz"
MODALITIES = ("CT", "MR")
SHAPE_JITTER = 0.2            # +-20 % per axis around the base shape
ISO_SPACING = (1.0, 1.0, 1.0)
ANISO_SPACING = (0.8, 0.8, 4.0)  # typical thick-slice abdominal MR / CT
ANISO_SLICE_FACTOR = 3        # thick slices: a third of the base number of slices
# A miniature abdominal CT after contrast (portal-venous phase): organs in fat. Hounsfield values as
# in textbook CT (air -1000, fat about -100, unenhanced soft tissue/muscle 40-60, enhanced liver/spleen
# 100-150, enhanced kidney cortex 150-250); noise sd 20 HU as in a standard-dose 1 mm reconstruction.
CT_AIR, CT_TISSUE, CT_NOISE_SD = -1000.0, -100.0, 20.0  # CT_TISSUE: the body around the organs (fat-like)
CT_BLUR_SD = 0.6  # voxels: partial volume at edges (a Gaussian point spread before the noise)
CT_ORGAN_HU = (60.0, 150.0, 240.0, 400.0, -500.0, 900.0)  # soft-tissue-, enhanced-organ-, kidney-cortex-like,
# then (labels 4-6) cancellous-bone-, lung-, cortical-bone-like
# Organ ellipsoid radii in normalised grid coordinates ([-1, 1] per axis), lower and upper bounds per
# axis: an organ fills about 0.7-2 % of the grid (3-9 % of the body; liver ~1.5 l, spleen ~0.2 l of a
# ~15 l abdomen) and spans 10-15 voxels, as a large abdominal organ spans tens of voxels or more in a scan.
ORGAN_RADII = ((0.22, 0.19, 0.34), (0.3, 0.26, 0.48))
MR_BODY = (1.0, 1.0)                     # relative body intensity per sequence (T1, T2)
MR_ORGAN = ((1.7, 0.55), (0.45, 1.9), (1.3, 1.35), (0.6, 0.6), (2.2, 1.2), (1.0, 2.5))  # per label: (T1, T2)
MR_NOISE_SD = 0.05
REGION_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}


@dataclass(frozen=True)
class Blob:
    """A lumpy ellipsoid in normalised grid coordinates ([-1, 1] along each voxel axis)."""

    label: int
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    lumps: tuple[float, ...]  # 3 frequencies, 3 phases, 1 amplitude of the boundary ripple


@dataclass(frozen=True)
class ToyCase:
    """All random choices for one case; :func:`render_case` is a pure function of this."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]
    body: Blob
    blobs: tuple[Blob, ...]
    modality: str
    n_channels: int
    scale: float          # MR: global intensity scale; CT: HU offset
    bias: tuple[float, ...]  # MR bias-field coefficients (linear x, y, z, quadratic)
    noise_seed: int


def draw_case(rng: np.random.Generator, modality: str = "CT", n_channels: int = 1,
              anisotropic: bool = False, shape: tuple[int, int, int] = (48, 48, 32),
              regions: bool = False, n_labels: int = 3) -> ToyCase:
    """Draw the parameters of one case (see the module docstring for what they mean)."""
    base = np.array(shape, dtype=float)
    spacing = np.array(ANISO_SPACING if anisotropic else ISO_SPACING)
    if anisotropic:
        base[2] = max(6.0, base[2] / ANISO_SLICE_FACTOR)
    grid = np.maximum(8, np.round(base * rng.uniform(1 - SHAPE_JITTER, 1 + SHAPE_JITTER, 3))).astype(int)
    spacing = spacing * np.repeat(rng.uniform(0.9, 1.1, 2), (2, 1))
    body = Blob(0, tuple(rng.uniform(-0.05, 0.05, 3)), tuple(rng.uniform([0.72, 0.6, 0.8], [0.82, 0.72, 0.9])),
                _lumps(rng, 0.04))
    if regions:
        c, r = rng.uniform(-0.2, 0.2, 3), rng.uniform(0.3, 0.38, 3)
        blobs = tuple(Blob(k, tuple(c + rng.uniform(-0.03, 0.03, 3)), tuple(r * f), _lumps(rng, 0.12))
                      for k, f in ((1, 1.0), (2, 0.6), (3, 0.35)))
    else:
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n_labels) / n_labels
        blobs = tuple(Blob(k + 1, (0.38 * np.cos(a), 0.3 * np.sin(a), rng.uniform(-0.25, 0.25)),
                           tuple(rng.uniform(*ORGAN_RADII)), _lumps(rng, 0.15))
                      for k, a in enumerate(angles))
    return ToyCase(
        shape=tuple(int(s) for s in grid), spacing=tuple(float(s) for s in spacing),
        affine=_oblique_affine(rng, spacing), body=body, blobs=blobs, modality=modality,
        n_channels=n_channels, scale=float(rng.uniform(100, 3000) if modality == "MR" else rng.uniform(-10, 10)),
        bias=tuple(rng.uniform(-0.25, 0.25, 4)), noise_seed=int(rng.integers(2**31)))


def _lumps(rng: np.random.Generator, amplitude: float) -> tuple[float, ...]:
    return tuple(rng.uniform(1.5, 4.0, 3)) + tuple(rng.uniform(0, 2 * np.pi, 3)) + (amplitude,)


def _oblique_affine(rng: np.random.Generator, spacing: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Voxel-to-RAS affine: DICOM-like axes (-x, -y, +z), rotated a few degrees, offset origin."""
    a, b = np.deg2rad(rng.uniform(-12, 12)), np.deg2rad(rng.uniform(-5, 5))
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rz @ rx @ np.diag(spacing)
    affine[:3, 3] = np.array([90.0, 110.0, -60.0]) + rng.uniform(-10, 10, 3)
    return tuple(tuple(float(x) for x in row) for row in affine)


def _coords(shape: tuple[int, int, int]) -> list[np.ndarray]:
    return np.ogrid[-1:1:complex(shape[0]), -1:1:complex(shape[1]), -1:1:complex(shape[2])]


def _inside(blob: Blob, xyz: list[np.ndarray]) -> np.ndarray:
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(xyz, blob.center, blob.radii))
    f, p, amp = blob.lumps[:3], blob.lumps[3:6], blob.lumps[6]
    ripple = np.sin(f[0] * np.pi * xyz[0] + p[0]) * np.sin(f[1] * np.pi * xyz[1] + p[1]) * np.sin(
        f[2] * np.pi * xyz[2] + p[2])
    return d < 1.0 + amp * ripple


def render_case(case: ToyCase) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of a drawn case: image ``(C, X, Y, Z)`` (int16 HU for CT, float32 for MR) and label
    ``(X, Y, Z)`` uint8."""
    xyz = _coords(case.shape)
    body = _inside(case.body, xyz)
    label = np.zeros(case.shape, dtype=np.uint8)
    for blob in case.blobs:  # later (inner) blobs paint over earlier ones
        label[_inside(blob, xyz) & body] = blob.label
    rng = np.random.default_rng(case.noise_seed)
    if case.modality == "CT":
        image = _render_ct(case, xyz, body, label, rng)[None]
    else:
        image = np.stack([_render_mr(case, xyz, body, label, rng, ch) for ch in range(case.n_channels)])
    return image, label


def _render_ct(case: ToyCase, xyz, body, label, rng) -> np.ndarray:
    hu = np.where(body, CT_TISSUE + case.scale, CT_AIR)
    for k in range(1, label.max() + 1):
        hu[label == k] = CT_ORGAN_HU[(k - 1) % len(CT_ORGAN_HU)] + case.scale
    hu = ndimage.gaussian_filter(hu, CT_BLUR_SD) + rng.normal(0, CT_NOISE_SD, case.shape)
    field_of_view = (xyz[0] ** 2 + xyz[1] ** 2) <= 0.95 ** 2
    return np.where(field_of_view, np.clip(np.round(hu), -1024, 3071), 0).astype(np.int16)


def _render_mr(case: ToyCase, xyz, body, label, rng, channel: int) -> np.ndarray:
    sig = np.where(body, MR_BODY[channel % 2], 0.0)
    for k in range(1, label.max() + 1):
        sig[label == k] = MR_ORGAN[(k - 1) % len(MR_ORGAN)][channel % 2]
    sig = ndimage.gaussian_filter(sig, 0.6)
    b = case.bias
    bias = np.exp(b[0] * xyz[0] + b[1] * xyz[1] + b[2] * xyz[2] + b[3] * (xyz[0] ** 2 + xyz[1] ** 2))
    sig = np.abs(sig * bias + rng.normal(0, MR_NOISE_SD, case.shape)) * case.scale * (1 + 0.3 * channel)
    return np.where(body, sig, 0.0).astype(np.float32)


def _channel_names(modality: str, n_channels: int) -> dict[str, str]:
    if modality == "CT":
        return {"0": "CT"}
    names = ["T1", "T2"] + [f"MR{i}" for i in range(2, n_channels)]
    return {str(i): names[i] for i in range(n_channels)}


def dataset_json(modality: str, n_channels: int, n_training: int, regions: bool, n_labels: int,
                 seed: int) -> dict:
    """The dataset.json of a toy dataset."""
    labels = dict(REGION_LABELS) if regions else {"background": 0, **{f"organ{k}": k for k in range(1, n_labels + 1)}}
    data = {"channel_names": _channel_names(modality, n_channels), "labels": labels,
            "numTraining": n_training, "file_ending": FILE_ENDING}
    if regions:
        data["regions_class_order"] = [1, 2, 3]
    data["description"] = f"synthetic {modality} toy data from autoseg.toy (seed {seed})"
    return data


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def _write_case(folder: Path, case_id: str, case: ToyCase, images_dir: str, labels_dir: str) -> None:
    image, label = render_case(case)
    affine = np.asarray(case.affine)
    for c in range(image.shape[0]):
        _save_nifti(image[c], affine, folder / images_dir / f"{case_id}_{c:04d}{FILE_ENDING}")
    _save_nifti(label, affine, folder / labels_dir / f"{case_id}{FILE_ENDING}")


def make_toy_dataset(out_dir: Path, n_cases: int = 8, seed: int = 0, modality: str = "CT",
                     n_channels: int = 1, anisotropic: bool = False, shape: tuple[int, int, int] = (48, 48, 32),
                     regions: bool = False, name: str | None = None, n_test: int = 0, n_labels: int = 3,
                     overwrite: bool = False) -> Path:
    """Write a toy dataset to ``out_dir/name`` (``out_dir`` is the folder holding datasets, e.g. a
    workspace's ``raw/``) and return its path.

    ``n_test`` extra cases go to ``imagesTs/`` with their labels in ``labelsTs/`` (for evaluation
    demos). The whole folder is built in a temporary folder and renamed into place; an existing
    non-empty folder is only replaced with ``overwrite=True``.
    """
    modality = modality.upper().replace("MRI", "MR")
    if modality not in MODALITIES:
        raise ValueError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if modality == "CT" and n_channels != 1:
        raise ValueError(f"--channels {n_channels}: toy CT data has one channel; add --modality MR for several "
                         "sequences")
    # messages name the command-line options (`autoseg demo-data`); n_labels has none
    for option, value, low in (("--cases", n_cases, 1), ("--test-cases", n_test, 0), ("--channels", n_channels, 1)):
        if value < low:
            raise ValueError(f"{option} must be at least {low}, got {value}")
    if not 1 <= n_labels <= 6:
        raise ValueError(f"the number of labels must be 1..6, got {n_labels}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {shape}")
    name = folder_name(name, "dataset name (--name)") if name is not None else \
        f"Dataset999_Toy{modality}{'Regions' if regions else ''}"
    out_dir = Path(out_dir)
    target = out_dir / name
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target}: already exists and is not empty; add --overwrite to replace it or "
                              "choose another --name")
    with staged_folder(target) as tmp:  # in place in one step; a killed run's staging folder goes next time
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if n_test else ()):
            (tmp / sub).mkdir()
        for i in range(n_cases + n_test):
            case = draw_case(np.random.default_rng([seed, i]), modality, n_channels, anisotropic,
                             tuple(shape), regions, n_labels)
            split = ("imagesTr", "labelsTr") if i < n_cases else ("imagesTs", "labelsTs")
            _write_case(tmp, f"toy_{i:03d}", case, *split)
        atomic_write_json(tmp / "dataset.json",
                          dataset_json(modality, n_channels, n_cases, regions, n_labels, seed))
    return target
