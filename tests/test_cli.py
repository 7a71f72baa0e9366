import json
import os
import subprocess
import sys

import pytest

from autoseg import cli
from autoseg.toy import make_toy_dataset


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_does_not_import_torch():
    code = ("import sys\nfrom autoseg import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "for name in ('plan', 'convert-msd', 'demo-data'):\n"
            "    try:\n        cli.main([name, '--help'])\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'monai') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "plan" in proc.stdout and "demo-data" in proc.stdout


def test_python_dash_m_autoseg_runs():
    proc = subprocess.run([sys.executable, "-m", "autoseg", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("autoseg ")


def test_no_command_prints_help_and_fails(capsys):
    code, _, err = run([], capsys)
    assert code == 2 and "COMMAND" in err


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    code, out, err = run(["--workdir", str(tmp_path), "plan", "Dataset042_Nope"], capsys)
    assert code == 2 and out == ""
    assert "dataset 'Dataset042_Nope' not found" in err and "Traceback" not in err


def test_check_only_on_broken_data_exits_2_with_every_problem(tmp_path, capsys):
    raw = make_toy_dataset(tmp_path / "raw", n_cases=2, shape=(12, 12, 8))
    (raw / "labelsTr" / "toy_001.nii.gz").unlink()
    (raw / "imagesTr" / "notes.txt").write_text("stray")
    code, out, err = run(["plan", str(raw), "--check-only", "--no-progress", "--workdir", str(tmp_path / "w")],
                         capsys)
    assert code == 2 and "Traceback" not in err
    assert "image without label" in err and "stray file" in err
    assert not (tmp_path / "w").exists()


def test_check_only_on_good_data(tmp_path, capsys):
    raw = make_toy_dataset(tmp_path / "raw", n_cases=2, shape=(12, 12, 8))
    code, out, _ = run(["plan", str(raw), "--check-only", "--no-progress"], capsys)
    assert code == 0 and "2 training case(s) checked, no problems found" in out


def test_debug_shows_the_exception(tmp_path, capsys):
    with pytest.raises(ValueError, match="not found"):
        cli.main(["plan", "Dataset042_Nope", "--workdir", str(tmp_path), "--debug"])


def test_unexpected_error_exits_1_with_hint(tmp_path, capsys, monkeypatch):
    from autoseg import api

    def boom(*args, **kwargs):
        raise RuntimeError("worker exploded")

    monkeypatch.setattr(api, "plan", boom)
    raw = make_toy_dataset(tmp_path / "raw", n_cases=2, shape=(12, 12, 8))
    code, _, err = run(["plan", str(raw), "--workdir", str(tmp_path / "w")], capsys)
    assert code == 1 and "worker exploded" in err and "--debug" in err and "Traceback" not in err


def test_workdir_from_environment_and_option(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSEG_HOME", str(tmp_path / "env"))
    args = cli.build_parser().parse_args(["plan", "x"])
    assert cli.workspace_from(args).root == tmp_path / "env"
    args = cli.build_parser().parse_args(["--workdir", str(tmp_path / "a"), "plan", "x"])
    assert cli.workspace_from(args).root == tmp_path / "a"
    args = cli.build_parser().parse_args(["plan", "x", "--workdir", str(tmp_path / "b")])
    assert cli.workspace_from(args).root == tmp_path / "b"
    monkeypatch.delenv("AUTOSEG_HOME")
    monkeypatch.chdir(tmp_path)
    assert cli.workspace_from(cli.build_parser().parse_args(["plan", "x"])).root == tmp_path / "autoseg_work"


def test_registered_command_appears(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    seen = {}

    @cli.command("hello", "say hello", lambda p: p.add_argument("--name", default="x"))
    def hello(args):
        seen["name"] = args.name
        return 0

    assert cli.main(["hello", "--name", "y"]) == 0 and seen == {"name": "y"}


def test_demo_data_then_plan_end_to_end(tmp_path, capsys):
    work = str(tmp_path / "w")
    code, out, _ = run(["--workdir", work, "demo-data", "--cases", "3", "--seed", "1"], capsys)
    assert code == 0 and "Dataset999_ToyCT" in out
    code, out, err = run(["--workdir", work, "plan", "999", "--no-progress", "-j", "1"], capsys)
    assert code == 0, err
    pre = tmp_path / "w" / "preprocessed" / "Dataset999_ToyCT"
    for name in ("fingerprint.json", "plans.json", "splits.json", "dataset.json", "source.json"):
        assert str(pre / name) in out
    assert "3d_fullres (default)" in out and str(pre / "autosegPlans_3d_fullres") in out
    assert json.loads((pre / "plans.json").read_text())["kind"] == "plans"
    code, out, _ = run(["--workdir", work, "plan", "Dataset999_ToyCT", "--no-progress", "-j", "1"], capsys)
    assert code == 0 and "0 preprocessed now, 3 already done" in out and "--plans" not in out
    preset = tmp_path / "small.toml"
    preset.write_text("max_features_3d = 64\n")
    code, out, _ = run(["--workdir", work, "plan", "999", "--planner", str(preset), "--no-progress", "-j", "1"], capsys)
    assert code == 0 and str(pre / "plans_small.json") in out and str(pre / "autosegPlans_small_3d_fullres") in out
    assert "next: autoseg train Dataset999_ToyCT --fold 0 --plans autosegPlans_small" in out
    assert json.loads((pre / "plans.json").read_text())["plans_name"] == "autosegPlans"


def test_bad_worker_count_and_bad_planner(tmp_path, capsys):
    raw = make_toy_dataset(tmp_path / "raw", n_cases=2, shape=(12, 12, 8))
    code, _, err = run(["plan", str(raw), "-j", "0", "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and "--workers" in err
    code, _, err = run(["plan", str(raw), "--planner", "nosuch", "--no-progress", "--workdir", str(tmp_path / "w")],
                       capsys)
    assert code == 2 and "nosuch" in err and "choices" in err


def test_demo_data_refuses_to_overwrite(tmp_path, capsys):
    args = ["demo-data", str(tmp_path), "--cases", "1"]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args, capsys)
    assert code == 2 and "--overwrite" in err
    assert run(args + ["--overwrite"], capsys)[0] == 0


def test_plan_keeps_earlier_splits_json_and_says_so(tmp_path, capsys):
    raw = make_toy_dataset(tmp_path / "raw", n_cases=3, shape=(12, 12, 8))
    work = str(tmp_path / "w")
    code, out, err = run(["--workdir", work, "plan", str(raw), "--no-progress", "-j", "1"], capsys)
    assert code == 0, err
    path = tmp_path / "w" / "preprocessed" / raw.name / "splits.json"
    assert json.loads(path.read_text())["rule"] == "nnunet-kfold" and "kept from an earlier plan" not in out
    earlier = json.loads(path.read_text())  # as autoseg wrote splits.json before it used nnU-Net's folds
    del earlier["rule"]
    earlier["folds"] = [{"train": ["toy_001", "toy_002"], "val": ["toy_000"]},
                        {"train": ["toy_000", "toy_002"], "val": ["toy_001"]}]
    path.write_text(json.dumps(earlier))
    code, out, err = run(["--workdir", work, "plan", str(raw), "--no-progress", "-j", "1"], capsys)
    assert code == 0, err
    assert "kept from an earlier plan: not nnU-Net's folds" in out
    assert json.loads(path.read_text())["folds"] == earlier["folds"]
