"""kill -9 at any moment, rerun the same command, same result (issue 5, "Interruption").

Each test kills the real command line with SIGKILL at seeded points (``killpoint.py`` wraps one
function of the running process and kills it on the n-th matching call, so the point is exact and
always inside the work), reruns the same command and compares with the uninterrupted reference run of ``conftest.py``.
"""

from __future__ import annotations

import json
import random

import pytest

from .procs import (DATASET, EPOCHS, PLANS, RUN, assert_same_tree, cli, labels, losses,
                                  plan_args, predict_args, run_killed, same_weights, temporaries, train_args)
from .killpoint import KillPoint, count_calls
from inference.conftest import A as CV_MODEL, DATASET as CV_DATASET, crossval_workspace  # tests/ on sys.path

# artifacts every rerun of `plan` writes again, whatever it finds (kill points of a second kill)
ALWAYS_WRITTEN = ("source.json", "plans_tiny.json", "splits.json", "dataset.json")


@pytest.fixture(scope="module")
def plan_renames(reference, tmp_path_factory) -> int:
    """How many files an uninterrupted `plan` renames into place (atomic writes)."""
    workdir = tmp_path_factory.mktemp("count") / "w"
    with count_calls("os:replace") as n:
        code, out, err = cli(plan_args(reference.raw, workdir, reference.preset))
    assert code == 0, err
    return n()


def _finished_cases(folder) -> dict[str, int]:
    """Modification times of the files of the finished cases (those whose properties JSON exists)."""
    done = {p.stem for p in folder.glob("*.json") if p.name != "preprocessing.json"} if folder.is_dir() else set()
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*") if p.name.split(".")[0].removesuffix("_seg")
            .removesuffix("_fg") in done}


def _case_mtimes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_killed_twice_then_rerun_equals_the_uninterrupted_plan(reference, plan_renames, tmp_path, seed):
    rng = random.Random(seed)
    workdir = tmp_path / "w"
    args = plan_args(reference.raw, workdir, reference.preset)
    first = KillPoint("os:replace", nth=rng.randint(1, plan_renames), when=rng.choice(["before", "after"]))
    run_killed(args, tmp_path, first)
    second = KillPoint("os:replace", nth=1, when=rng.choice(["before", "after"]), match=rng.choice(ALWAYS_WRITTEN))
    run_killed(args, tmp_path, second)
    data = workdir / "preprocessed" / DATASET / f"{PLANS}_3d_fullres"
    finished = _finished_cases(data)

    code, out, err = cli(args)

    assert code == 0, err
    assert_same_tree(workdir / "preprocessed", reference.workdir / "preprocessed")
    assert temporaries(workdir) == []
    n_done = sum(name.endswith(".json") for name in finished)
    assert f"{4 - n_done} preprocessed now, {n_done} already done" in out
    now = _finished_cases(data)
    assert {k: now[k] for k in finished} == finished  # finished cases were not redone


def _epoch_of(run_dir) -> int:
    from autoseg.core.checkpoint import LATEST, load_checkpoint

    path = run_dir / LATEST
    return int(load_checkpoint(path)["train_state"]["epoch"]) if path.is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_train_killed_three_times_resumes_to_the_uninterrupted_weights(reference, tmp_path, seed):
    rng = random.Random(seed)
    workdir = reference.planned_copy(tmp_path / "w")
    run_dir = workdir / RUN / "fold_0"
    args = train_args(workdir, resume=True)  # one command for the first start and every resubmission

    # 1. in the middle of an epoch after the first (the run was started by this --resume command: it
    # had no checkpoint yet); the checkpoint keeps every epoch completed before the kill
    step = rng.randint(3, 2 * EPOCHS)
    run_killed(args, tmp_path, KillPoint("autoseg.training.trainer:train_step", nth=step))
    done = _epoch_of(run_dir)
    assert done == (step - 1) // 2 and (run_dir / ".lock").is_file()  # the killed holder's lock stays
    # 2. after the last epoch's checkpoint, with checkpoint_final.pt half written
    run_killed(args, tmp_path, KillPoint("os:replace", nth=1, match="checkpoint_final.pt"))
    assert f"resuming after epoch {done}:" in (run_dir / "training_log.txt").read_text()
    assert _epoch_of(run_dir) == EPOCHS and not (run_dir / "checkpoint_final.pt").exists()
    assert temporaries(run_dir)  # the half-written checkpoint, under a temporary name
    # 3. during the final validation, with a validation case half written
    run_killed(args, tmp_path, KillPoint("os:replace", nth=1, match="*.nii.gz"))
    assert (run_dir / "checkpoint_final.pt").is_file() and not (run_dir / "checkpoint_latest.pt").exists()

    code, out, err = cli(args)

    assert code == 0, err
    assert same_weights(run_dir / "checkpoint_final.pt", reference.run_dir / "checkpoint_final.pt")
    assert same_weights(run_dir / "checkpoint_best.pt", reference.run_dir / "checkpoint_best.pt")
    assert losses(run_dir) == losses(reference.run_dir)
    summary = json.loads((run_dir / "validation" / "summary.json").read_text())
    assert summary == json.loads((reference.run_dir / "validation" / "summary.json").read_text())
    got, want = labels(run_dir / "validation"), labels(reference.run_dir / "validation")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    assert temporaries(run_dir) == []  # no .lock, no temporary file
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == ["checkpoint_best.pt", "checkpoint_final.pt"]


@pytest.mark.slow
def test_predict_killed_mid_folder_rerun_skips_finished_cases(reference, tmp_path):
    rng = random.Random(3)
    workdir = reference.trained_copy(tmp_path / "w")
    out_dir = tmp_path / "pred"
    args = predict_args(workdir, reference.images_ts, out_dir)
    nth = rng.randint(2, 3)  # cases 1..nth-1 written, case nth half written, the rest not started
    run_killed(args, tmp_path, KillPoint("os:replace", nth=nth, match="*.nii.gz"))
    before = _case_mtimes(out_dir)
    assert len(before) == nth - 1 and len(temporaries(out_dir)) == 1

    code, out, err = cli(args)

    assert code == 0, err
    assert f"{3 - len(before)} written, {len(before)} skipped" in out
    assert {k: v for k, v in _case_mtimes(out_dir).items() if k in before} == before  # not recomputed
    got, want = labels(out_dir), labels(reference.predictions)
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    assert temporaries(out_dir) == []


@pytest.mark.slow
def test_predict_killed_between_probabilities_and_labels_redoes_that_case(reference, tmp_path):
    workdir = reference.trained_copy(tmp_path / "w")
    out_dir = tmp_path / "pred"
    args = predict_args(workdir, reference.images_ts, out_dir, "--save-probabilities")
    run_killed(args, tmp_path, KillPoint("os:replace", nth=1, when="after", match="*.npz"))
    assert [p.name for p in out_dir.iterdir() if not p.name.startswith(".")] == ["toy_004.npz"]

    code, out, err = cli(args)

    assert code == 0 and "3 written" in out, err  # the case with probabilities only was not taken as done
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"toy_00{i}{ext}" for i in (4, 5, 6) for ext in (".nii.gz", ".npz"))
    got, want = labels(out_dir), labels(reference.predictions)
    assert got.keys() == want.keys()


# --- import, export, evaluate ---------------------------------------------------------------------------

def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_import_overwrite_killed_as_it_swaps_leaves_a_whole_model_and_rerun_installs(reference, tmp_path, when):
    """`autoseg import --overwrite` killed just before or just after the new model takes the installed
    one's place: the folder is the whole old or the whole new model; the rerun installs it, removes
    the killed run's staging folder, and the model predicts as the reference."""
    src = reference.trained_copy(tmp_path / "src")
    zip_path = tmp_path / "model.zip"
    assert cli(["export", str(src / RUN), "-o", str(zip_path), "--workdir", str(src)])[0] == 0
    for ws in (tmp_path / "ws", tmp_path / "fresh"):
        code, _, err = cli(["import", str(zip_path), "--workdir", str(ws)])
        assert code == 0, err
    installed, fresh = tmp_path / "ws" / RUN, tmp_path / "fresh" / RUN
    (installed / "old.txt").write_text("the model installed before")  # tells the old from the new one
    args = ["import", str(zip_path), "--workdir", str(tmp_path / "ws"), "--overwrite"]

    run_killed(args, tmp_path, KillPoint("autoseg.core.fileops:exchange_paths", nth=1, when=when))

    got = _files(installed)
    assert ("old.txt" in got) == (when == "before")
    got.pop("old.txt", None)
    assert got == _files(fresh)  # whole: every file of the model, byte for byte
    assert len(list(installed.parent.glob(".*.staging-*"))) == 1  # the killed run's staging folder
    code, out, err = cli(args)
    assert code == 0, err
    assert _files(installed) == _files(fresh) and list(installed.parent.glob(".*.staging-*")) == []
    code, out, err = cli(predict_args(tmp_path / "ws", reference.images_ts, tmp_path / "pred"))
    assert code == 0, err
    got, want = labels(tmp_path / "pred"), labels(reference.predictions)
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)


@pytest.mark.slow
def test_export_killed_before_its_zip_is_renamed_into_place_keeps_the_earlier_zip(reference, tmp_path):
    src = reference.trained_copy(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    zip_path = out / "model.zip"
    args = ["export", str(src / RUN), "-o", str(zip_path), "--workdir", str(src)]
    assert cli(args)[0] == 0
    earlier = zip_path.read_bytes()

    run_killed(args, tmp_path, KillPoint("os:replace", nth=1, match="model.zip"))

    assert zip_path.read_bytes() == earlier  # never a half-written zip under the name
    assert [p.name.endswith(".tmp") for p in temporaries(out)] == [True]  # the killed run's, hidden
    code, _, err = cli(args)
    assert code == 0, err
    assert temporaries(out) == []  # the rerun removed it
    code, _, err = cli(["import", str(zip_path), "--workdir", str(tmp_path / "ws")])
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_evaluate_killed_while_writing_its_summaries_leaves_them_whole(reference, tmp_path, when):
    """Killed before or after the first summary file is renamed into place: each summary file is whole
    (the earlier run's or the new one, equal here); the rerun writes both and removes the killed run's
    temporary."""
    out = tmp_path / "eval"
    args = ["evaluate", str(reference.raw / "labelsTs"), str(reference.predictions), "-d",
            str(reference.raw / "dataset.json"), "-o", str(out), "-j", "1", "--no-progress"]
    code, _, err = cli(args)
    assert code == 0, err
    earlier = {k: v for k, v in _files(out).items() if not k.startswith(".")}
    assert sorted(earlier) == ["summary.csv", "summary.json"]

    run_killed(args, tmp_path, KillPoint("os:replace", nth=1, when=when, match="summary.*"))

    assert {k: v for k, v in _files(out).items() if not k.startswith(".")} == earlier
    assert len(temporaries(out)) == (1 if when == "before" else 0)
    code, _, err = cli(args)
    assert code == 0, err
    assert _files(out) == earlier  # and the killed run's temporary is gone


@pytest.mark.slow
def test_ensemble_killed_mid_folder_rerun_skips_finished_cases_and_removes_its_temporary(reference, tmp_path):
    workdir = reference.trained_copy(tmp_path / "w")
    for name, extra in (("a", ()), ("b", ("--step", "0.75"))):  # two predictions that differ a little
        code, _, err = cli(predict_args(workdir, reference.images_ts, tmp_path / name, "--save-probabilities", *extra))
        assert code == 0, err

    def args(out):
        return ["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out), "--save-probabilities",
                "--no-progress"]

    assert cli(args(tmp_path / "whole"))[0] == 0  # the uninterrupted ensemble
    out = tmp_path / "ens"
    run_killed(args(out), tmp_path, KillPoint("os:replace", nth=2, match="*.nii.gz"))
    done = {p.name.split(".")[0] for p in out.glob("*.nii.gz") if not p.name.startswith(".")}
    before = {k: v for k, v in _case_mtimes(out).items() if k.split(".")[0] in done}
    assert len(done) == 1 and len(before) == 2  # one case whole (label map and .npz)
    assert len(temporaries(out)) == 1  # the next one's label map half written

    code, text, err = cli(args(out))

    assert code == 0, err
    assert "2 written, 1 skipped" in text
    assert {k: v for k, v in _case_mtimes(out).items() if k in before} == before  # not recomputed
    got, want = labels(out), labels(tmp_path / "whole")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    assert temporaries(out) == []


@pytest.mark.slow
def test_quantize_killed_before_checking_its_new_int8_network_never_lets_predict_use_it(reference, tmp_path,
                                                                                        monkeypatch):
    """Quantizing again replaces the fold's int8 network; killed before the new one is checked, the
    earlier passing record must not vouch for it: predict falls back to f32 until a rerun checks it."""
    pytest.importorskip("openvino")
    monkeypatch.setattr("autoseg.inference.backends.cpu_has_bf16", lambda: False)  # auto's fallback: f32, not bf16
    pytest.importorskip("nncf")
    from autoseg.inference.conversion import QUANTIZATION_FILE

    workdir = reference.trained_copy(tmp_path / "w")
    fold = workdir / RUN / "fold_0"
    args = ["quantize", DATASET, "--workdir", str(workdir), "--plans", "tiny", "--patches", "4", "--check-cases", "1",
            "--tolerance", "1"]  # the mechanics, not the tiny model's Dice, are under test

    def predict(out, precision):
        return cli(["predict", "-i", str(reference.images_ts), "-o", str(tmp_path / out), "-d", DATASET, "--workdir",
                    str(workdir), "--device", "cpu", "--backend", "openvino", "--precision", precision, "--no-tta",
                    "--no-progress"])

    def records():
        return json.loads((fold / QUANTIZATION_FILE).read_text())["checkpoints"]

    assert cli(args)[0] == 0 and records()["checkpoint_final.pt"]["check"]["passed"]
    assert "with openvino int8 on cpu" in predict("first", "auto")[1]

    run_killed(args + ["--seed", "1"], tmp_path, KillPoint("autoseg.inference.quantize:check_against_f32", nth=1))

    assert records() == {}  # the new network is on disk, unchecked: no record vouches for it
    code, out, err = predict("after_kill", "auto")
    assert code == 0 and "with openvino fp32 on cpu" in out, out + err
    code, out, err = predict("int8_after_kill", "int8")
    assert code != 0 and "run `autoseg quantize`" in err
    assert cli(args + ["--seed", "1"])[0] == 0
    assert records()["checkpoint_final.pt"]["calibration"]["seed"] == 1
    assert "with openvino int8 on cpu" in predict("again", "auto")[1]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["postprocess", "find-best"])
def test_crossval_commands_killed_while_merging_the_folds_keep_the_earlier_merge(tmp_path, command):
    """`postprocess` / `find-best` merge the folds' validation predictions into crossval_results/;
    killed halfway through that, the earlier merge is still there whole (it is replaced in one step);
    the rerun finishes, removes the killed run's staging folder and merges the same files."""
    ws = crossval_workspace(tmp_path / "ws")
    results = ws.results_dir(CV_DATASET)
    args = [command, CV_DATASET, "--workdir", str(ws.root), "--no-progress"] + (
        ["--config", "3d_fullres"] if command == "postprocess" else [])

    def merges():
        found = (p for p in results.rglob("crossval_results") if ".staging-" not in str(p.relative_to(results)))
        return {str(p.parent.relative_to(results)): _files(p) for p in found}

    code, _, err = cli(args)
    assert code == 0, err
    earlier = merges()
    assert len(earlier[CV_MODEL]) == 8 and len(earlier) == (1 if command == "postprocess" else 3)  # + B, A+B

    run_killed(args, tmp_path, KillPoint("autoseg.inference.crossval:_link", nth=3))

    assert merges() == earlier
    assert len(list(results.glob("*/.crossval_results.staging-*"))) == 1  # the killed run's
    code, _, err = cli(args)
    assert code == 0, err
    assert merges() == earlier and list(results.glob("*/.crossval_results.staging-*")) == []
