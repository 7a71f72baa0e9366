"""Export to a zip and import it: self-contained, identical predictions, safe extraction, ONNX check."""

from __future__ import annotations

import io
import json
import stat
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.inference.export import MANIFEST_NAME, ExportError, export_model, import_model
from autoseg.inference.pipeline import predict_folder
from autoseg.inference.predictor import load_predictor
from autoseg.postprocessing import PostprocessingDecision
from autoseg.workspace import Workspace

from .conftest import DATASET, MODEL_NAME, blob_image, save_fold, tiny_plans, write_nifti

RUN = dict(progress=False, device="cpu", backend="torch", precision="fp32", tta=False)


@pytest.fixture
def trained(tmp_path):
    """A workspace with a 2-fold random 'trained' model and a post-processing decision."""
    ws = Workspace(tmp_path / "ws")
    model_dir = ws.results_dir(DATASET) / MODEL_NAME
    plans = tiny_plans(spacing=(1.5, 1.5, 2.0))
    for fold in (0, 1):
        save_fold(model_dir, fold, plans, seed=fold)
    PostprocessingDecision(foreground_labels=(1, 2), keep_largest_foreground=True, keep_largest_per_target=(),
                           mean_dice_before={}, mean_dice_after={}, num_cases=2).save(model_dir / "postprocessing.json")
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", blob_image())
    return ws, model_dir


def test_export_import_predict_gives_identical_output(trained, tmp_path):
    ws, model_dir = trained
    zip_path = export_model(model_dir, tmp_path / "model.zip")
    installed = import_model(zip_path, Workspace(tmp_path / "other"))
    assert installed == tmp_path / "other" / "results" / DATASET / MODEL_NAME
    original, imported = load_predictor(model_dir), load_predictor(installed)
    assert imported.folds == (0, 1) and imported.postprocessing == original.postprocessing
    a = predict_folder(original, tmp_path / "in", tmp_path / "out_a", **RUN)
    b = predict_folder(imported, tmp_path / "in", tmp_path / "out_b", **RUN)
    assert a.ok and b.ok
    seg_a = np.asarray(nib.load(str(tmp_path / "out_a" / "c.nii.gz")).dataobj)
    seg_b = np.asarray(nib.load(str(tmp_path / "out_b" / "c.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg_a, seg_b)


def test_zip_holds_weights_of_chosen_folds_and_a_manifest(trained, tmp_path):
    _, model_dir = trained
    zip_path = export_model(model_dir, tmp_path / "model.zip", folds=[1])
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST_NAME))
        ckpt = torch.load(io.BytesIO(zf.read(f"{MODEL_NAME}/fold_1/checkpoint_final.pt")), weights_only=True)
    assert names == {MANIFEST_NAME, f"{MODEL_NAME}/fold_1/checkpoint_final.pt", f"{MODEL_NAME}/plans.json",
                     f"{MODEL_NAME}/dataset.json", f"{MODEL_NAME}/postprocessing.json"}
    assert manifest["folds"] == ["1"] and manifest["dataset_name"] == DATASET
    assert set(manifest["files"]) == names - {MANIFEST_NAME} and "torch" in manifest["versions"]
    assert "optimizer" not in ckpt and ckpt["fold"] == 1
    dataset = json.loads(zipfile.ZipFile(zip_path).read(f"{MODEL_NAME}/dataset.json"))
    assert dataset["labels"] == {"background": 0, "organ": 1, "tumour": 2}


def _valid_zip(trained, tmp_path):
    _, model_dir = trained
    return export_model(model_dir, tmp_path / "model.zip", folds=[0])


def _rewrite(src, dst, extra: list[tuple[zipfile.ZipInfo | str, bytes]], drop=()):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename not in drop:
                zout.writestr(info, zin.read(info))
        for info, data in extra:
            zout.writestr(info, data)
    return dst


@pytest.mark.parametrize("name", ["../evil.txt", f"{MODEL_NAME}/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt",
                                  "a\\..\\evil.txt"])
def test_import_refuses_entries_leaving_the_folder(trained, tmp_path, name):
    bad = _rewrite(_valid_zip(trained, tmp_path), tmp_path / "bad.zip", [(name, b"x")])
    ws = Workspace(tmp_path / "target")
    with pytest.raises(ExportError, match="refusing"):
        import_model(bad, ws)
    assert not (tmp_path / "evil.txt").exists() and not ws.results.exists()


def test_import_refuses_symlinks(trained, tmp_path):
    link = zipfile.ZipInfo(f"{MODEL_NAME}/fold_0/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bad = _rewrite(_valid_zip(trained, tmp_path), tmp_path / "bad.zip", [(link, b"/etc/passwd")])
    with pytest.raises(ExportError, match="link"):
        import_model(bad, Workspace(tmp_path / "target"))


def test_import_refuses_changed_or_unlisted_files(trained, tmp_path):
    good = _valid_zip(trained, tmp_path)
    plans = f"{MODEL_NAME}/plans.json"
    changed = _rewrite(good, tmp_path / "changed.zip", [(plans, b"{}")], drop=(plans,))
    with pytest.raises(ExportError, match="checksum"):
        import_model(changed, Workspace(tmp_path / "t1"))
    unlisted = _rewrite(good, tmp_path / "unlisted.zip", [(f"{MODEL_NAME}/extra.py", b"print()")])
    with pytest.raises(ExportError, match="unlisted"):
        import_model(unlisted, Workspace(tmp_path / "t2"))


def test_import_does_not_replace_an_installed_model_unless_asked(trained, tmp_path):
    good = _valid_zip(trained, tmp_path)
    ws = Workspace(tmp_path / "t")
    target = import_model(good, ws)
    with pytest.raises(ExportError, match="--overwrite"):
        import_model(good, ws)
    assert import_model(good, ws, overwrite=True) == target
    assert [p.name for p in target.parent.iterdir()] == [MODEL_NAME]  # no staging folders left


def test_onnx_export_agrees_with_pytorch(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, model_dir = trained
    zip_path = export_model(model_dir, tmp_path / "model.zip", folds=[0], onnx=True)
    with zipfile.ZipFile(zip_path) as zf:
        graph = zf.read(f"{MODEL_NAME}/fold_0/network.onnx")
        manifest = json.loads(zf.read(MANIFEST_NAME))
    assert 0 <= manifest["onnx_max_abs_diff"]["0"] < 1e-3
    net = load_predictor(model_dir, folds=[0]).networks[0]
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5))  # another batch size
    out = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, net(x).numpy(), atol=1e-3)
