"""The workspace owns the layout: every folder and file a command finds by name comes from
:mod:`autoseg.workspace`, and the paths are the ones earlier versions wrote (so old workspaces still work)."""

import ast
from pathlib import Path

import pytest

from autoseg.artifacts import ArtifactError
from autoseg.workspace import (
    CHECKPOINTS,
    DatasetSource,
    Workspace,
    WorkspaceError,
    cases_folder,
    fold_dirs,
    fold_of,
    model_folders,
)

ROOT = Path(__file__).resolve().parents[1]
DATASET = "Dataset001_X"


def test_paths_are_the_documented_layout(tmp_path):
    ws = Workspace(tmp_path)
    pre, res = tmp_path / "preprocessed" / DATASET, tmp_path / "results" / DATASET
    assert ws.plans_file(DATASET, "autosegPlans") == pre / "plans.json"
    assert ws.plans_file(DATASET, "autosegPlans_resenc_m") == pre / "plans_resenc_m.json"
    assert (ws.splits_file(DATASET), ws.fingerprint_file(DATASET), ws.source_file(DATASET), ws.dataset_json(DATASET)) \
        == (pre / "splits.json", pre / "fingerprint.json", pre / "source.json", pre / "dataset.json")
    assert ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", 0) == res / "unet__autosegPlans__3d_fullres" / "fold_0"
    assert ws.run_dir(DATASET, "unet", "autosegPlans", "2d", "all").name == "fold_all"
    assert Workspace.holding_model(res / "unet__autosegPlans__3d_fullres") == (ws, DATASET)
    assert ws.next_stage_dir(DATASET, "unet", "autosegPlans", "3d_lowres", "3d_cascade_fullres") == \
        res / "unet__autosegPlans__3d_lowres" / "predicted_next_stage" / "3d_cascade_fullres"


def test_data_dir_is_named_after_plans_and_data_identifier(tmp_path):
    class Config:  # the two fields of Plans the layout reads
        data_identifier = "3d_fullres"

    class StubPlans:
        plans_name = "autosegPlans_resenc_m"

        def configuration(self, name):
            assert name == "3d_lowres"
            return Config()

    ws = Workspace(tmp_path)
    expected = tmp_path / "preprocessed" / DATASET / "autosegPlans_resenc_m_3d_fullres"
    assert ws.data_dir(DATASET, StubPlans(), "3d_lowres") == expected
    assert cases_folder(ws.preprocessed_dir(DATASET), "autosegPlans_resenc_m", "3d_fullres") == expected


def test_fold_folders_and_trained_models_are_found(tmp_path):
    ws = Workspace(tmp_path)
    model = ws.model_dir(DATASET, "unet", "autosegPlans", "3d_fullres")
    for fold in ("all", 10, 2):
        ws.run_dir(DATASET, "unet", "autosegPlans", "3d_fullres", fold).mkdir(parents=True)
    (model / "fold_x").mkdir()
    assert list(fold_dirs(model)) == [2, 10, "all"] and fold_of(model / "fold_x") is None
    assert model_folders(ws.results_dir(DATASET)) == [] and ws.trained_datasets() == []  # no checkpoint yet
    (model / "fold_2" / CHECKPOINTS["best"]).write_bytes(b"")
    [found] = ws.model_folders(DATASET)
    assert (found.path, found.arch, found.plans_name, found.config) == (model, "unet", "autosegPlans", "3d_fullres")
    assert ws.trained_datasets() == [DATASET]


def test_raw_dir_follows_source_json_and_says_when_it_is_gone(tmp_path):
    ws = Workspace(tmp_path / "ws")
    elsewhere = tmp_path / "data" / DATASET
    elsewhere.mkdir(parents=True)
    ws.preprocessed_dir(DATASET).mkdir(parents=True)
    DatasetSource(raw_dir=str(elsewhere), signature="x").save(ws.source_file(DATASET))
    assert ws.raw_dir(DATASET) == elsewhere
    elsewhere.rmdir()
    with pytest.raises(WorkspaceError, match="it points to is gone"):
        ws.raw_dir(DATASET)
    ws.source_file(DATASET).write_text("{")
    with pytest.raises(ArtifactError):
        ws.raw_dir(DATASET)


# File names of the layout that only workspace.py may spell out; the raw folder's optional
# splits file (splits.py, USER_SPLITS_NAMES) is the user's, not the workspace's.
LAYOUT_NAMES = {"raw", "preprocessed", "results", "plans.json", "splits.json", "source.json", "fingerprint.json",
                "predicted_next_stage"}
ALLOWED = {("autoseg/splits.py", "splits.json")}


def _docstrings(tree):
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, nodes) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def test_no_module_but_the_workspace_spells_out_the_layout():
    found = []
    for path in sorted((ROOT / "autoseg").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "autoseg/workspace.py":
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and node.value in LAYOUT_NAMES and id(node) not in docs
                    and (rel, node.value) not in ALLOWED):
                found.append(f"{rel}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.JoinedStr):  # f"{arch}__{plans}__{config}", f"fold_{k}", f"plans_{p}.json"
                parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
                if "__" in parts or any(p.endswith("fold_") or p.endswith("plans_") for p in parts):
                    found.append(f"{rel}:{node.lineno} f-string {parts}")
    assert not found, "ask autoseg.workspace for these paths: " + "; ".join(found)
