"""Preview PNG: orientation, aspect and the written file."""

import nibabel as nib
import numpy as np
import pytest

from autoseg.io import ImageReadError
from autoseg.preview import canonical, radiological_views, render_preview, slice_centre


def test_radiological_views_put_patient_right_on_the_left_and_anterior_up():
    vol = np.zeros((10, 12, 14))
    vol[8, 6, 7] = 1  # patient right (high x in RAS+)
    vol[5, 10, 7] = 2  # anterior (high y)
    vol[5, 6, 12] = 3  # superior (high z)
    v = radiological_views(vol, (5, 6, 7))
    ax, co, sa = v["axial"], v["coronal"], v["sagittal"]
    assert ax.shape == (12, 10) and co.shape == (14, 10) and sa.shape == (14, 12)
    r, c = np.argwhere(ax == 1)[0]
    assert c < 5  # right side drawn in the left half
    r, c = np.argwhere(ax == 2)[0]
    assert r > 6  # anterior in the upper rows (origin='lower')
    r, c = np.argwhere(co == 3)[0]
    assert r > 7
    r, c = np.argwhere(sa == 2)[0]
    assert c < 6  # anterior on the left in the sagittal view


def test_canonical_undoes_a_permuted_flipped_affine():
    ras = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    stored = np.ascontiguousarray(ras[::-1, ::-1, :].transpose(1, 0, 2))  # axes: -y, -x, z
    affine = np.array([[0, -2.0, 0, 6.0], [-3.0, 0, 0, 12.0], [0, 0, 1.5, 0], [0, 0, 0, 1]])
    back, spacing, ras_affine = canonical(stored, affine)
    assert np.array_equal(back, ras)
    assert spacing == (2.0, 3.0, 1.5)
    # voxel (0, 0, 0) of the canonical volume is the same world point as the stored voxel it came from
    assert np.allclose(ras_affine @ [0, 0, 0, 1], affine @ [4, 3, 0, 1])


def test_centre_is_the_segmentation_centre_of_mass_or_the_middle():
    seg = np.zeros((10, 10, 10), np.int32)
    seg[1:4, 5:8, 2] = 1
    assert slice_centre(seg, seg.shape) == (2, 6, 2)
    assert slice_centre(np.zeros_like(seg), seg.shape) == (5, 5, 5)
    assert slice_centre(None, (9, 7, 5)) == (4, 3, 2)


def _write_case(tmp_path, seg_shape=(20, 24, 12)):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 24, 12)], indexing="ij")
    img = (x ** 2 + y ** 2 + z ** 2 < 0.8).astype(np.float32) * 100 + 10 * x
    seg = np.zeros(seg_shape, np.uint8)
    seg[4:9, 8:14, 4:8] = 1
    seg[12:15, 8:12, 4:8] = 2
    affine = np.diag([1.0, 0.8, 3.0, 1.0])
    nib.save(nib.Nifti1Image(img, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(seg, affine), str(tmp_path / "seg.nii.gz"))
    return tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz"


def test_render_preview_writes_a_png(tmp_path):
    img, seg = _write_case(tmp_path)
    out = render_preview(img, seg, tmp_path / "sub" / "preview.png", {1: "liver", 2: "tumour"})
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # no temporary left behind


def test_render_preview_without_segmentation(tmp_path):
    img, _ = _write_case(tmp_path)
    out = render_preview(img, None, tmp_path / "p.png")
    assert out.stat().st_size > 5_000


def test_render_preview_rejects_a_segmentation_of_another_image(tmp_path):
    img, _ = _write_case(tmp_path)
    (tmp_path / "other").mkdir()
    _, seg = _write_case(tmp_path / "other", seg_shape=(20, 24, 11))
    with pytest.raises(ImageReadError, match="geometry differs"):
        render_preview(img, seg, tmp_path / "p.png")
