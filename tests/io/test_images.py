"""Image IO: round trips keep geometry exactly; ITK (LPS) and nibabel (RAS) agree on the affine."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.io import ImageReadError, read_geometry, read_image, read_volume, write_like

SHAPE = (9, 7, 5)
SPACING = (0.7, 0.9, 3.5)


def oblique_affine() -> np.ndarray:
    """Rotated about two axes, anisotropic voxels, offset origin."""
    a, b = np.deg2rad(20), np.deg2rad(-7)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ rz @ ry @ np.diag(SPACING)
    affine[:3, 3] = [12.5, -80.25, 33.0]
    return affine


def voxels(dtype=np.float32) -> np.ndarray:
    return np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(dtype) * 3 - 50


@pytest.fixture
def nifti(tmp_path):
    path = tmp_path / "ref.nii.gz"
    img = nib.Nifti1Image(voxels(), oblique_affine())
    img.set_qform(oblique_affine(), code=1)
    img.set_sform(oblique_affine(), code=1)
    nib.save(img, str(path))
    return path


def itk_reference(path, array: np.ndarray, affine: np.ndarray):
    """Write ``array`` (X, Y, Z) with a RAS ``affine`` through SimpleITK (LPS world)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps @ affine[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin((lps @ affine[:3, 3]).tolist())
    sitk.WriteImage(img, str(path))
    return path


def assert_same_geometry(g1, g2):
    assert g1.shape == g2.shape
    np.testing.assert_allclose(g1.spacing, g2.spacing, rtol=1e-6)
    np.testing.assert_allclose(g1.affine_array, g2.affine_array, atol=1e-4)
    assert g1.mismatches(g2) == []


def test_nifti_reads_in_nibabel_order(nifti):
    arr, g = read_volume(nifti)
    np.testing.assert_array_equal(arr, voxels())
    np.testing.assert_allclose(g.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(g.affine_array, oblique_affine(), atol=1e-5)
    assert_same_geometry(g, read_geometry(nifti))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_nifti_round_trip_keeps_geometry_and_values(nifti, tmp_path, dtype):
    arr, g = read_volume(nifti)
    out = write_like(arr.astype(dtype) if dtype != np.uint8 else (arr > 0).astype(dtype), nifti, tmp_path / "out.nii.gz")
    back, g2 = read_volume(out)
    assert_same_geometry(g, g2)
    assert int(nib.load(str(out)).header["sform_code"]) == 1
    expected = arr.astype(dtype) if dtype != np.uint8 else (arr > 0).astype(dtype)
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_itk_round_trip_keeps_geometry_and_values(tmp_path, ending):
    ref = itk_reference(tmp_path / f"ref{ending}", voxels(np.int16), oblique_affine())
    arr, g = read_volume(ref)
    np.testing.assert_array_equal(arr, voxels(np.int16))
    np.testing.assert_allclose(g.affine_array, oblique_affine(), atol=1e-6)
    assert_same_geometry(g, read_geometry(ref))
    out = write_like(arr, ref, tmp_path / f"out{ending}")
    back, g2 = read_volume(out)
    assert_same_geometry(g, g2)
    np.testing.assert_array_equal(back, arr)


def test_itk_and_nibabel_agree_on_the_affine(nifti, tmp_path):
    """The same NIfTI read by SimpleITK (LPS -> RAS at the edge) and by nibabel gives one affine and
    one voxel order; so does a copy converted to NRRD by SimpleITK."""
    arr_nib, g_nib = read_volume(nifti)
    arr_itk, g_itk = read_volume(nifti, force_itk=True)
    np.testing.assert_array_equal(arr_itk, arr_nib)
    assert_same_geometry(g_nib, g_itk)
    nrrd = tmp_path / "copy.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(nrrd))
    arr_nrrd, g_nrrd = read_volume(nrrd)
    np.testing.assert_array_equal(arr_nrrd, arr_nib)
    assert_same_geometry(g_nib, g_nrrd)


def test_itk_written_nifti_matches_nibabel_affine(tmp_path):
    path = itk_reference(tmp_path / "itk.nii.gz", voxels(), oblique_affine())
    np.testing.assert_allclose(nib.load(str(path)).affine, oblique_affine(), atol=1e-4)
    np.testing.assert_allclose(read_geometry(path).affine_array, oblique_affine(), atol=1e-4)


def test_write_like_picks_small_integer_types(nifti, tmp_path):
    out = write_like(np.zeros(SHAPE, np.int64) + 3, nifti, tmp_path / "lab.nii.gz")
    assert nib.load(str(out)).get_data_dtype() == np.uint8
    neg = np.zeros(SHAPE, np.int64)
    neg[0, 0, 0] = -1
    out = write_like(neg, nifti, tmp_path / "neg.nii.gz")
    assert nib.load(str(out)).get_data_dtype() == np.int16
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_read_image_stacks_channels_and_rejects_mismatch(nifti, tmp_path):
    second = write_like(voxels() * 2, nifti, tmp_path / "c1.nii.gz")
    data, g = read_image([nifti, second])
    assert data.shape == (2,) + SHAPE and data.dtype == np.float32
    shifted = oblique_affine()
    shifted[:3, 3] += 5
    moved = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(voxels(), shifted), str(moved))
    with pytest.raises(ImageReadError, match="moved.nii.gz.*origin"):
        read_image([nifti, moved])


def test_trailing_singleton_axis_is_dropped(tmp_path):
    path = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(voxels()[..., None], oblique_affine()), str(path))
    assert read_volume(path)[0].shape == SHAPE


@pytest.mark.parametrize("name,content,match", [
    ("missing.nii.gz", None, "not found"),
    ("image.png", b"\x89PNG", "unsupported file type"),
    ("broken.nii.gz", b"not gzip at all" * 30, "not a readable NIfTI"),
    ("broken.nrrd", b"NRRD0004\ngarbage\n", "cannot be read"),
])
def test_unreadable_files_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=match) as e:
        read_volume(path)
    assert str(path) in str(e.value)


def test_truncated_nifti_voxels(nifti):
    data = gzip.decompress(nifti.read_bytes())
    nifti.write_bytes(gzip.compress(data[: len(data) - 100]))
    read_geometry(nifti)  # the header is intact
    with pytest.raises(ImageReadError, match="truncated"):
        read_volume(nifti)


def test_write_nifti_like_an_itk_reference(tmp_path):
    """A NIfTI output for a NRRD input keeps the input's grid (the formats may differ)."""
    ref = itk_reference(tmp_path / "ref.nrrd", voxels(np.int16), oblique_affine())
    out = write_like(voxels(np.int16), ref, tmp_path / "out.nii.gz")
    assert_same_geometry(read_geometry(ref), read_geometry(out))
    back = write_like(voxels(np.int16), out, tmp_path / "back.mha")
    assert_same_geometry(read_geometry(ref), read_geometry(back))


def test_count_nonfinite_counts_after_the_cast_to_float32(monkeypatch):
    """Issue 15: 1e39 is finite in float64 but infinite in float32, where the data are used; counted in chunks."""
    import autoseg.io.images as images

    monkeypatch.setattr(images, "_FINITE_CHUNK", 7)  # several chunks for a 4x5x6 volume
    a = np.zeros((4, 5, 6), np.float64)
    a[0, 0, 0], a[1, 2, 3], a[3, 4, 5] = 1e39, -1e300, np.nan
    assert images.count_nonfinite(a) == 3
    assert images.count_nonfinite(a, np.float64) == 1
    assert images.count_nonfinite(np.ones((2, 2, 2), np.int64)) == 0
    message = images.nonfinite_problem("x.nii.gz", a)
    assert "x.nii.gz: 3 voxel(s)" in message and "beyond the float32 range" in message and "2 of them finite" in message


@pytest.fixture(params=["isal", "stdlib"])
def gzip_module(request, monkeypatch):
    """Each gzip test runs with ISA-L's decompressor (the default where python-isal installs) and with
    the standard library's (the fallback without it)."""
    import autoseg.io.images as images

    if request.param == "stdlib":
        monkeypatch.setattr(images, "_gzip", gzip)
    else:
        pytest.importorskip("isal")
        assert images._gzip.__name__ == "isal.igzip"
    return request.param


@pytest.mark.parametrize("kind", ["nifti1.nii.gz", "nifti2.nii.gz", "plain.nii", "trailing_axis.nii.gz"])
def test_verified_read_equals_the_plain_read(tmp_path, kind, gzip_module):
    from autoseg.io.images import read_volume_verified

    rng = np.random.default_rng(3)
    shape = (7, 6, 5, 1) if kind.startswith("trailing") else (7, 6, 5)
    arr = rng.normal(size=shape).astype(np.float32)
    affine = np.diag([1.5, 0.8, 2.0, 1.0])
    affine[:3, 3] = (4.0, -2.0, 1.0)
    cls = nib.Nifti2Image if kind.startswith("nifti2") else nib.Nifti1Image
    path = tmp_path / kind
    nib.save(cls(arr, affine), str(path))
    a, ga = read_volume(path)
    b, gb = read_volume_verified(path)
    assert a.shape == b.shape == (7, 6, 5) and a.dtype == b.dtype and np.array_equal(a, b) and ga == gb
    reference = np.asanyarray(nib.load(str(path)).dataobj)  # nibabel's own reader
    assert np.array_equal(a, reference.reshape(a.shape)) and a.dtype == reference.dtype


@pytest.mark.parametrize("reader", ["read_volume", "read_volume_verified"])
@pytest.mark.parametrize("damage", ["truncated", "flipped", "length"])
def test_verified_read_finds_damaged_gzip_in_its_one_pass(tmp_path, damage, reader, gzip_module):
    import autoseg.io.images as images

    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(4000, dtype=np.float32).reshape(20, 20, 10), np.eye(4)), str(path))
    raw = path.read_bytes()
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "flipped":
        raw = raw[:200] + bytes([raw[200] ^ 0xFF]) + raw[201:]
    else:  # the stored length no longer matches: only the stream's end shows it
        raw = raw[:-4] + b"\0\0\0\0"
    path.write_bytes(raw)
    with pytest.raises(ImageReadError, match=r"img\.nii\.gz: (damaged gzip data|not a readable NIfTI)"):
        getattr(images, reader)(path)


def test_verified_read_of_a_non_gzip_file_named_gz_says_what_it_is_not(tmp_path):
    from autoseg.io.images import read_volume_verified

    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "img.nii"))
    path.write_bytes((tmp_path / "img.nii").read_bytes())  # uncompressed bytes under a .gz name
    with pytest.raises(ImageReadError, match="is not a gzip file") as plain:
        read_volume(path)
    with pytest.raises(ImageReadError) as verified:
        read_volume_verified(path)
    assert str(verified.value) == str(plain.value)
