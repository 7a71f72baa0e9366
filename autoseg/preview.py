"""A PNG preview of an image with an optional label overlay (``autoseg show IMAGE [SEG] -o out.png``).

Three panels -- axial, coronal and sagittal -- cut through the centre of mass of the segmentation's
foreground (the image centre when there is no segmentation or it is empty). Volumes are first turned
to the closest canonical RAS+ orientation (``nibabel.as_closest_canonical``), then shown in the
radiological convention: the patient's right on the viewer's left in axial and coronal views,
anterior on the left in the sagittal view, superior/anterior up; pixel aspect follows the spacing.
Orientation letters sit on the panel edges so the convention is never a guess.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_write_bytes
from autoseg.io import ImageReadError, read_volume

OVERLAY_ALPHA = 0.45
DISPLAY_PERCENTILES = (0.5, 99.5)  # intensity window, robust to outliers such as metal in CT


def canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """``array`` (X, Y, Z) reoriented to the closest RAS+ axes, its spacing in mm and its affine."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)))
    return np.asanyarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3]), img.affine


def slice_centre(seg: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Voxel index of the foreground's centre of mass, or of the volume centre."""
    if seg is not None and np.any(seg > 0):
        com = np.argwhere(seg > 0).mean(axis=0)
        return tuple(int(round(c)) for c in com)
    return tuple(s // 2 for s in shape[:3])


def radiological_views(volume: np.ndarray, centre: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """2D arrays ready for ``imshow(origin='lower')`` from a RAS+ volume: rows go up (anterior or
    superior), columns go from the patient's right to left (axial, coronal) or anterior to posterior
    (sagittal)."""
    i, j, k = centre
    return {
        "axial": volume[::-1, :, k].T,  # rows: P->A, cols: R->L
        "coronal": volume[::-1, j, :].T,  # rows: I->S, cols: R->L
        "sagittal": volume[i, ::-1, :].T,  # rows: I->S, cols: A->P
    }


# per view: (row spacing axis, column spacing axis, (left, right, bottom, top) orientation letters)
_VIEW_AXES = {"axial": (1, 0, "RLPA"), "coronal": (2, 0, "RLIS"), "sagittal": (2, 1, "APIS")}


def _label_colours(values: list[int]):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {v: cmap(n % cmap.N) for n, v in enumerate(values)}


def _read(path: Path):
    arr, geometry = read_volume(path)
    if arr.ndim == 4:  # several channels in one file: show the first
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3D volume to preview, got shape {arr.shape}")
    return arr, geometry


def render_preview(image_path: Path, seg_path: Path | None, out_png: Path,
                   label_names: dict[int, str] | None = None, title: str | None = None, dpi: int = 110) -> Path:
    """Write a three-view PNG of ``image_path`` with ``seg_path`` overlaid (when given), atomically.

    ``label_names`` maps label values to names for the legend (default "label k")."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    image_path = Path(image_path)
    image, geometry = _read(image_path)
    image, spacing, ras_affine = canonical(image.astype(np.float32), geometry.affine_array)
    seg = None
    if seg_path is not None:
        seg_raw, seg_geometry = _read(Path(seg_path))
        diff = geometry.mismatches(seg_geometry)
        if diff:
            raise ImageReadError(f"{seg_path}: geometry differs from the image {image_path} ({'; '.join(diff)}); "
                                 "give the segmentation that belongs to this image")
        seg = canonical(np.rint(seg_raw).astype(np.int32), geometry.affine_array)[0]
    centre = slice_centre(seg, image.shape)
    world = ras_affine[:3, :3] @ np.asarray(centre) + ras_affine[:3, 3]  # RAS mm of the cut point
    lo, hi = np.percentile(image, DISPLAY_PERCENTILES)
    values = sorted(int(v) for v in np.unique(seg) if v != 0) if seg is not None else []
    colours = _label_colours(values)
    names = label_names or {}

    views = radiological_views(image, centre)
    seg_views = radiological_views(seg, centre) if seg is not None else {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 5), facecolor="black")
    for ax, (name, plane) in zip(axes, views.items()):
        row_ax, col_ax, letters = _VIEW_AXES[name]
        extent = (0, plane.shape[1] * spacing[col_ax], 0, plane.shape[0] * spacing[row_ax])
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower",
                  extent=extent, interpolation="nearest")
        if values:
            index = np.searchsorted(values, seg_views[name])  # label value -> colour index
            shown = np.ma.masked_where(seg_views[name] == 0, index)
            ax.imshow(shown, cmap=ListedColormap([colours[v] for v in values]), vmin=-0.5,
                      vmax=len(values) - 0.5, alpha=OVERLAY_ALPHA, origin="lower", extent=extent,
                      interpolation="nearest")
        _orientation_letters(ax, letters)
        axis = {"axial": 2, "coronal": 1, "sagittal": 0}[name]
        ax.set_title(f"{name}, {'xyz'[axis]} = {world[axis]:.1f} mm (RAS)", color="white")
        ax.set_axis_off()
    if values:
        handles = [Patch(color=colours[v], label=f"{v}: {names.get(v, f'label {v}')}") for v in values]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
                   labelcolor="white")
    fig.suptitle(title or image_path.name, color="white")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    atomic_write_bytes(Path(out_png), buf.getvalue())
    return Path(out_png)


def _orientation_letters(ax, letters: str) -> None:
    style = dict(color="yellow", fontsize=11, transform=ax.transAxes, fontweight="bold")
    left, right, bottom, top = letters
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
