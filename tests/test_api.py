import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg import api
from autoseg.artifacts import ArtifactError
from autoseg.dataset import DatasetError
from autoseg.fingerprint import Fingerprint
from autoseg.planning.plans import Plans
from autoseg.splits import RULE_EARLIER, RULE_NNUNET, RULE_USER, Fold, Splits, make_splits, resolve_splits
from autoseg.storage import list_done_cases
from autoseg.toy import make_toy_dataset
from autoseg.workspace import Workspace, WorkspaceError

SMALL = dict(n_cases=3, shape=(16, 16, 12), seed=3)


@pytest.fixture
def raw(tmp_path):
    return make_toy_dataset(tmp_path / "elsewhere", **SMALL)


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "work")


def _plan(raw, ws, **kw):
    return api.plan(raw, ws, workers=1, progress=False, **kw)


def test_plan_writes_every_artifact(raw, ws):
    result = _plan(raw, ws)
    d = ws.preprocessed_dir(raw.name)
    assert result.preprocessed_dir == d and not result.checked_only and result.n_cases == 3
    assert Fingerprint.load(d / "fingerprint.json").dataset_name == raw.name
    plans = Plans.load(d / "plans.json")
    assert result.plans == d / "plans.json" and "3d_fullres" in plans.configurations
    splits = Splits.load(d / "splits.json")
    assert len(splits.folds) == 5 and not splits.user_provided
    assert (d / "dataset.json").read_bytes() == (raw / "dataset.json").read_bytes()
    folder = result.data_folders["3d_fullres"]
    assert folder == d / f"autosegPlans_{plans.configuration('3d_fullres').data_identifier}"
    assert list_done_cases(folder) == ["toy_000", "toy_001", "toy_002"]
    assert set(result.computed) == {"toy_000", "toy_001", "toy_002"}
    # the raw data live outside <workdir>/raw: later commands find them through source.json
    assert ws.raw_dir(raw.name) == raw.resolve()


def test_rerun_reuses_fingerprint_and_skips_cases(raw, ws):
    _plan(raw, ws)
    fp = ws.preprocessed_dir(raw.name) / "fingerprint.json"
    stamp = os.stat(fp).st_mtime_ns
    again = _plan(raw, ws)
    assert again.fingerprint_reused and again.computed == () and len(again.skipped) == 3
    assert os.stat(fp).st_mtime_ns == stamp


def test_plan_fingerprints_in_the_check_pass_and_not_again(raw, ws, monkeypatch):
    from autoseg import integrity
    from autoseg.dataset import list_cases
    from autoseg.fingerprint import extract_fingerprint
    from autoseg.io import images

    spec = api.DatasetSpec.load(raw)
    expected = extract_fingerprint(spec, list_cases(raw, spec)[0], workers=1)
    reads = []
    real_read = images.read_volume_verified
    monkeypatch.setattr(integrity, "read_volume_verified", lambda p, *a: reads.append(Path(p).name) or real_read(p, *a))
    monkeypatch.setattr(api, "extract_fingerprint", lambda *a, **k: pytest.fail("fingerprint read the files again"))
    result = _plan(raw, ws)
    assert not result.fingerprint_reused
    assert Fingerprint.load(ws.fingerprint_file(raw.name)).to_dict() == expected.to_dict()
    assert sorted(reads) == sorted(p.name for d in ("imagesTr", "labelsTr") for p in (raw / d).iterdir())
    # unchanged raw files: the saved fingerprint is reused and the checks do not fingerprint
    monkeypatch.setattr(api, "check_and_fingerprint", lambda *a, **k: pytest.fail("fingerprinted again"))
    assert _plan(raw, ws).fingerprint_reused


def test_plan_with_several_workers_reports_every_problem_of_a_broken_dataset(raw, ws):
    # the fingerprint pass sizes its pool from the headers first; an unreadable one must not cut the report short
    (raw / "imagesTr" / "toy_000_0000.nii.gz").write_bytes(b"not an image")
    (raw / "labelsTr" / "toy_002.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DatasetError) as e:
        api.plan(raw, ws, workers=2, progress=False)
    assert "toy_000_0000.nii.gz" in str(e.value) and "toy_002.nii.gz" in str(e.value)
    assert not ws.fingerprint_file(raw.name).exists()


def test_changed_raw_data_are_redone(raw, ws):
    _plan(raw, ws)
    label = raw / "labelsTr" / "toy_001.nii.gz"
    st = os.stat(label)
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = _plan(raw, ws)
    assert not again.fingerprint_reused and len(again.computed) == 3


def test_check_only_writes_nothing(raw, ws):
    result = _plan(raw, ws, check_only=True)
    assert result.checked_only and result.n_cases == 3 and result.plans is None
    assert not ws.root.exists()


def test_broken_dataset_writes_nothing(raw, ws):
    (raw / "labelsTr" / "toy_002.nii.gz").unlink()
    with pytest.raises(DatasetError, match="image without label"):
        _plan(raw, ws)
    assert not ws.root.exists()


def test_unknown_configuration_lists_choices(raw, ws):
    with pytest.raises(ValueError, match="choices: 2d, 3d_fullres"):
        _plan(raw, ws, configs=["3d_superres"])


def test_user_splits_in_raw_folder_are_kept(raw, ws):
    folds = [{"train": ["toy_000", "toy_001"], "val": ["toy_002"]}, {"train": ["toy_002"], "val": ["toy_000"]}]
    (raw / "splits_final.json").write_text(json.dumps(folds))
    result = _plan(raw, ws)
    splits = Splits.load(result.splits)
    assert result.user_splits and splits.user_provided
    assert [f.val for f in splits.folds] == [("toy_002",), ("toy_000",)]
    # once copied, it stays even when the raw file is removed
    (raw / "splits_final.json").unlink()
    assert Splits.load(_plan(raw, ws).splits) == splits


def test_user_splits_naming_unknown_cases_are_rejected(raw, ws):
    folds = [{"train": ["toy_000", "nobody"], "val": ["toy_002"]}]
    (raw / "splits.json").write_text(json.dumps(folds))
    with pytest.raises(ArtifactError, match="nobody"):
        _plan(raw, ws)


def _earlier_splits_file(path, cases):
    """A splits.json as autoseg wrote it before it used nnU-Net's folds (no "rule" key)."""
    folds = [Fold(train=tuple(c for c in cases if c != v), val=(v,)) for v in cases]
    data = Splits(folds=tuple(folds), seed=12345).to_dict()
    del data["rule"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return folds


def test_existing_automatic_splits_json_is_kept(tmp_path):
    cases = ["a", "b", "c", "d", "e", "f"]
    folds = _earlier_splits_file(tmp_path / "pre" / "splits.json", cases)
    kept = resolve_splits(tmp_path / "raw", tmp_path / "pre" / "splits.json", cases)
    assert list(kept.folds) == folds and kept.rule == RULE_EARLIER and not kept.user_provided
    # other cases than the file's: new folds, nnU-Net's
    assert resolve_splits(tmp_path / "raw", tmp_path / "pre" / "splits.json", cases + ["g"]) == make_splits(cases + ["g"])


def test_nnunet_splits_final_json_in_preprocessed_folder_wins(tmp_path):
    cases = ["a", "b", "c"]
    _earlier_splits_file(tmp_path / "pre" / "splits.json", cases)
    (tmp_path / "pre" / "splits_final.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}]))
    splits = resolve_splits(tmp_path / "raw", tmp_path / "pre" / "splits.json", cases)
    assert splits.user_provided and splits.rule == RULE_USER and splits.folds == (Fold(("a", "b"), ("c",)),)


def test_new_dataset_gets_nnunet_folds(raw, ws):
    result = _plan(raw, ws)
    assert Splits.load(result.splits) == make_splits(["toy_000", "toy_001", "toy_002"])
    assert Splits.load(result.splits).rule == RULE_NNUNET


def test_find_raw_dir_falls_back_to_workspace_raw(tmp_path):
    ws = Workspace(tmp_path)
    (ws.raw / "Dataset001_X").mkdir(parents=True)
    assert ws.raw_dir("Dataset001_X") == ws.raw / "Dataset001_X"
    with pytest.raises(WorkspaceError, match="rerun `autoseg plan`"):
        ws.raw_dir("Dataset002_Y")


def test_gpu_memory_override_reaches_the_plans(raw, ws):
    result = _plan(raw, ws, gpu_memory_gb=24)
    assert Plans.load(result.plans).settings["gpu_memory_gb"] == 24
    with pytest.raises(ValueError, match="positive"):
        _plan(raw, ws, gpu_memory_gb=0)


def test_plans_of_another_preset_live_beside_the_default_ones(raw, ws, tmp_path):
    from autoseg.workspace import find_plans, planned

    default = _plan(raw, ws)
    d = ws.preprocessed_dir(raw.name)
    before = (d / "plans.json").read_bytes()
    preset = tmp_path / "small.toml"
    preset.write_text("max_features_3d = 64\n")
    other = _plan(raw, ws, planner=preset)
    assert other.plans == d / "plans_small.json" and (d / "plans.json").read_bytes() == before
    plans = Plans.load(other.plans)
    assert plans.plans_name == "autosegPlans_small" and plans.planner == "small"
    assert max(plans.configuration("3d_fullres").features) <= 64
    assert other.data_folders["3d_fullres"].name.startswith("autosegPlans_small_")
    assert other.data_folders["3d_fullres"] != default.data_folders["3d_fullres"]
    assert list_done_cases(default.data_folders["3d_fullres"]) == ["toy_000", "toy_001", "toy_002"]
    assert set(planned(d)) == {"autosegPlans", "autosegPlans_small"}
    assert find_plans(d) == d / "plans.json"  # the default preset's plans unless told
    assert find_plans(d, "small") == find_plans(d, "autosegPlans_small") == other.plans
    assert find_plans(d, "default") == d / "plans.json"
    with pytest.raises(ValueError, match="no plans named 'resenc_m'.*autosegPlans, autosegPlans_small"):
        find_plans(d, "resenc_m")
    with pytest.raises(ValueError, match="no plans named 'autosegPlans_resenc_l'.* --planner resenc_l`"):
        find_plans(d, "autosegPlans_resenc_l")
    (d / "plans.json").unlink()
    assert find_plans(d) == other.plans  # the only plans left
    assert ws.resolve_planned(raw.name) == raw.name


def test_a_preset_name_that_would_break_run_folder_names_is_refused(raw, ws, tmp_path):
    preset = tmp_path / "my__preset.toml"
    preset.write_text("")
    with pytest.raises(ValueError, match="my__preset"):
        _plan(raw, ws, planner=preset)
    assert not (ws.preprocessed_dir(raw.name) / "fingerprint.json").exists()


def test_importing_the_api_loads_no_torch():
    """The api module docstring: stages that need torch are imported inside the commands that use them,
    so ``autoseg plan`` (and ensemble, postprocess, find-best) never load it."""
    code = "import sys\nimport autoseg.api\nassert 'torch' not in sys.modules, 'autoseg.api imported torch'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_preset_for_an_unknown_architecture_lists_the_registered_ones_before_any_work(raw, ws, tmp_path):
    from autoseg.planning.settings import PresetError

    preset = tmp_path / "vit.toml"
    preset.write_text('architecture = "vit"\n')
    with pytest.raises(PresetError, match="preset 'vit': architecture 'vit' is unknown; choices: unet, resenc_unet, "
                                          "swin_unetr"):
        _plan(raw, ws, planner=preset)
    assert not (ws.preprocessed_dir(raw.name) / "fingerprint.json").exists()
