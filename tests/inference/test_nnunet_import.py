"""`autoseg import` of nnU-Net v2 models (results folder, exported zip) and `autoseg predict` with them,
through the command line. Expected labels are computed here from the same network and nnU-Net's rules."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from autoseg.cli import EXIT_INPUT, EXIT_OK, main
from autoseg.inference.nnunet_import import NnUNetImportError, autoseg_transpose, load_nnunet_checkpoint
from autoseg.inference.predictor import load_predictor

from .nnunet_folder import DATASET, checkpoint, dataset_dict, make_network, make_results_folder, plans_dict

TORCH = ["--no-progress", "--device", "cpu", "--backend", "torch", "--precision", "fp32"]
MODEL = "nnunet__nnUNetPlans.nnUNetTrainer__3d_fullres"


def _image(tmp_path, seed=0) -> np.ndarray:
    """A 16^3 image (no zero voxel: nothing is cropped) at 1 mm, the plans' spacing and patch."""
    rng = np.random.default_rng(seed)
    img = (100 + 40 * rng.standard_normal((16, 16, 16))).astype(np.float32)
    img[4:11, 3:9, 6:14] += 150
    img = np.abs(img) + 1
    path = tmp_path / "in" / "case_0000.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(path))
    return img


def _expected(nets, img, tta: bool, regions=None, transpose=(0, 1, 2), scheme="zscore") -> np.ndarray:
    """Labels nnU-Net gives for a 16^3 image that is one patch: its array is the file's axes reversed,
    then transposed; z-score; logits averaged over folds (and the 8 mirrorings); argmax (or regions)."""
    arr = img.transpose(2, 1, 0).transpose(transpose)
    if scheme == "zscore":
        arr = (arr - arr.mean(dtype=np.float64)) / arr.std(dtype=np.float64)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    flips = [()] + ([(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if tta else [])
    with torch.no_grad():
        logits = sum(torch.flip(net(torch.flip(x, f))[0], f) for net in nets for f in flips)[0].numpy()
    if regions:
        seg = np.zeros(logits.shape[1:], np.int16)
        for k, value in enumerate(regions):
            seg[logits[k] > 0] = value
    else:
        seg = logits.argmax(0)
    back = [transpose.index(a) for a in range(3)]
    return seg.transpose(back).transpose(2, 1, 0)


def _predict(tmp_path, ws, out, model, *extra):
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / out), "--model", str(model),
                 "--workdir", str(ws), *TORCH, *extra])
    assert code == EXIT_OK
    return np.asarray(nib.load(str(tmp_path / out / "case.nii.gz")).dataobj)


@pytest.mark.parametrize("resenc", [False, True], ids=["plain", "resenc"])
def test_import_results_folder_and_predict_as_nnunet(tmp_path, capsys, resenc):
    folder, nets = make_results_folder(tmp_path / "nnUNet_results", resenc=resenc, folds=(0, 1))
    img = _image(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    target = ws / "results" / DATASET / MODEL
    assert f"installed {target}" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == ["dataset.json", "fold_0", "fold_1", "nnunet_plans.json",
                                                        "plans.json"]
    predictor = load_predictor(target)
    assert predictor.arch == "nnunet" and predictor.mirror_axes == (0, 1, 2) and predictor.folds == (0, 1)
    np.testing.assert_array_equal(_predict(tmp_path, ws, "no_tta", target, "--no-tta"), _expected(nets, img, False))
    np.testing.assert_array_equal(_predict(tmp_path, ws, "tta", target), _expected(nets, img, True))


def test_transposed_plans_give_nnunet_array_layout(tmp_path):
    """nnU-Net's transpose_forward (1, 0, 2) in its reversed axes is (1, 2, 0) in the file's axes."""
    assert autoseg_transpose([1, 0, 2]) == ((1, 2, 0), (2, 0, 1))
    folder, nets = make_results_folder(tmp_path / "r", plans=plans_dict(transpose=(1, 0, 2)))
    img = _image(tmp_path)
    assert main(["import", str(folder), "--workdir", str(tmp_path / "ws")]) == EXIT_OK
    seg = _predict(tmp_path, tmp_path / "ws", "out", tmp_path / "ws" / "results" / DATASET / MODEL, "--no-tta")
    np.testing.assert_array_equal(seg, _expected(nets, img, False, transpose=(1, 0, 2)))


def test_no_mirroring_trainer_predicts_without_tta(tmp_path):
    folder, nets = make_results_folder(tmp_path / "r", trainer="nnUNetTrainerNoMirroring", mirror_axes=None)
    img = _image(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    target = ws / "results" / DATASET / "nnunet__nnUNetPlans.nnUNetTrainerNoMirroring__3d_fullres"
    assert load_predictor(target).mirror_axes == ()
    np.testing.assert_array_equal(_predict(tmp_path, ws, "out", target), _expected(nets, img, False))


def test_region_model_paints_regions_in_order(tmp_path):
    folder, nets = make_results_folder(tmp_path / "r", regions=True)
    img = _image(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    seg = _predict(tmp_path, ws, "out", ws / "results" / DATASET / MODEL, "--no-tta")
    expected = _expected(nets, img, False, regions=(1, 2))
    assert set(np.unique(expected)) >= {0, 1, 2}  # both regions and background occur
    np.testing.assert_array_equal(seg, expected)


def test_exported_zip_is_imported(tmp_path):
    folder, nets = make_results_folder(tmp_path / "nnUNet_results", trainer="nnUNetTrainer_250epochs")
    (folder / "fold_0" / "progress.png").write_bytes(b"png")
    zip_path = tmp_path / "model.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:  # nnUNetv2_export_model_to_zip: paths relative to nnUNet_results
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tmp_path / "nnUNet_results").as_posix())
    img = _image(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(zip_path), "--workdir", str(ws)]) == EXIT_OK
    target = ws / "results" / DATASET / "nnunet__nnUNetPlans.nnUNetTrainer_250epochs__3d_fullres"
    np.testing.assert_array_equal(_predict(tmp_path, ws, "out", target, "--no-tta"), _expected(nets, img, False))


def test_openvino_backend_runs_the_imported_network(tmp_path):
    pytest.importorskip("openvino")
    folder, nets = make_results_folder(tmp_path / "r", resenc=True)
    img = _image(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "ov"), "--model",
                 str(ws / "results" / DATASET / MODEL), "--workdir", str(ws), "--no-progress", "--backend", "openvino",
                 "--precision", "fp32", "--no-tta"])
    assert code == EXIT_OK
    seg = np.asarray(nib.load(str(tmp_path / "ov" / "case.nii.gz")).dataobj)
    assert (seg == _expected(nets, img, False)).mean() > 0.999


# --- bad input: one message naming the file and what to do; nothing installed ---------------------

def _refused(tmp_path, capsys, source, *words, extra=()):
    ws = tmp_path / "ws"
    code = main(["import", str(source), "--workdir", str(ws), *extra])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not (ws / "results").exists() or not any((ws / "results").rglob("*.pt"))
    return err


def test_missing_fold_checkpoint_is_refused(tmp_path, capsys):
    folder, _ = make_results_folder(tmp_path / "r", folds=(0, 1))
    (folder / "fold_1" / "checkpoint_final.pth").unlink()
    _refused(tmp_path, capsys, folder, str(folder / "fold_1" / "checkpoint_final.pth"), "--c")


def test_checkpoint_of_another_architecture_is_refused(tmp_path, capsys):
    folder, _ = make_results_folder(tmp_path / "r", folds=(0, 1))
    other = make_network(features=(4, 8, 32))
    torch.save(checkpoint(other, plans_dict(), dataset_dict()), folder / "fold_1" / "checkpoint_final.pth")
    _refused(tmp_path, capsys, folder, str(folder / "fold_1" / "checkpoint_final.pth"), "do not fit the PlainConvUNet")


def test_unknown_trainer_is_refused_unless_allowed(tmp_path, capsys):
    folder, nets = make_results_folder(tmp_path / "r", trainer="MyTrainer")
    _refused(tmp_path, capsys, folder, "trainer 'MyTrainer'", "--allow-trainer MyTrainer")
    assert main(["import", str(folder), "--workdir", str(tmp_path / "ws"), "--allow-trainer", "MyTrainer"]) == EXIT_OK


def test_unsupported_network_class_is_refused(tmp_path, capsys):
    plans = plans_dict()
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.primus.Primus"
    folder, _ = make_results_folder(tmp_path / "r", plans=plans)
    _refused(tmp_path, capsys, folder, str(folder / "plans.json"), "Primus", "PlainConvUNet and ResidualEncoderUNet")


def test_cascade_and_unknown_normalisation_are_refused(tmp_path, capsys):
    plans = plans_dict()
    plans["configurations"]["3d_fullres"]["previous_stage"] = "3d_lowres"
    folder, _ = make_results_folder(tmp_path / "a", plans=plans)
    _refused(tmp_path, capsys, folder, "cascade", "3d_lowres")
    folder, _ = make_results_folder(tmp_path / "b", plans=plans_dict(scheme="MyNormalization"))
    _refused(tmp_path, capsys, folder, "'MyNormalization'", str(folder / "plans.json"))


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path, capsys):
    folder, _ = make_results_folder(tmp_path / "r")
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    ckpt["logging"]["evil"] = Evil()
    with open(folder / "fold_0" / "checkpoint_final.pth", "wb") as f:
        torch.save(ckpt, f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    _refused(tmp_path, capsys, folder, str(folder / "fold_0" / "checkpoint_final.pth"), "without running code")
    assert not marker.exists()


def test_real_checkpoint_keys_load_safely(tmp_path):
    folder, nets = make_results_folder(tmp_path / "r")
    ckpt = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "nnUNetTrainer" and tuple(ckpt["inference_allowed_mirroring_axes"]) == (0, 1, 2)
    with pytest.raises(NnUNetImportError, match="not an nnU-Net v2 checkpoint"):
        torch.save({"weights": 1}, tmp_path / "x.pth")
        load_nnunet_checkpoint(tmp_path / "x.pth")


def test_installed_model_is_not_replaced_without_overwrite(tmp_path, capsys):
    folder, _ = make_results_folder(tmp_path / "r")
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    before = (ws / "results" / DATASET / MODEL / "fold_0" / "checkpoint_final.pt").read_bytes()
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_INPUT
    assert "--overwrite" in capsys.readouterr().err
    assert (ws / "results" / DATASET / MODEL / "fold_0" / "checkpoint_final.pt").read_bytes() == before
    assert main(["import", str(folder), "--workdir", str(ws), "--overwrite"]) == EXIT_OK
    plans = json.loads((ws / "results" / DATASET / MODEL / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"] == "nnunet"


def _raw_dataset(tmp_path, n=4) -> Path:
    """The model's raw training dataset: n 16^3 MR cases with labels 0-2 (dataset.json as nnU-Net's)."""
    raw = tmp_path / "raw" / DATASET
    for i in range(n):
        rng = np.random.default_rng(i)
        img = (100 + 20 * rng.standard_normal((16, 16, 16))).astype(np.float32) + 50
        seg = np.zeros((16, 16, 16), np.uint8)
        seg[4:10, 4:12, 3:9] = 1
        seg[6:9, 6:9, 5:8] = 2
        img[seg > 0] += 80
        for sub, arr in (("imagesTr", img), ("labelsTr", seg)):
            (raw / sub).mkdir(parents=True, exist_ok=True)
            name = f"c{i}_0000.nii.gz" if sub == "imagesTr" else f"c{i}.nii.gz"
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(raw / sub / name))
    (raw / "dataset.json").write_text(json.dumps({**dataset_dict(), "numTraining": n}))
    return raw


def test_int8_quantize_and_predict_an_imported_model(tmp_path, capsys):
    pytest.importorskip("nncf")
    folder, nets = make_results_folder(tmp_path / "r")
    raw = _raw_dataset(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    target = ws / "results" / DATASET / MODEL
    assert main(["quantize", "--model", str(target), "--workdir", str(ws)]) == EXIT_INPUT
    assert "--raw-data" in capsys.readouterr().err  # no data to calibrate on: says what is missing
    code = main(["quantize", "--model", str(target), "--workdir", str(ws), "--raw-data", str(raw), "--patches", "4",
                 "--check-cases", "1", "--tolerance", "1.0"])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "fold 0: int8 Dice" in out and "passed" in out
    img = _image(tmp_path)
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "int8"), "--model", str(target),
                 "--workdir", str(ws), "--no-progress", "--backend", "openvino", "--precision", "int8", "--no-tta"])
    assert code == EXIT_OK
    seg = np.asarray(nib.load(str(tmp_path / "int8" / "case.nii.gz")).dataobj)
    assert seg.shape == img.shape and (seg == _expected(nets, img, False)).mean() > 0.8


def test_predict_with_an_nnunet_folder_says_to_import_it(tmp_path, capsys):
    folder, _ = make_results_folder(tmp_path / "r")
    _image(tmp_path)
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(folder),
                 "--workdir", str(tmp_path / "ws"), *TORCH])
    assert code == EXIT_INPUT and f"autoseg import {folder}" in capsys.readouterr().err


def test_autoseg_export_of_an_imported_model_keeps_its_mirroring(tmp_path):
    folder, nets = make_results_folder(tmp_path / "r", trainer="nnUNetTrainerNoMirroring", mirror_axes=None)
    img = _image(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    target = ws / "results" / DATASET / "nnunet__nnUNetPlans.nnUNetTrainerNoMirroring__3d_fullres"
    assert main(["export", str(target), "-o", str(tmp_path / "m.zip"), "--workdir", str(ws)]) == EXIT_OK
    other = tmp_path / "other"
    assert main(["import", str(tmp_path / "m.zip"), "--workdir", str(other)]) == EXIT_OK
    moved = other / "results" / DATASET / target.name
    assert load_predictor(moved).mirror_axes == ()
    np.testing.assert_array_equal(_predict(tmp_path, other, "out", moved), _expected(nets, img, False))


def test_2d_configuration_predicts_slice_by_slice(tmp_path):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    plans = plans_dict()
    cfg = plans["configurations"]["3d_fullres"]
    kw = cfg["architecture"]["arch_kwargs"]
    kw.update(conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
              kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]])
    cfg.update(patch_size=[16, 16], spacing=[1.0, 1.0], median_image_size_in_voxels=[16.0, 16.0],
               data_identifier="nnUNetPlans_2d")
    plans["configurations"] = {"2d": cfg}
    torch.manual_seed(3)
    net = PlainConvUNet(1, 3, [4, 8, 16], nn.Conv2d, [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]], [2, 2, 2], 3, [2, 2],
                        True, nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
                        {"inplace": True}).eval()
    folder = tmp_path / "r" / DATASET / "nnUNetTrainer__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_dict()))
    torch.save(checkpoint(net, plans, dataset_dict(), config="2d", mirror_axes=(0, 1)),
               folder / "fold_0" / "checkpoint_final.pth")
    img = _image(tmp_path)
    ws = tmp_path / "ws"
    assert main(["import", str(folder), "--workdir", str(ws)]) == EXIT_OK
    seg = _predict(tmp_path, ws, "out", ws / "results" / DATASET / "nnunet__nnUNetPlans.nnUNetTrainer__2d", "--no-tta")
    arr = img.transpose(2, 1, 0)
    arr = (arr - arr.mean(dtype=np.float64)) / arr.std(dtype=np.float64)
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[:, None])  # slices as a batch
    np.testing.assert_array_equal(seg, logits.argmax(1).numpy().transpose(2, 1, 0))
