"""Export a trained model to one self-contained zip, and install such a zip into a workspace.

Zip layout (the model folder of a training run, so ``predict --model`` reads both the same way)::

    manifest.json                                   ExportManifest: versions, folds, sha256 per file
    <arch>__<plans>__<config>/plans.json
    <arch>__<plans>__<config>/dataset.json
    <arch>__<plans>__<config>/postprocessing.json   (when decided)
    <arch>__<plans>__<config>/fold_<k>/checkpoint_<final|best>.pt   weights + self-description only
    <arch>__<plans>__<config>/fold_<k>/network.onnx (with --onnx; checked against PyTorch)
    <arch>__<plans>__<config>/fold_<k>/quantization.json, checkpoint_<..>.int8.xml/.bin
                                                    (when `autoseg quantize` made them for these weights)

``import_model`` refuses absolute paths, ``..``, links, files the manifest does not list and files
whose checksum differs, then installs the folder under ``<workdir>/results/<Dataset>/`` atomically
(written to a temporary folder, then renamed; with ``--overwrite`` swapped with the installed one in
one step, so a killed import leaves the old or the new model, whole; the temporary folders of
killed imports are removed by the next one).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoseg import jsonfiles
from autoseg.core.version import __version__
from autoseg.artifacts import Artifact, ArtifactError
from autoseg.core.checkpoint import (TRAINING_KEYS, CheckpointError, ModelRecord, checkpoint_bytes, load_checkpoint,
                                     weights_digest)
from autoseg.core.fileops import atomic_write_with, staged_folder, writing_into
from autoseg.inference.conversion import QUANTIZATION_FILE, QuantizeError, int8_status, read_records, records_document
from autoseg.inference.predictor import choose_checkpoints, load_predictor
from autoseg.paths import file_output, inside, refuse_overwriting_inputs
from autoseg.workspace import DATASET_FILE, Workspace, fold_folder_name, model_folder_name

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "network.onnx"
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-3  # max |ONNX Runtime - PyTorch| logits, relative to max(1, |logits|)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class ExportError(ValueError):
    """A model that cannot be exported, or a zip that cannot be imported safely (the message says why)."""


@dataclass(frozen=True)
class ExportManifest(Artifact):
    """``manifest.json`` of an exported model."""

    KIND = "autoseg_model"
    SCHEMA_VERSION = 1

    dataset_name: str
    model_folder: str
    configuration: str
    arch: str
    folds: tuple[str, ...]
    checkpoint: str
    files: dict[str, str]  # path in the zip -> sha256 of its bytes
    versions: dict[str, str]
    created: str
    onnx_max_abs_diff: dict[str, float]  # fold -> max |ONNX Runtime - PyTorch| on a random patch


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions() -> dict[str, str]:
    import monai
    import numpy
    import torch

    return {"autoseg": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__, "python": sys.version.split()[0]}


def _exported_checkpoint(ckpt: dict) -> bytes:
    """The checkpoint's weights and record, without what only resuming needs (optimiser, RNG state);
    with digests of its own (:func:`~autoseg.core.checkpoint.checkpoint_bytes`)."""
    return checkpoint_bytes({k: v for k, v in ckpt.items() if k not in TRAINING_KEYS})


def dataset_json_path(model_root: Path) -> Path | None:
    """The dataset.json the model was trained with: the imported model's copy or the workspace's
    (:meth:`~autoseg.workspace.Workspace.dataset_json`); None when neither exists."""
    model_root = Path(model_root)
    candidates = [model_root / DATASET_FILE]
    owner = Workspace.holding_model(model_root)  # <workdir>/results/<Dataset>/<model folder>
    if owner is not None:
        workspace, dataset_name = owner
        candidates.append(workspace.dataset_json(dataset_name))
    return next((c for c in candidates if c.is_file()), None)


def _dataset_json(model_root: Path, record: ModelRecord) -> bytes:
    """The dataset.json the model was trained with (:func:`dataset_json_path`), else rebuilt from the
    checkpoint's dataset record."""
    found = dataset_json_path(model_root)
    if found is not None:
        return found.read_bytes()
    d = record.dataset
    data = {"channel_names": {str(i): c for i, c in enumerate(d.channel_names)}, "labels": d.labels,
            "numTraining": 0, "file_ending": d.file_ending}
    if d.regions_class_order:
        data["regions_class_order"] = list(d.regions_class_order)
    return (json.dumps(data, indent=2) + "\n").encode()


def export_onnx(network, example_shape: Sequence[int], tolerance: float = ONNX_TOLERANCE, seed: int = 0) -> tuple[bytes, float]:
    """ONNX graph of ``network`` (dynamic batch) and its max abs difference to PyTorch on a random
    patch of ``example_shape`` (B, C, *patch), computed with ONNX Runtime. Raises
    :class:`ExportError` when the difference exceeds ``tolerance * max(1, |logits|)``."""
    import warnings

    import numpy as np
    import torch

    try:
        import onnxruntime
    except ImportError:
        raise ExportError("--onnx needs onnx and onnxruntime: pip install -e '.[onnx]' (in the autoseg checkout)") from None
    network = network.eval()
    x = torch.randn(tuple(example_shape), generator=torch.Generator().manual_seed(seed))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated but needs no onnxscript
        torch.onnx.export(network, (x,), buf, dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET)
        reference = network(x).numpy()
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    result = session.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(result - reference).max())
    if not diff <= tolerance * max(1.0, float(np.abs(reference).max())):
        raise ExportError(f"ONNX Runtime differs from PyTorch by up to {diff:.3g} on a random patch; the ONNX graph "
                          "is not exported (export without --onnx)")
    return buf.getvalue(), diff


def export_model(model_dir: Path, out_zip: Path, folds: Sequence | None = None, checkpoint: str = "final",
                 onnx: bool = False) -> Path:
    """Write the chosen folds of ``model_dir`` (a model folder or one fold folder) to ``out_zip``."""
    model_dir = Path(model_dir)
    model = load_predictor(model_dir, folds, checkpoint)  # validates folds agree and networks build
    root = model.model_dir
    refuse_overwriting_inputs(Path(out_zip), [p for p in root.rglob("*") if p.is_file()], "-o")
    file_output(Path(out_zip), "-o", ".zip")
    folder = root.name if len(root.name.split("__")) == 3 else model_folder_name(model.arch, model.plans.plans_name,
                                                                                 model.config.name)
    entries: dict[str, bytes] = {}
    diffs: dict[str, float] = {}
    record = None
    example = (1, model.num_channels, *model.config.patch_size)
    for (fold, path), net in zip(choose_checkpoints(model_dir, folds, checkpoint).items(), model.networks):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
        entries[f"{folder}/{fold_folder_name(fold)}/{path.name}"] = _exported_checkpoint(ckpt)
        record = ModelRecord.of(ckpt, path)
        if onnx:
            entries[f"{folder}/{fold_folder_name(fold)}/{ONNX_NAME}"], diffs[str(fold)] = export_onnx(net, example)
        entries.update(_int8_entries(path, net, example, f"{folder}/{fold_folder_name(fold)}"))
    entries[f"{folder}/plans.json"] = (json.dumps(model.plans.to_dict(), indent=2) + "\n").encode()
    entries[f"{folder}/dataset.json"] = _dataset_json(root, record)
    post = root / "postprocessing.json"
    if post.is_file():
        entries[f"{folder}/postprocessing.json"] = post.read_bytes()
    manifest = ExportManifest(
        dataset_name=model.spec.name or model.plans.dataset_name, model_folder=folder,
        configuration=model.config.name, arch=model.arch, folds=tuple(str(f) for f in model.folds),
        checkpoint=checkpoint, files={k: _sha256(v) for k, v in entries.items()}, versions=_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), onnx_max_abs_diff=diffs)
    _write_zip(Path(out_zip), {**entries, MANIFEST_NAME: (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()})
    return Path(out_zip)


def _int8_entries(checkpoint: Path, network, shape: Sequence[int], prefix: str) -> dict[str, bytes]:
    """The fold's int8 network and its record, when one passed its check for these weights."""
    try:
        xml, _ = int8_status(checkpoint, weights_digest(network), shape)
    except QuantizeError:  # an unreadable record: exported without int8
        return {}
    if xml is None:
        return {}
    record = read_records(xml.parent)[checkpoint.resolve().name]
    binary = xml.with_suffix(".bin")
    doc = json.dumps(records_document({checkpoint.name: record}), indent=2) + "\n"
    return {f"{prefix}/{QUANTIZATION_FILE}": doc.encode(), f"{prefix}/{xml.name}": xml.read_bytes(),
            f"{prefix}/{binary.name}": binary.read_bytes()}


def _write_zip(path: Path, entries: dict[str, bytes]) -> None:
    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, data in entries.items():
                info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)

    with writing_into(path.parent, [path.name]):  # removes what a killed export left half written
        atomic_write_with(path, write)


# --- import ----------------------------------------------------------------------------------------

def check_member(info: zipfile.ZipInfo, source: Path) -> None:
    """Refuse a zip entry that could write outside the target folder or is not a plain file/folder."""
    name = info.filename
    parts = name.rstrip("/").split("/")
    mode = info.external_attr >> 16
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise ExportError(f"{source}: entry '{name}' has an absolute or Windows path; refusing to import it")
    if any(p in ("", ".", "..") for p in parts):
        raise ExportError(f"{source}: entry '{name}' leaves its folder ('..', '.' or empty part); refusing to import it")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix type recorded
        raise ExportError(f"{source}: entry '{name}' is a link or special file; refusing to import it")


def read_manifest(zf: zipfile.ZipFile, source: Path) -> ExportManifest:
    try:
        data = jsonfiles.loads(zf.read(MANIFEST_NAME), f"{source}:{MANIFEST_NAME}")
    except KeyError:
        raise ExportError(f"{source}: no {MANIFEST_NAME}; not a model exported with `autoseg export`") from None
    except (ValueError, zipfile.BadZipFile) as e:
        raise ExportError(f"{source}: {MANIFEST_NAME} is unreadable ({e})") from None
    try:
        manifest = ExportManifest.from_dict(data, source=f"{source}:{MANIFEST_NAME}")
    except ArtifactError as e:
        raise ExportError(str(e)) from None
    for value in (manifest.dataset_name, manifest.model_folder):
        if not _SAFE_NAME.match(value):
            raise ExportError(f"{source}: manifest names '{value}', which is not a plain folder name; refusing it")
    return manifest


def _verified_files(zf: zipfile.ZipFile, manifest: ExportManifest, source: Path) -> dict[str, bytes]:
    files = [i for i in zf.infolist() if not i.is_dir() and i.filename != MANIFEST_NAME]
    names = {i.filename for i in files}
    unlisted = sorted(names - set(manifest.files))
    missing = sorted(set(manifest.files) - names)
    if unlisted or missing:
        raise ExportError(f"{source}: files do not match its manifest (unlisted: {unlisted[:5]}, missing: "
                          f"{missing[:5]}); the zip was changed or damaged")
    out = {}
    for info in files:
        if not info.filename.startswith(manifest.model_folder + "/"):
            raise ExportError(f"{source}: entry '{info.filename}' lies outside {manifest.model_folder}/")
        data = zf.read(info)
        if _sha256(data) != manifest.files[info.filename]:
            raise ExportError(f"{source}: {info.filename} does not match its checksum; the zip is damaged")
        out[info.filename] = data
    return out


def import_model(zip_path: Path, workspace: Workspace, overwrite: bool = False) -> Path:
    """Install an exported model into ``<workdir>/results/<Dataset>/<model folder>``; returns that folder."""
    zip_path = Path(zip_path)
    if zip_path.is_dir():
        raise ExportError(f"{zip_path}: is a folder; give the .zip written by `autoseg export` (a model folder is "
                          "used as it is: autoseg predict --model FOLDER)")
    if not zip_path.is_file():
        raise ExportError(f"{zip_path}: file not found")
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise ExportError(f"{zip_path}: not a zip file; export the model again with `autoseg export`") from None
    with zf:
        for info in zf.infolist():
            check_member(info, zip_path)
        manifest = read_manifest(zf, zip_path)
        files = _verified_files(zf, manifest, zip_path)
    results = workspace.results_dir(manifest.dataset_name)
    target = results / manifest.model_folder
    if target.exists() and not overwrite:
        raise ExportError(f"{target}: a model is already installed there; pass --overwrite to replace it")
    if inside(zip_path, target):
        raise ExportError(f"{zip_path}: lies inside {target}, the folder it would replace; move the zip out of it "
                          "first")
    with staged_folder(target) as new:  # an installed model is replaced in one step
        for name, data in files.items():
            dest = new.parent.joinpath(*name.split("/"))  # names start with the model folder's
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        (new / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return target
