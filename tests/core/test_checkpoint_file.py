"""The checkpoint file: the typed record, digests written with every checkpoint and checked on load."""

import io
from dataclasses import replace

import pytest
import torch

from autoseg.core.checkpoint import (DIGEST_KEY, FORMAT, FORMAT_VERSION, CheckpointError, DatasetRecord, ModelRecord,
                                     checkpoint_bytes, load_checkpoint, save_checkpoint, state_digest)


def _checkpoint(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    record = ModelRecord(plans={"plans_name": "autosegPlans"}, configuration="3d_fullres", arch="unet", fold=0,
                         dataset=DatasetRecord("Dataset901_Tiny", {"background": 0, "a": 1}, ("CT",)),
                         settings={"seed": 1})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **record.to_dict(),
            "model": {"w": torch.randn(64, 8), "n": torch.tensor(3)}, "optimizer": {"state": {0: {"m": torch.ones(2)}}}}


def test_the_record_round_trips_and_carries_the_weights_digest(tmp_path):
    ckpt = _checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "c.pt")
    loaded = load_checkpoint(path)
    record = ModelRecord.of(loaded, path)
    assert record.weights_sha256 == state_digest(ckpt["model"]) and len(loaded[DIGEST_KEY]) == 64
    assert (record.arch, record.fold, record.plans_name, record.dataset.channel_names) == ("unet", 0, "autosegPlans",
                                                                                         ("CT",))
    assert ModelRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize("where", ["weights", "optimizer", "record"])
def test_a_change_after_writing_is_refused_with_the_file_named(tmp_path, where):
    path = save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    ckpt = torch.load(path, weights_only=True)
    if where == "weights":
        ckpt["model"]["w"][3, 4] += 1e-3
    elif where == "optimizer":
        ckpt["optimizer"]["state"][0]["m"][1] = 0.5
    else:
        ckpt["fold"] = 1
    torch.save(ckpt, path)  # the old digest stays
    with pytest.raises(CheckpointError, match=f"{path}: the checkpoint is damaged"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path, mmap=True)


def test_checkpoints_written_before_digests_still_load(tmp_path):
    old = {k: v for k, v in _checkpoint().items() if k != "weights_sha256"}
    torch.save(old, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    record = ModelRecord.of(loaded, tmp_path / "old.pt")
    assert record.weights_sha256 is None and record.arch == "unet" and record.dataset.labels == {"background": 0, "a": 1}
    with pytest.raises(CheckpointError, match="no dataset record"):
        ModelRecord.of({k: v for k, v in old.items() if k != "dataset"}, "old.pt")


def test_the_digest_depends_on_the_content_only():
    def digest(data: bytes) -> str:
        return torch.load(io.BytesIO(data), weights_only=True)[DIGEST_KEY]

    a, b = checkpoint_bytes(_checkpoint(0)), checkpoint_bytes(_checkpoint(0))
    assert digest(a) == digest(b) != digest(checkpoint_bytes(_checkpoint(1)))


def test_a_cascade_stage_records_the_stage_and_model_it_needs_and_other_models_do_not():
    plain = ModelRecord.of(_checkpoint())
    assert not plain.is_cascade and "previous_stage" not in plain.to_dict()  # earlier checkpoints unchanged
    cascade = replace(plain, configuration="3d_cascade_fullres", previous_stage="3d_lowres",
                      previous_model="unet__autosegPlans__3d_lowres")
    back = ModelRecord.from_dict(cascade.to_dict())
    assert back == cascade and back.is_cascade
    assert not back.same_model_as(replace(cascade, previous_model="resenc_unet__autosegPlans__3d_lowres"))
