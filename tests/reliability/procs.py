"""Helpers of the process-level reliability tests (interruption, concurrency, determinism).

One toy dataset (4 training cases of 16x16x12 voxels, 3 test cases) is planned with a tiny planner
preset (4 base features, one convolution per stage, 3 stages), trained
for 4 epochs of 2 iterations on fold 0 and used to predict the test cases, all once per session and
in this process: that is the uninterrupted reference every test compares with. Killed runs are
separate processes; their reruns go through the same command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATASET = "Dataset999_ToyCT"
PLANS = "autosegPlans_tiny"  # plans name of the tiny preset written as tiny.toml (conftest)
RUN = Path("results") / DATASET / f"unet__{PLANS}__3d_fullres"
TINY_PRESET = """\
base_features = 4
max_features_3d = 16
max_features_2d = 16
blocks_per_stage_encoder = [1]
blocks_per_stage_decoder = [1]
"""
EPOCHS = 4
SUBPROCESS_TIMEOUT = 300


def plan_args(raw: Path, workdir: Path, preset: Path) -> list[str]:
    return ["plan", str(raw), "--workdir", str(workdir), "--planner", str(preset), "--configs", "3d_fullres",
            "-j", "1", "--no-progress"]


def train_args(workdir: Path, fold="0", epochs: int = EPOCHS, seed: int | None = None, resume=False) -> list[str]:
    args = ["train", DATASET, "--workdir", str(workdir), "--fold", str(fold), "--epochs", str(epochs),
            "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0", "--device", "cpu", "--amp", "fp32",
            "--no-progress"]
    return args + (["--seed", str(seed)] if seed is not None else []) + (["--resume"] if resume else [])


def predict_args(workdir: Path, in_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["predict", "-i", str(in_dir), "-o", str(out_dir), "-d", DATASET, "--workdir", str(workdir),
            "--device", "cpu", "--backend", "torch", "--precision", "fp32", "--no-tta", "--no-progress", *extra]


def cli(args: list[str]) -> tuple[int, str, str]:
    """Run ``autoseg ARGS`` in this process: (exit code, stdout, stderr)."""
    from autoseg.cli import main

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def child_env() -> dict[str, str]:
    """Environment for autoseg subprocesses: as many torch threads as this process uses, so their CPU
    arithmetic matches the in-process reference bit for bit."""
    import torch

    n = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PYTHONHASHSEED": "random"}


def spawn(args: list[str], cwd: Path, killpoint=None, **env) -> subprocess.Popen:
    """Start ``python -m autoseg ARGS``, or the kill-point driver when ``killpoint`` is given."""
    head = [sys.executable, str(HERE / "killpoint.py"), killpoint.to_json()] if killpoint else [sys.executable,
                                                                                                "-m", "autoseg"]
    return subprocess.Popen(head + args, cwd=cwd, env={**child_env(), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    return proc.returncode, out, err


def run_killed(args: list[str], cwd: Path, killpoint) -> str:
    """Run the command until its kill point; assert it really died of SIGKILL there. Returns stderr."""
    code, out, err = finish(spawn(args, cwd, killpoint))
    assert code == -signal.SIGKILL, f"expected death by SIGKILL at {killpoint}, got exit {code}:\n{out}\n{err}"
    return err


# --- comparisons --------------------------------------------------------------------------------------

def temporaries(root: Path) -> list[Path]:
    """Hidden temporary files (``.name.XXXX.tmp`` and the like) anywhere under ``root``."""
    return sorted(p for p in Path(root).rglob(".*") if p.is_file())


def assert_same_tree(a: Path, b: Path, ignore_keys=("time", "epoch_time", "data_wait_fraction")) -> None:
    """Same file names; .npy arrays byte-equal (values, dtype, shape); .npz arrays equal; JSON equal
    (``source.json`` and ``raw_dir`` hold paths and are compared only for presence)."""
    names_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    names_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert names_a == names_b
    for rel in names_a:
        pa, pb = a / rel, b / rel
        if rel.endswith(".npy"):
            xa, xb = np.load(pa), np.load(pb)
            assert xa.dtype == xb.dtype and xa.shape == xb.shape and xa.tobytes() == xb.tobytes(), rel
        elif rel.endswith(".npz"):
            with np.load(pa) as za, np.load(pb) as zb:
                assert sorted(za.files) == sorted(zb.files), rel
                for k in za.files:
                    assert np.array_equal(za[k], zb[k]), f"{rel}[{k}]"
        elif rel.endswith(".json") and not rel.endswith("source.json"):
            assert _strip(json.loads(pa.read_text()), ignore_keys) == _strip(json.loads(pb.read_text()),
                                                                              ignore_keys), rel


def _strip(value, keys):
    if isinstance(value, dict):
        return {k: _strip(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_strip(v, keys) for v in value]
    return value


def losses(run_dir: Path) -> list[tuple[float, float]]:
    """(train loss, val loss) per epoch from ``log.jsonl``."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["train_loss"], r["val_loss"]) for r in rows]


def labels(folder: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(Path(folder).glob("*.nii.gz"))}


def same_weights(ckpt_a: Path, ckpt_b: Path) -> bool:
    import torch

    from autoseg.core.checkpoint import load_checkpoint

    a, b = load_checkpoint(ckpt_a)["model"], load_checkpoint(ckpt_b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the uninterrupted reference ----------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    root: Path
    raw: Path  # the raw dataset folder (outside every workdir; plan records it in source.json)
    preset: Path
    workdir: Path  # planned, fold 0 trained, test cases predicted
    predictions: Path
    images_ts: Path

    @property
    def preprocessed(self) -> Path:
        return self.workdir / "preprocessed" / DATASET

    @property
    def run_dir(self) -> Path:
        return self.workdir / RUN / "fold_0"

    def planned_copy(self, dest: Path) -> Path:
        """A new workdir holding the reference's preprocessed data only (nothing trained)."""
        shutil.copytree(self.preprocessed, dest / "preprocessed" / DATASET)
        return dest

    def trained_copy(self, dest: Path) -> Path:
        """A new workdir with the preprocessed data and the trained fold 0 (nothing predicted)."""
        self.planned_copy(dest)
        shutil.copytree(self.run_dir, dest / RUN / "fold_0", ignore=shutil.ignore_patterns(".lock"))
        return dest
