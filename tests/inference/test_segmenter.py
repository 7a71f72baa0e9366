"""The Python API (`autoseg.Segmenter`): each input kind comes back as the same kind with its geometry,
and its labels equal the file `autoseg predict` writes for the same image."""

from __future__ import annotations

import gzip
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import dicom_series as ds
from autoseg import Segmenter
from autoseg.cli import EXIT_OK, main
from autoseg.training import session
from autoseg.training.session import TrainRequest
from autoseg.inference.predictor import PredictorError
from autoseg.io import read_volume
from autoseg.io.in_memory import InputImageError
from tiny import tw

from .conftest import DATASET as TWO_CHANNEL_DATASET, MODEL_NAME, blob_image, oblique_affine, save_fold, tiny_plans
from .conftest import write_nifti

FAST = dict(device="cpu", backend="torch", tta=False)
FAST_CLI = ["--no-tta", "--no-progress", "--device", "cpu", "--backend", "torch"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny workspace (one channel, labels 0/1/2) with fold 0 trained for a few iterations, and test
    images on oblique, anisotropic grids (resampled to the model's 1 mm, cropped, then back)."""
    root = tmp_path_factory.mktemp("seg")
    ws = tw.make_workspace(root / "ws")
    session.train(ws, TrainRequest(settings=dict(tw.FAST, iters_per_epoch=10)), progress=False)
    images = root / "in"
    for i in range(3):
        image, _ = tw.toy_case(10 + i, shape=(20, 18, 12))
        image = image * 50 + 100
        image[:2] = image[:, -2:] = 0  # a zero border: the case is cropped, and pasted back
        write_nifti(images / f"c{i}_0000.nii.gz", image, oblique_affine(spacing=(0.9, 1.1, 1.4)))
    return ws, images


@pytest.fixture(scope="module")
def predicted(trained, tmp_path_factory):
    """What `autoseg predict` writes for the test images (the reference every kind must equal)."""
    ws, images = trained
    out = tmp_path_factory.mktemp("predicted")
    assert main(["predict", "-i", str(images), "-o", str(out), "--workdir", str(ws.root), *FAST_CLI]) == EXIT_OK
    return out


@pytest.fixture(scope="module")
def segmenter(trained):
    ws, _ = trained
    return Segmenter.from_workspace(ws.root, tw.DATASET, **FAST)


def _reference(predicted, i=0) -> np.ndarray:
    return np.asarray(nib.load(str(predicted / f"c{i}.nii.gz")).dataobj)


def test_nibabel_image_comes_back_with_its_affine_and_header_and_predicts_labels(segmenter, trained, predicted,
                                                                                  tmp_path):
    _, images = trained
    img = nib.load(str(images / "c0_0000.nii.gz"))
    out = segmenter.predict(img)
    ref = nib.load(str(predicted / "c0.nii.gz"))
    assert isinstance(out, nib.Nifti1Image) and out.shape == img.shape
    np.testing.assert_array_equal(out.affine, img.affine)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2  # as the input's
    np.testing.assert_array_equal(out.header.get_zooms(), img.header.get_zooms())
    labels = np.asarray(out.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}  # a real prediction, not one class
    np.testing.assert_array_equal(labels, _reference(predicted))
    assert labels.dtype == np.asarray(ref.dataobj).dtype == np.uint8
    nib.save(out, str(tmp_path / "saved.nii.gz"))  # saved, it is the file `autoseg predict` writes
    assert gzip.open(tmp_path / "saved.nii.gz").read() == gzip.open(predicted / "c0.nii.gz").read()


def test_path_gives_a_nibabel_image_or_writes_out_like_predict(segmenter, trained, predicted, tmp_path):
    _, images = trained
    out = segmenter.predict(str(images / "c1_0000.nii.gz"))
    assert isinstance(out, nib.Nifti1Image)
    np.testing.assert_array_equal(np.asarray(out.dataobj), _reference(predicted, 1))
    written = segmenter.predict(images / "c1_0000.nii.gz", out=tmp_path / "sub" / "c1.nii.gz")
    assert written == tmp_path / "sub" / "c1.nii.gz"
    a, b = nib.load(str(written)), nib.load(str(predicted / "c1.nii.gz"))
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert a.header.binaryblock == b.header.binaryblock  # the same header, byte for byte


def test_simpleitk_image_keeps_origin_spacing_and_direction(segmenter, trained, tmp_path):
    ws, images = trained
    nrrd_in = tmp_path / "nrrd_in"
    nrrd_in.mkdir()
    itk = sitk.ReadImage(str(images / "c2_0000.nii.gz"))
    sitk.WriteImage(itk, str(nrrd_in / "c2_0000.nrrd"))
    assert main(["predict", "-i", str(nrrd_in), "-o", str(tmp_path / "out"), "--workdir", str(ws.root),
                 *FAST_CLI]) == EXIT_OK
    image = sitk.ReadImage(str(nrrd_in / "c2_0000.nrrd"))
    out = segmenter.predict(image)
    assert isinstance(out, sitk.Image)
    assert out.GetSize() == image.GetSize()
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection())
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "c2.nrrd")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), expected)
    assert len(np.unique(expected)) > 1


def test_numpy_array_with_spacing_or_affine_keeps_its_shape(segmenter, trained, predicted):
    _, images = trained
    img = nib.load(str(images / "c0_0000.nii.gz"))
    array = np.asarray(img.dataobj)
    by_spacing = segmenter.predict(array, spacing=img.header.get_zooms())
    by_affine = segmenter.predict(array, affine=img.affine)
    assert isinstance(by_spacing, np.ndarray) and by_spacing.shape == array.shape
    np.testing.assert_array_equal(by_spacing, _reference(predicted))
    np.testing.assert_array_equal(by_affine, by_spacing)
    np.testing.assert_array_equal(segmenter.predict(np.asfortranarray(array), spacing=img.header.get_zooms()),
                                  by_spacing)  # memory layout does not matter, axes do
    turned = segmenter.predict(array.transpose(2, 0, 1), spacing=np.asarray(img.header.get_zooms())[[2, 0, 1]])
    assert turned.shape == (array.shape[2], array.shape[0], array.shape[1])


def test_probabilities_cover_the_input_grid_and_give_the_labels(segmenter, trained):
    _, images = trained
    img = nib.load(str(images / "c0_0000.nii.gz"))
    labels, probs = segmenter.predict(img, return_probabilities=True)
    assert probs.shape == (3, *img.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(0), np.asarray(labels.dataobj))
    assert np.all(probs[0][np.asarray(img.dataobj) == 0] == 1)  # outside the crop box: background for sure
    itk_labels, itk_probs = segmenter.predict(sitk.ReadImage(str(images / "c0_0000.nii.gz")),
                                              return_probabilities=True)
    assert itk_probs.shape == (3, *sitk.GetArrayFromImage(itk_labels).shape)  # (K, Z, Y, X) like the array
    np.testing.assert_array_equal(itk_probs.argmax(0), sitk.GetArrayFromImage(itk_labels))


def test_dicom_folder_gives_what_predict_writes_for_it(segmenter, trained, tmp_path):
    ws, _ = trained
    image, _ = tw.toy_case(20, shape=(18, 16, 10))
    ct = np.round(image * 200 + 40)
    ds.write_series(tmp_path / "dcm" / "p", ct, (0.9, 1.1, 1.6), (-30.0, -20.0, 10.0), ds.oblique_orientation())
    assert main(["predict", "-i", str(tmp_path / "dcm"), "-o", str(tmp_path / "out"), "--workdir", str(ws.root),
                 *FAST_CLI]) == EXIT_OK
    expected, geometry = read_volume(tmp_path / "out" / "p.nii.gz")
    out = segmenter.predict(tmp_path / "dcm" / "p")
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)
    np.testing.assert_allclose(out.affine, geometry.affine_array, atol=1e-4)
    assert segmenter.predict(tmp_path / "dcm" / "p", out=tmp_path / "p.nii.gz") == tmp_path / "p.nii.gz"
    with pytest.raises(Exception, match="NIfTI"):
        segmenter.predict(tmp_path / "dcm" / "p", out=tmp_path / "p.nrrd")


def test_from_model_zip_predicts_like_the_workspace_model(segmenter, trained, tmp_path):
    ws, images = trained
    zip_path = tmp_path / "model.zip"
    assert main(["export", tw.DATASET, "-o", str(zip_path), "--workdir", str(ws.root)]) == EXIT_OK
    img = nib.load(str(images / "c0_0000.nii.gz"))
    expected = np.asarray(segmenter.predict(img).dataobj)
    with Segmenter.from_model_zip(zip_path, **FAST) as temporary:
        scratch = Path(temporary._scratch.name)
        assert (scratch / "results" / tw.DATASET).is_dir()
        np.testing.assert_array_equal(np.asarray(temporary.predict(img).dataobj), expected)
    assert not scratch.exists()  # the temporary workspace is gone
    kept = Segmenter.from_model_zip(zip_path, workdir=tmp_path / "other", **FAST)
    assert (tmp_path / "other" / "results" / tw.DATASET).is_dir()
    np.testing.assert_array_equal(kept.predict(np.asarray(img.dataobj), affine=img.affine), expected)
    Segmenter.from_model_zip(zip_path, workdir=tmp_path / "other", **FAST)  # installed already: used as it is


def test_two_threads_give_the_results_of_sequential_calls(segmenter, trained):
    _, images = trained
    imgs = [nib.load(str(images / f"c{i}_0000.nii.gz")) for i in range(3)] * 2
    sequential = [np.asarray(segmenter.predict(img).dataobj) for img in imgs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda img: np.asarray(segmenter.predict(img).dataobj), imgs))
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)


def test_two_threads_share_one_openvino_network(trained):
    pytest.importorskip("openvino")
    ws, images = trained
    seg = Segmenter.from_workspace(ws.root, device="cpu", backend="openvino", precision="fp32", tta=False)
    arrays = [np.asarray(nib.load(str(images / f"c{i}_0000.nii.gz")).dataobj) for i in range(3)] * 2
    sequential = [seg.predict(a, spacing=(0.9, 1.1, 1.4)) for a in arrays]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda a: seg.predict(a, spacing=(0.9, 1.1, 1.4)), arrays))
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory):
    """A two-channel model (random weights; the logits read both channels) and one case as files."""
    root = tmp_path_factory.mktemp("two")
    ws = root / "ws"
    save_fold(ws / "results" / TWO_CHANNEL_DATASET / MODEL_NAME, 0, tiny_plans(spacing=(1.5, 1.5, 2.0),
                                                                            channels=("T1", "T2")))
    affine = oblique_affine()
    for c in range(2):
        write_nifti(root / "in" / f"p_000{c}.nii.gz", blob_image(seed=c) * (1 + c), affine)
    code = main(["predict", "-i", str(root / "in"), "-o", str(root / "out"), "--workdir", str(ws), *FAST_CLI])
    assert code == EXIT_OK
    return Segmenter.from_workspace(ws, 901, **FAST), root


def test_multichannel_images_are_a_list_in_channel_order(two_channels):
    seg, root = two_channels
    assert seg.channel_names == ("T1", "T2")
    files = [root / "in" / f"p_000{c}.nii.gz" for c in range(2)]
    expected = np.asarray(nib.load(str(root / "out" / "p.nii.gz")).dataobj)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(np.asarray(seg.predict([nib.load(str(f)) for f in files]).dataobj), expected)
    np.testing.assert_array_equal(np.asarray(seg.predict(files).dataobj), expected)
    arrays = [np.asarray(nib.load(str(f)).dataobj) for f in files]
    np.testing.assert_array_equal(seg.predict(arrays, spacing=(0.8, 1.1, 2.5)), expected)
    with pytest.raises(InputImageError, match=r"expects 2 channel\(s\) \(T1, T2\) but got one image"):
        seg.predict(nib.load(str(files[0])))
    with pytest.raises(InputImageError, match="different kinds"):
        seg.predict([nib.load(str(files[0])), arrays[1]], spacing=(0.8, 1.1, 2.5))
    with pytest.raises(Exception, match="channel geometry differs"):
        seg.predict([arrays[0], arrays[1][:-1]], spacing=(0.8, 1.1, 2.5))


def test_bad_input_is_named(segmenter, trained, tmp_path):
    ws, images = trained
    volume = np.asarray(nib.load(str(images / "c0_0000.nii.gz")).dataobj)
    with pytest.raises(InputImageError, match=r"expected a 3D volume .* shape \(20, 18\).*add an axis"):
        segmenter.predict(volume[:, :, 0])
    with pytest.raises(InputImageError, match=r"no voxel size; give spacing="):
        segmenter.predict(volume)
    with pytest.raises(InputImageError, match=r"spacing=.* must be three numbers"):
        segmenter.predict(volume, spacing=(1.0, 1.0))
    with pytest.raises(InputImageError, match=r"invalid voxel spacing"):
        segmenter.predict(volume, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InputImageError, match="differs from the voxel size of affine="):
        segmenter.predict(volume, spacing=(1.0, 1.0, 1.0), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(InputImageError, match="spacing= and affine= are for NumPy arrays"):
        segmenter.predict(nib.load(str(images / "c0_0000.nii.gz")), spacing=(1, 1, 1))
    with pytest.raises(InputImageError, match="out= is for images given by path"):
        segmenter.predict(volume, spacing=(1, 1, 1), out=tmp_path / "x.nii.gz")
    with pytest.raises(InputImageError, match="cannot predict a builtins.dict"):
        segmenter.predict({"image": volume})
    with pytest.raises(Exception, match=r"missing\.nii\.gz: file not found"):
        segmenter.predict(tmp_path / "missing.nii.gz")
    with pytest.raises(PredictorError, match=r"dataset '999' has no trained model .*trained: Dataset990_Tiny"):
        Segmenter.from_workspace(ws.root, 999, **FAST)
    with pytest.raises(PredictorError, match="workdir .*nowhere: folder not found"):
        Segmenter.from_workspace(tmp_path / "nowhere", tw.DATASET)
    with pytest.raises(TypeError, match="unknown option.*mirroring.*the options are device"):
        Segmenter.from_workspace(ws.root, tw.DATASET, mirroring=False)
    with pytest.raises(PredictorError, match="not found; give the .zip"):
        Segmenter.from_model_zip(tmp_path / "nothing.zip")


def test_import_autoseg_stays_light():
    code = ("import sys, autoseg; assert 'torch' not in sys.modules, 'torch imported'; "
            "from autoseg import Segmenter; print(Segmenter.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).parents[2]), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Segmenter"
