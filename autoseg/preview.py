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
import warnings
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_write_bytes
from autoseg.io import ImageReadError, read_volume
from autoseg.io.images import nonfinite_problem
from autoseg.jsonfiles import InputWarning
from autoseg.paths import file_output, refuse_overwriting_inputs
from autoseg.io.dicom import read_dicom_volume

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


def nearest_finite_slices(finite: np.ndarray, centre: tuple[int, int, int]) -> tuple[int, int, int]:
    """``centre`` with each index moved to the nearest slice (along its axis) holding a finite voxel, so a
    NaN slice in the middle does not blank a whole panel. ``finite`` is the (X, Y, Z) finiteness mask."""
    out = []
    for axis, c in enumerate(centre):
        counts = finite.sum(axis=tuple(a for a in range(3) if a != axis))
        usable = np.flatnonzero(counts)
        out.append(int(usable[np.argmin(np.abs(usable - c))]) if usable.size and counts[c] == 0 else int(c))
    return tuple(out)


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


def display_window(image: np.ndarray, path: Path | str) -> tuple[float, float]:
    """Grey-value window ``(low, high)``, ``high > low``: the ``DISPLAY_PERCENTILES`` of the finite voxels
    (NaN and inf are left out, so one bad voxel cannot make the whole preview one colour); a constant
    image gets ``(v, v + 1)``. An image with no finite voxel is an error naming ``path``."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        raise ImageReadError(f"{path}: no voxel is a finite number (all NaN or infinite); nothing to show, "
                             "re-export the image")
    lo, hi = (float(v) for v in np.percentile(finite, DISPLAY_PERCENTILES))
    if not hi > lo:  # (nearly) constant within the percentiles: widen to the full range, then to 1
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _label_colours(values: list[int]):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {v: cmap(n % cmap.N) for n, v in enumerate(values)}


def _read(path: Path, series_number: int | None = None):
    if Path(path).is_dir() or str(path).lower().endswith(".zip"):  # a DICOM folder or zip
        return read_dicom_volume(Path(path), series_number)
    arr, geometry = read_volume(path)
    if arr.ndim == 4:  # several channels in one file: show the first
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3D volume to preview, got shape {arr.shape}")
    return arr, geometry


def render_preview(image_path: Path, seg_path: Path | None, out_png: Path,
                   label_names: dict[int, str] | None = None, title: str | None = None, dpi: int = 110,
                   series_number: int | None = None) -> Path:
    """Write a three-view PNG of ``image_path`` (an image file, or a DICOM folder or zip: its one image series,
    or the one numbered ``series_number``) with ``seg_path`` overlaid (when given), atomically.

    ``label_names`` maps label values to names for the legend (default "label k"). ``out_png`` must end
    in .png and may not be the image or the segmentation (:class:`~autoseg.paths.PathError`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    image_path = Path(image_path)
    refuse_overwriting_inputs(Path(out_png), [image_path, seg_path], "-o")
    file_output(Path(out_png), "-o", ".png")
    image, geometry = _read(image_path, series_number)
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are handled by display_window
        image, spacing, ras_affine = canonical(image.astype(np.float32), geometry.affine_array)
    finite = np.isfinite(image)
    (lo, hi), n_bad = display_window(image, image_path), int(image.size - np.count_nonzero(finite))
    if n_bad:  # shown at the window's ends (NaN as the lowest value), and said in the title
        image = np.nan_to_num(image, nan=lo, posinf=hi, neginf=lo)
    seg = None
    if seg_path is not None:
        seg_raw, seg_geometry = _read(Path(seg_path))
        problem = nonfinite_problem(seg_path, seg_raw, np.float64)
        if problem:
            raise ImageReadError(problem)
        diff = geometry.mismatches(seg_geometry)
        if diff:
            raise ImageReadError(f"{seg_path}: geometry differs from the image {image_path} ({'; '.join(diff)}); "
                                 "give the segmentation that belongs to this image")
        seg = canonical(np.rint(seg_raw).astype(np.int32), geometry.affine_array)[0]
    centre = nearest_finite_slices(finite, slice_centre(seg, image.shape)) if n_bad else slice_centre(seg, image.shape)
    world = ras_affine[:3, :3] @ np.asarray(centre) + ras_affine[:3, 3]  # RAS mm of the cut point
    values = sorted(int(v) for v in np.unique(seg) if v != 0) if seg is not None else []
    colours = _label_colours(values)
    names = label_names or {}

    views = radiological_views(image, centre)
    seg_views = radiological_views(seg, centre) if seg is not None else {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 5), facecolor="black")
    for ax, (name, plane) in zip(axes, views.items()):
        row_ax, col_ax, letters = _VIEW_AXES[name]
        extent = (0, plane.shape[1] * spacing[col_ax], 0, plane.shape[0] * spacing[row_ax])
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, origin="lower",
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
    notes = [f"{n_bad} NaN/inf voxel(s) shown at the window's ends"] if n_bad else []
    if image.size and image.min() == image.max():
        notes.append(f"constant image (every voxel {lo:g})")
    for note in notes:
        warnings.warn(f"{image_path}: {note}", InputWarning, stacklevel=2)
    fig.suptitle(" - ".join([title or image_path.name] + notes), color="white")
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
