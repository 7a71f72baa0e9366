"""`autoseg evaluate` and `autoseg show` from the command line."""

import json

import nibabel as nib
import numpy as np

import autoseg.cli.evaluate  # noqa: F401  (registers the commands)
from autoseg.cli import EXIT_INPUT, EXIT_OK, main


def _dataset(tmp_path):
    root = tmp_path / "raw" / "Dataset003_Cli"
    (root / "labelsTr").mkdir(parents=True)
    (root / "imagesTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "organ": 1},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[3:8, 3:8, 3:8] = 1
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(seg, affine), str(root / "labelsTr" / "c1.nii.gz"))
    nib.save(nib.Nifti1Image(seg * 50.0, affine), str(root / "imagesTr" / "c1_0000.nii.gz"))
    pred = tmp_path / "pred"
    pred.mkdir()
    nib.save(nib.Nifti1Image(np.roll(seg, 1, 0), affine), str(pred / "c1.nii.gz"))
    return root, pred


def test_evaluate_by_dataset_number_writes_summary(tmp_path, capsys):
    root, pred = _dataset(tmp_path)
    code = main(["evaluate", str(root / "labelsTr"), str(pred), "-d", "3", "--workdir", str(tmp_path),
                 "-j", "1", "--no-progress", "--tolerance-mm", "0.5"])
    assert code == EXIT_OK
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["cases"]["c1"]["organ"]["dice"] == 0.8 and summary["tolerance_mm"] == 0.5
    assert "foreground mean" in capsys.readouterr().out


def test_evaluate_finds_dataset_json_next_to_labels_and_reports_missing(tmp_path, capsys):
    root, pred = _dataset(tmp_path)
    (pred / "c1.nii.gz").unlink()
    (pred / "other.nii.gz").write_bytes(b"")
    code = main(["evaluate", str(root / "labelsTr"), str(pred), "-j", "1", "--no-progress"])
    assert code == EXIT_INPUT
    assert "c1" in capsys.readouterr().err


def test_show_writes_png(tmp_path):
    root, _ = _dataset(tmp_path)
    out = tmp_path / "p.png"
    code = main(["show", str(root / "imagesTr" / "c1_0000.nii.gz"), str(root / "labelsTr" / "c1.nii.gz"),
                 "-o", str(out), "-d", str(root / "dataset.json")])
    assert code == EXIT_OK and out.read_bytes()[:4] == b"\x89PNG"
