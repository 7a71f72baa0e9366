"""Cross-validation results: merging folds, `postprocess` and `find-best` on hand-made predictions."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from autoseg import api_predict
from autoseg.inference.crossval import CROSSVAL_DIR, CrossvalError, merge_folds
from autoseg.inference.probabilities import SavedProbabilities, save_probabilities
from autoseg.postprocessing import PostprocessingDecision
from autoseg.splits import Fold, Splits
from autoseg.workspace import Workspace

from .conftest import DATASET, save_fold, tiny_plans

CASES = ["c0", "c1", "c2", "c3"]
SPLITS = Splits(folds=(Fold(train=("c2", "c3"), val=("c0", "c1")), Fold(train=("c0", "c1"), val=("c2", "c3"))),
                seed=0)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
A, B = "unet__autosegPlans__3d_fullres", "unet__autosegPlans__2d"


def _cube(shift=0):
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[4 + shift:8 + shift, 4:8, 4:8] = 1
    return seg


def _save_seg(path, seg):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(seg, AFFINE), str(path))


def _validation(model_dir, make_seg, probabilities=True, folds=(0, 1)):
    """Fold folders with a checkpoint and validation predictions made by ``make_seg()``."""
    for k in folds:
        save_fold(model_dir, k, tiny_plans())
        val = model_dir / f"fold_{k}" / "validation"
        for case in SPLITS.folds[k].val:
            seg = make_seg()
            _save_seg(val / f"{case}.nii.gz", seg)
            if probabilities:
                probs = np.stack([np.where(seg == 0, 0.9, 0.1), np.where(seg == 1, 0.9, 0.1)]).astype(np.float32)
                save_probabilities(val / f"{case}.npz", SavedProbabilities(probs, ((0, 12),) * 3, seg.shape))
        (val / "summary.json").write_text("{}")


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 4,
                    "file_ending": ".nii.gz"}
    for folder in (ws.raw / DATASET, ws.preprocessed_dir(DATASET)):
        folder.mkdir(parents=True)
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for case in CASES:
        _save_seg(ws.raw / DATASET / "labelsTr" / f"{case}.nii.gz", _cube())
    SPLITS.save(ws.preprocessed_dir(DATASET) / "splits.json")

    def with_island():
        seg = _cube()
        seg[0, 0, :2] = 1  # a small false positive far from the organ
        return seg

    results = ws.results_dir(DATASET)
    _validation(results / A, with_island)
    _validation(results / B, lambda: _cube(shift=1))
    return ws


def test_folds_are_merged_and_an_unfinished_fold_is_named(workspace, tmp_path):
    merged, probs = merge_folds(workspace.results_dir(DATASET) / A, SPLITS, ".nii.gz")
    assert probs and sorted(p.name for p in merged.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    _validation(tmp_path / "m", _cube, folds=(0,))
    with pytest.raises(CrossvalError, match="fold 1 has no finished validation"):
        merge_folds(tmp_path / "m", SPLITS, ".nii.gz")


def test_postprocess_saves_the_decision_with_the_model(workspace):
    path = api_predict.postprocess(workspace, DATASET, config="3d_fullres", progress=False)
    assert path == workspace.results_dir(DATASET) / A / "postprocessing.json"
    decision = PostprocessingDecision.load(path)
    assert decision.keep_largest_foreground and decision.mean_dice_after["organ"] == pytest.approx(1.0)


def test_find_best_ranks_models_and_their_ensemble(workspace):
    result = api_predict.find_best(workspace, DATASET, progress=False)
    scores = {c.name: c.foreground_dice for c in result.candidates}
    assert scores[A] == pytest.approx(128 / 130)  # 64 voxels + a 2-voxel island
    assert scores[B] == pytest.approx(96 / 128)  # shifted by one voxel: 48 of 64 overlap
    assert scores[f"{B}--{A}"] == pytest.approx(96 / 112)  # disagreements tie -> background: the overlap
    assert result.best == A and result.members == (A,)
    assert PostprocessingDecision.load(result.postprocessing).keep_largest_foreground
    results = workspace.results_dir(DATASET)
    text = (results / "inference_instructions.txt").read_text()
    assert f"autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {DATASET} --config 3d_fullres --arch unet" in text
    assert (results / "find_best.json").is_file() and (results / A / CROSSVAL_DIR / "c3.npz").is_file()


def test_ensemble_winner_gets_ensemble_commands(workspace):
    results = workspace.results_dir(DATASET)
    def other_island():
        seg = _cube()
        seg[11, 11, :2] = 1
        return seg

    _validation(results / B, other_island)  # A and B now make different mistakes, which average out
    result = api_predict.find_best(workspace, DATASET, progress=False)
    assert result.best == f"{B}--{A}" and result.candidates[-1].foreground_dice == pytest.approx(1.0)
    assert result.commands[0].endswith("--config 2d --arch unet --save-probabilities")
    assert result.commands[-1].startswith("autoseg ensemble OUTPUT_FOLDER_2d_unet OUTPUT_FOLDER_3d_fullres_unet -o")
    assert result.postprocessing == str(results / "ensembles" / f"{B}--{A}" / "postprocessing.json")


def test_models_without_probabilities_are_scored_but_not_ensembled(workspace):
    results = workspace.results_dir(DATASET)
    for npz in (results / B).rglob("*.npz"):
        npz.unlink()
    result = api_predict.find_best(workspace, DATASET, progress=False)
    assert {c.name for c in result.candidates} == {A, B}
    assert any("not ensembled" in n for n in result.notes)


def test_recommended_commands_name_plans_other_than_the_default(tmp_path):
    from pathlib import Path

    from autoseg.inference.crossval import CandidateScore, predict_commands
    from autoseg.inference.predictor import ModelFolder

    a = ModelFolder(Path("unet__autosegPlans__3d_fullres"), "unet", "autosegPlans", "3d_fullres")
    b = ModelFolder(Path("unet__autosegPlans_resenc_m__3d_fullres"), "unet", "autosegPlans_resenc_m", "3d_fullres")
    models = {a.name: a, b.name: b}
    single = predict_commands(DATASET, CandidateScore(b.name, (b.name,), {}, 0.9), models, Path("pp.json"))
    assert single == (f"autoseg predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {DATASET} --config 3d_fullres --arch unet "
                      "--plans autosegPlans_resenc_m",)
    both = predict_commands(DATASET, CandidateScore("x", (a.name, b.name), {}, 0.9), models, Path("pp.json"))
    assert "--plans" not in both[0] and both[1].endswith("--plans autosegPlans_resenc_m --save-probabilities")
    assert both[-1].startswith("autoseg ensemble OUTPUT_FOLDER_3d_fullres_unet "
                               "OUTPUT_FOLDER_3d_fullres_unet_autosegPlans_resenc_m -o OUTPUT_FOLDER")
