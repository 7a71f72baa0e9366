"""The uninterrupted reference run of the process-level reliability tests (see ``procs.py``)."""

from __future__ import annotations

import pytest

from .procs import Reference, cli, plan_args, predict_args, train_args, TINY_PRESET


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    from autoseg.toy import make_toy_dataset

    root = tmp_path_factory.mktemp("reliability")
    raw = make_toy_dataset(root / "raw", n_cases=4, shape=(16, 16, 12), n_test=3, seed=0)
    preset = root / "tiny.toml"
    preset.write_text(TINY_PRESET)
    workdir = root / "reference"
    for args in (plan_args(raw, workdir, preset), train_args(workdir),
                 predict_args(workdir, raw / "imagesTs", root / "predictions")):
        code, out, err = cli(args)
        assert code == 0, f"{args[0]} failed:\n{out}\n{err}"
    return Reference(root, raw, preset, workdir, root / "predictions", raw / "imagesTs")
