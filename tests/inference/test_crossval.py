"""Cross-validation results: merging folds, `postprocess` and `find-best` on hand-made predictions."""

from __future__ import annotations

import pytest

from autoseg import api
from autoseg.inference.crossval import CROSSVAL_DIR, CrossvalError, merge_folds
from autoseg.postprocessing import PostprocessingDecision

from .conftest import A, B, CASES, DATASET, SPLITS, crossval_workspace, cube, save_label_map, validation


@pytest.fixture
def workspace(tmp_path):
    return crossval_workspace(tmp_path / "ws")


def test_folds_are_merged_and_an_unfinished_fold_is_named(workspace, tmp_path):
    merged, probs = merge_folds(workspace.results_dir(DATASET) / A, SPLITS, ".nii.gz")
    assert probs and sorted(p.name for p in merged.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    validation(tmp_path / "m", cube, folds=(0,))
    with pytest.raises(CrossvalError, match="fold 1 has no finished validation"):
        merge_folds(tmp_path / "m", SPLITS, ".nii.gz")


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_merge_that_fails_keeps_the_earlier_merge_and_one_that_succeeds_replaces_it_whole(workspace):
    model = workspace.results_dir(DATASET) / A
    merged, _ = merge_folds(model, SPLITS, ".nii.gz")
    earlier = _contents(merged)
    assert len(earlier) == 8  # 4 label maps, 4 probabilities
    (model / "fold_1" / "validation" / "c3.nii.gz").unlink()
    with pytest.raises(CrossvalError, match="c3.nii.gz: missing"):
        merge_folds(model, SPLITS, ".nii.gz")
    assert _contents(merged) == earlier  # untouched, not emptied

    save_label_map(model / "fold_1" / "validation" / "c3.nii.gz", cube(shift=2))  # fold 1 validated again
    (merged / "c9.nii.gz").write_bytes(b"a case the splits no longer have")
    merge_folds(model, SPLITS, ".nii.gz")
    now = _contents(merged)
    assert sorted(now) == sorted(earlier) and now["c3.nii.gz"] != earlier["c3.nii.gz"]
    assert [p.name for p in model.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_postprocess_saves_the_decision_with_the_model(workspace):
    path = api.postprocess(workspace, DATASET, config="3d_fullres", progress=False)
    assert path == workspace.results_dir(DATASET) / A / "postprocessing.json"
    decision = PostprocessingDecision.load(path)
    assert decision.keep_largest_foreground and decision.mean_dice_after["organ"] == pytest.approx(1.0)


def test_find_best_ranks_models_and_their_ensemble(workspace):
    result = api.find_best(workspace, DATASET, progress=False)
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
        seg = cube()
        seg[11, 11, :2] = 1
        return seg

    validation(results / B, other_island)  # A and B now make different mistakes, which average out
    result = api.find_best(workspace, DATASET, progress=False)
    assert result.best == f"{B}--{A}" and result.candidates[-1].foreground_dice == pytest.approx(1.0)
    assert result.commands[0].endswith("--config 2d --arch unet --save-probabilities")
    assert result.commands[-1].startswith("autoseg ensemble OUTPUT_FOLDER_2d_unet OUTPUT_FOLDER_3d_fullres_unet -o")
    assert result.postprocessing == str(results / "ensembles" / f"{B}--{A}" / "postprocessing.json")


def test_models_without_probabilities_are_scored_but_not_ensembled(workspace):
    results = workspace.results_dir(DATASET)
    for npz in (results / B).rglob("*.npz"):
        npz.unlink()
    result = api.find_best(workspace, DATASET, progress=False)
    assert {c.name for c in result.candidates} == {A, B}
    assert any("not ensembled" in n for n in result.notes)


def test_recommended_commands_name_plans_other_than_the_default(tmp_path):
    from pathlib import Path

    from autoseg.inference.crossval import CandidateScore, predict_commands
    from autoseg.workspace import ModelFolder

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
