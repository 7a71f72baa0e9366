"""The checkpoint file: weights, a typed record of what the model is, and a digest that proves it intact.

A checkpoint is a dict of tensors and primitives, readable with ``torch.load(weights_only=True)`` (no
pickled objects). Keys:

- ``format`` / ``format_version``: what kind of file it is;
- the :class:`ModelRecord` fields (what the model is): ``plans`` (the plans.json document),
  ``configuration``, ``arch``, ``fold``, ``dataset`` (name, labels, channel names, regions, ignore
  label, file ending), ``settings`` (the training settings), ``autoseg_version`` and
  ``weights_sha256`` (:func:`state_digest` of the weights); models imported from nnU-Net add
  ``inference_mirror_axes`` (the axes their trainer mirrored) and ``imported_from``;
- ``model``: the network's state dict;
- what resuming needs (absent from exported models, written by :mod:`autoseg.training.checkpoint`):
  ``optimizer``, ``scaler``, ``schedule``, ``rng``, ``train_state``;
- ``content_sha256``: sha256 over every other entry but the weights, tensor bytes included
  (:func:`content_digest`; the weights are covered by ``weights_sha256``). Both are checked on every
  load, so a file changed after it was written (a flipped byte in the weights or the optimiser state)
  is refused with its name instead of predicting with damaged weights or resuming from a damaged state.

Checkpoints written before the digests were recorded load unchecked; :meth:`ModelRecord.of` reads
their record (``weights_sha256`` None). Code outside this module reads what a model is through
:class:`ModelRecord`, never through the dict's keys. Files are written to a temporary name and
renamed: a killed run never leaves half a checkpoint.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoseg.core.version import __version__
from autoseg.core.fileops import atomic_write_with

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported by the functions that read, write or hash tensors, not here: the record and the
# file names serve commands that never load torch (`autoseg ensemble`, `find-best`, `postprocess`).

FORMAT = "autoseg-checkpoint"
FORMAT_VERSION = 1  # the digests are optional keys: files with them load in earlier autoseg versions too
LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"
CHECKPOINTS = {"final": FINAL, "best": BEST}  # what `predict --checkpoint` may choose
DIGEST_KEY = "content_sha256"
TRAINING_KEYS = ("optimizer", "scaler", "schedule", "rng", "train_state")  # what only resuming needs


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, damaged or not one this autoseg can read."""


class NonFiniteWeightsError(RuntimeError):
    """Weights with NaN or infinite values were about to be saved (training diverged)."""


@dataclass(frozen=True)
class DatasetRecord:
    """The labels and channels a model was trained with (from ``dataset.json``)."""

    name: str
    labels: dict[str, Any]  # name -> class value, or list of values for a region
    channel_names: tuple[str, ...]
    regions_class_order: tuple[int, ...] | None = None
    ignore_label: int | None = None
    file_ending: str = ".nii.gz"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": dict(self.labels), "channel_names": list(self.channel_names),
                "regions_class_order": list(self.regions_class_order) if self.regions_class_order else None,
                "ignore_label": self.ignore_label, "file_ending": self.file_ending}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetRecord:
        rco = d.get("regions_class_order")
        return cls(name=str(d.get("name", "")), labels=dict(d["labels"]), channel_names=tuple(d["channel_names"]),
                   regions_class_order=tuple(int(v) for v in rco) if rco else None,
                   ignore_label=d.get("ignore_label"), file_ending=str(d.get("file_ending", ".nii.gz")))


@dataclass(frozen=True)
class ModelRecord:
    """What a model is: enough to rebuild its network and use it without any other file.

    ``plans`` is the plans.json document the model was trained with (``Plans.to_dict()``; read it
    with ``autoseg.planning.plans.Plans.from_dict``); ``settings`` the training settings
    (``TrainSettings.to_dict()``); ``weights_sha256`` the :func:`state_digest` of the weights (None
    in checkpoints written before digests were recorded). ``inference_mirror_axes``: the axes
    test-time augmentation may mirror (None: all; set for models imported from nnU-Net, whose trainer
    may have allowed fewer); ``imported_from``: where an imported model came from. A cascade stage
    (``3d_cascade_fullres``) names the stage whose segmentation it takes as extra input:
    ``previous_stage`` (that configuration, e.g. ``3d_lowres``) and ``previous_model`` (its model folder's
    name beside this one, ``<arch>__<plans>__3d_lowres``); both None for any other model."""

    plans: dict[str, Any]
    configuration: str
    arch: str
    fold: int | str
    dataset: DatasetRecord
    settings: dict[str, Any] = field(default_factory=dict)
    autoseg_version: str = __version__
    weights_sha256: str | None = None
    inference_mirror_axes: tuple[int, ...] | None = None
    imported_from: dict[str, Any] | None = None
    previous_stage: str | None = None
    previous_model: str | None = None

    @property
    def is_cascade(self) -> bool:
        return self.previous_stage is not None

    @property
    def plans_name(self) -> str:
        return str(self.plans.get("plans_name", ""))

    def same_model_as(self, other: ModelRecord) -> bool:
        """Whether both describe folds of one model (plans, configuration, architecture, labels, mirroring)."""
        return (self.plans, self.configuration, self.arch, self.dataset, self.inference_mirror_axes,
                self.previous_stage, self.previous_model) == \
            (other.plans, other.configuration, other.arch, other.dataset, other.inference_mirror_axes,
             other.previous_stage, other.previous_model)

    def to_dict(self) -> dict[str, Any]:
        out = {"plans": self.plans, "configuration": self.configuration, "arch": self.arch, "fold": self.fold,
               "dataset": self.dataset.to_dict(), "settings": dict(self.settings),
               "autoseg_version": self.autoseg_version, "weights_sha256": self.weights_sha256}
        if self.inference_mirror_axes is not None:  # keys only imported models have
            out["inference_mirror_axes"] = list(self.inference_mirror_axes)
        if self.imported_from is not None:
            out["imported_from"] = dict(self.imported_from)
        if self.previous_stage is not None:  # keys only cascade stages have
            out["previous_stage"] = self.previous_stage
            out["previous_model"] = self.previous_model
        return out

    @classmethod
    def of(cls, checkpoint: Mapping[str, Any], source: Path | str = "checkpoint") -> ModelRecord:
        """The record of a loaded checkpoint (any autoseg version's: a missing weights digest is None)."""
        d = checkpoint.get("dataset")
        if not isinstance(d, Mapping) or "labels" not in d or "channel_names" not in d:
            raise CheckpointError(f"{source}: checkpoint has no dataset record (labels, channels); retrain with "
                                  "this autoseg")
        if "plans" not in checkpoint:
            raise CheckpointError(f"{source}: checkpoint has no plans; retrain with this autoseg")
        return cls.from_dict(checkpoint, source)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Path | str = "checkpoint") -> ModelRecord:
        try:
            return cls(plans=dict(d["plans"]), configuration=str(d["configuration"]), arch=str(d["arch"]),
                       fold=d["fold"], dataset=DatasetRecord.from_dict(d["dataset"]),
                       settings=dict(d.get("settings") or {}), autoseg_version=str(d.get("autoseg_version", "")),
                       weights_sha256=d.get("weights_sha256"),
                       inference_mirror_axes=(tuple(int(a) for a in d["inference_mirror_axes"])
                                              if d.get("inference_mirror_axes") is not None else None),
                       imported_from=dict(d["imported_from"]) if d.get("imported_from") is not None else None,
                       previous_stage=str(d["previous_stage"]) if d.get("previous_stage") is not None else None,
                       previous_model=str(d["previous_model"]) if d.get("previous_model") is not None else None)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: the checkpoint's description of its model is incomplete "
                                  f"({type(e).__name__}: {e}); retrain with this autoseg") from None


def weights_digest(network: nn.Module) -> str:
    """sha256 over the network's parameters and buffers (names, dtypes, shapes, values): equal for the
    same weights whatever file holds them (a run's checkpoint, an exported slim copy)."""
    return state_digest(network.state_dict())


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """:func:`weights_digest` of a float32 network from its state dict, without building the network:
    floating-point tensors are taken as float32 (what loading them into the network makes of them)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        t = t.float() if t.is_floating_point() else t  # no copy for float32, the weights' dtype
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def content_digest(entries: Mapping[str, Any]) -> str:
    """sha256 over nested dicts, lists, tensors (dtype, shape, raw bytes) and primitives, in a fixed
    order, of every entry but the weights (``model``, covered by ``weights_sha256``, which is one of
    the entries) and the digest itself: each byte of a checkpoint is hashed once."""
    import torch

    h = hashlib.sha256()
    _feed(h, {k: v for k, v in entries.items() if k not in (DIGEST_KEY, "model")}, torch)
    return h.hexdigest()


def _feed(h, value: Any, torch) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        h.update(f"D{len(value)}|".encode())
        for k in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"{type(k).__name__}:{k}=".encode())
            _feed(h, value[k], torch)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}|".encode())
        for v in value:
            _feed(h, v, torch)
    else:
        h.update(f"{type(value).__name__}:{value!r}|".encode())


def with_digests(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``checkpoint`` with the digest of its weights (recomputed: they may have been changed since they
    were loaded) and of its whole content."""
    out = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
    if "model" in out:
        out["weights_sha256"] = state_digest(out["model"])
    out[DIGEST_KEY] = content_digest(out)
    return out


def checkpoint_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """The file content of ``checkpoint`` (digests included)."""
    import torch

    buf = io.BytesIO()
    torch.save(with_digests(checkpoint), buf)
    return buf.getvalue()


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    import torch

    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(checkpoint: Mapping[str, Any], path: Path) -> Path:
    """Write ``checkpoint`` with its digests to ``path`` atomically (temporary file, fsync, rename).

    Weights holding NaN or inf are refused (:class:`NonFiniteWeightsError`), so a diverged run can never
    leave them behind as ``checkpoint_best.pt`` or ``checkpoint_final.pt``."""
    import torch

    bad = nonfinite_tensors(checkpoint.get("model") or {})
    if bad:
        raise NonFiniteWeightsError(f"{path}: not written: {len(bad)} weight tensor(s) hold NaN or infinite values "
                                    f"(e.g. {bad[0]}); training diverged, the checkpoints already there are kept")
    entries = with_digests(checkpoint)
    return atomic_write_with(path, lambda f: torch.save(entries, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read and check a checkpoint (``torch.load(weights_only=True)``: tensors and primitives only).

    ``mmap``: map the file instead of reading it; tensors are read from it when first used (safe
    because checkpoints are only ever replaced by renaming). Raises :class:`CheckpointError` naming
    the file when it is missing, unreadable, foreign, of another format version, or damaged (its
    content no longer matches the digest written with it)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        if mmap:  # a file system that cannot map files, or a damaged file: read it plainly (says which)
            return load_checkpoint(path, map_location)
        raise CheckpointError(f"{path}: cannot be read as an autoseg checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); it may be truncated or foreign") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an autoseg checkpoint (no format '{FORMAT}'); "
                              "nnU-Net .pth files cannot be loaded directly")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ckpt.get('format_version')}, this autoseg "
                              f"({__version__}) reads version {FORMAT_VERSION}; use the autoseg version that "
                              f"wrote it ({ckpt.get('autoseg_version')}) or retrain")
    if DIGEST_KEY in ckpt and (ckpt[DIGEST_KEY] != content_digest(ckpt) or
                               ("model" in ckpt and ckpt.get("weights_sha256") != state_digest(ckpt["model"]))):
        raise CheckpointError(f"{path}: the checkpoint is damaged: its content no longer matches the sha256 digest "
                              "written with it (changed on disk or in a copy); restore the file from a good copy "
                              "or train the fold again")
    return ckpt
