"""OpenVINO versions of the networks and where they are kept: conversion, its cache, int8 records.

A torch network is converted with ``ov.convert_model`` from an example patch (per-channel norms
written out as one MVN each first, :func:`~autoseg.models.norms.spatial_instance_norms`) and
stored as ``.xml`` + ``.bin`` in ``.openvino/`` next to the checkpoint it came from, under a name made
of the checkpoint's name, size and modification time, the input shape, the OpenVINO version and
:data:`GRAPH_VERSION`, so a retrained checkpoint or an older conversion is converted again. The int8
networks ``autoseg quantize`` makes lie next to their checkpoints (``<checkpoint>.int8.xml``), each
described in the fold's ``quantization.json`` (the digest of the weights it was made from, its input
shape, its Dice check); :func:`int8_status` says whether one may be used. :class:`OpenVINONetwork`
runs a compiled model like a torch module. OpenVINO is optional: it is imported inside the functions
that need it, so this module loads without it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.core.fileops import atomic_write_json
from autoseg.models.norms import spatial_instance_norms

OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: quantized layers int8, the rest f32
OPENVINO_CACHE = ".openvino"  # converted networks, in each fold folder next to the checkpoint
GRAPH_VERSION = 2  # of what _convert makes (2: norms as one MVN each); part of the cache file names
QUANTIZATION_FILE = "quantization.json"
SCHEMA_VERSION = 1  # of quantization.json


class BackendError(ValueError):
    """A backend/precision/device combination that cannot run (the message says what to use)."""


class QuantizeError(ValueError):
    """A model that cannot be quantized, or an int8 network that cannot be used (the message says why)."""


def _ir_path(cache: Path, source: Path, shape: Sequence[int]) -> Path:
    """Cache file of the converted network: named after the checkpoint's name, size and modification
    time, the input shape, the OpenVINO version and :data:`GRAPH_VERSION`, so a changed checkpoint,
    or a conversion made by an earlier autoseg, is converted again."""
    import openvino as ov

    st = source.stat()
    key = (f"{source.stem}-{st.st_size}-{st.st_mtime_ns}-{'x'.join(map(str, shape))}"
           f"-ov{ov.__version__.split('-')[0]}-g{GRAPH_VERSION}")
    return cache / f"{key}.xml"


def save_ir(model, path: Path) -> None:
    """Store an OpenVINO model (``.xml`` + ``.bin``) atomically: written to a temporary folder next to
    it and renamed, weights first, so an ``.xml`` that exists always has its ``.bin``."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        ov.save_model(model, str(tmp / path.name), compress_to_fp16=False)
        os.replace(tmp / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def no_telemetry():
    """OpenVINO's model converter and NNCF send usage statistics unless they believe they run in CI
    (their only switch besides a consent file in the user's home, ``opt_in_out --opt_out``); inside
    this block they do, so autoseg sends nothing. Both decide once per process, on first use."""
    keys = {"CI": "true", "NNCF_CI": "1"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cache_file(source: Path, shape: Sequence[int]) -> Path:
    source = Path(source).resolve()  # folds linked to one file share it
    return _ir_path(source.parent / OPENVINO_CACHE, source, shape)


def cached_openvino(source: Path | None, shape: Sequence[int]):
    """The cached OpenVINO model of checkpoint ``source`` for inputs of ``shape`` (see
    :func:`convert_to_openvino`), or None when there is none yet."""
    import openvino as ov

    if source is None:
        return None
    cached = _cache_file(source, shape)
    return ov.Core().read_model(str(cached)) if cached.is_file() else None


def convert_to_openvino(network: nn.Module, shape: Sequence[int], source: Path | None = None):
    """The OpenVINO model of ``network`` for inputs of ``shape``; read from (or stored in) the cache
    folder ``.openvino`` next to the checkpoint ``source`` when given (conversion traces the network,
    which takes seconds to a minute per fold; reading the cache takes well under a second)."""
    found = cached_openvino(source, shape)
    if found is not None:
        return found
    model = _convert(network, shape)
    if source is not None:
        cached, source = _cache_file(source, shape), Path(source).resolve()
        try:
            save_ir(model, cached)
            _remove_stale_ir(cached, source)
        except OSError:  # a read-only model folder: convert again next time
            pass
    return model


def _convert(network: nn.Module, shape: Sequence[int]):
    """``ov.convert_model`` of a copy of ``network`` whose per-channel norms are written out for
    OpenVINO (:func:`~autoseg.models.norms.spatial_instance_norms`: one MVN each instead of
    reshape -> MVN -> reshape and two layout conversions)."""
    import openvino as ov

    deployed = spatial_instance_norms(copy.deepcopy(network).eval())
    with warnings.catch_warnings(), torch.no_grad(), no_telemetry():
        warnings.simplefilter("ignore")  # tracing warnings about shape checks that hold for a fixed shape
        return ov.convert_model(deployed, example_input=torch.zeros(tuple(shape)), input=[tuple(shape)])


def _remove_stale_ir(current: Path, source: Path) -> None:
    """Delete cached conversions of earlier versions of ``source`` for the same input shape and
    OpenVINO version (other size or modification time, or an earlier :data:`GRAPH_VERSION`, or none;
    see :func:`_ir_path`): a retrained fold would otherwise leave one copy of its weights behind per
    training."""
    head = f"{source.stem}-"
    version = re.match(r"\d+-\d+", current.name[len(head):])
    graph = re.search(r"-g\d+\.xml$", current.name)
    if not current.name.startswith(head) or version is None or graph is None:
        return
    rest = current.name[len(head) + version.end():graph.start()]
    pattern = re.compile(re.escape(head) + r"\d+-\d+" + re.escape(rest) + r"(-g\d+)?\.xml")
    for xml in current.parent.glob("*.xml"):
        if xml != current and pattern.fullmatch(xml.name):
            xml.with_suffix(".bin").unlink(missing_ok=True)
            xml.unlink(missing_ok=True)


def _compile_on_own_threads(ov, models: Sequence, config: dict) -> list:
    """``compile_model`` of each model, each on its own short-lived thread, all at once (folds compile
    in parallel: 5 Hippocampus folds in 0.8-1.0 s instead of 1.5-1.6 s on 2 cores).

    OpenVINO's CPU plugin installs an alternate signal stack on the thread that compiles and frees it
    when the compiled model is released, from whichever thread that happens on. Compiled on the main
    thread and released elsewhere (garbage collection, a worker thread), the main thread keeps a
    dangling signal stack and the process dies of SIGSEGV at its next Python signal handler (a
    DataLoader's SIGCHLD, say). A thread that exits right after compiling takes its stack with it."""
    results: list[dict] = [{} for _ in models]

    def compile_(model, result):
        try:
            result["compiled"] = ov.Core().compile_model(model, "CPU", config)
        except BaseException as e:  # re-raised on the calling thread
            result["error"] = e

    threads = [threading.Thread(target=compile_, args=(m, r), name="openvino-compile") for m, r in zip(models, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if "error" in r:
            raise r["error"]
    return [r["compiled"] for r in results]


class OpenVINONetwork(nn.Module):
    """A network compiled by OpenVINO for a fixed patch shape, callable like the torch module.

    The model is compiled for batch 1; a batch of several patches runs patch by patch (the fixed
    shape is faster than a dynamic one, and the CPU time per patch does not depend on the batch).
    :meth:`convert` makes one from a torch network (``source``, the checkpoint file, enables the
    conversion cache of :func:`convert_to_openvino`); an int8 model (``autoseg quantize``) is read
    from its file and compiled as is.

    A compiled model keeps its intermediate buffers between calls (1.15 GB for a 6-stage U-Net on a
    112x160x128 patch). With ``release_memory`` they are freed after every call, so several folds run
    one after another on each window hold one set of buffers, not one per fold; allocating them again
    costs a few percent of a forward pass of such a network."""

    def __init__(self, compiled, input_shape: Sequence[int], release_memory: bool = False):
        super().__init__()
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.input_shape = tuple(input_shape)
        self.release_memory = release_memory

    @classmethod
    def compile_all(cls, models: Sequence, input_shape: Sequence[int], precision: str = "fp32",
                    release_memory: bool = False) -> tuple["OpenVINONetwork", ...]:
        """OpenVINO models (for inputs of ``input_shape``) compiled in parallel for ``precision``."""
        ov = require_openvino()
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
        return tuple(cls(c, input_shape, release_memory) for c in _compile_on_own_threads(ov, models, config))

    @classmethod
    def convert(cls, network: nn.Module, example_shape: Sequence[int], precision: str = "fp32",
                source: Path | None = None, release_memory: bool = False) -> "OpenVINONetwork":
        """``network`` converted (or read from the cache) for patches of ``example_shape[1:]``."""
        require_openvino()
        shape = (1, *example_shape[1:])
        return cls.compile_all([convert_to_openvino(network, shape, source)], shape, precision, release_memory)[0]

    @classmethod
    def read(cls, xml: Path, input_shape: Sequence[int], release_memory: bool = False) -> "OpenVINONetwork":
        """A saved OpenVINO model (the int8 network of a fold)."""
        ov = require_openvino()
        return cls.compile_all([ov.Core().read_model(str(xml))], input_shape, "int8", release_memory)[0]

    @property
    def inference_precision(self) -> str:
        """The floating-point type OpenVINO computes in, as compiled (``f32`` or ``bf16``)."""
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise BackendError(f"OpenVINO network compiled for patches {self.input_shape[1:]}, got {tuple(x.shape[1:])}")
        arr = x.detach().to("cpu", torch.float32).numpy()
        outs = []
        for b in range(arr.shape[0]):
            self._request.infer({0: np.ascontiguousarray(arr[b:b + 1])})
            outs.append(np.array(self._request.get_output_tensor(0).data, copy=True))
        if self.release_memory:
            self._compiled.release_memory()
        return torch.from_numpy(np.concatenate(outs))


def require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise BackendError("--backend openvino needs the openvino package: pip install openvino") from None
    return ov


def int8_name(checkpoint: Path) -> str:
    return f"{Path(checkpoint).stem}.int8.xml"


def read_records(fold_dir: Path) -> dict[str, Any]:
    """``quantization.json`` of a fold folder: checkpoint file name -> record ({} when absent)."""
    path = Path(fold_dir) / QUANTIZATION_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        records = data["checkpoints"]
        if data.get("schema_version") != SCHEMA_VERSION or not isinstance(records, dict):
            raise ValueError(f"schema_version {data.get('schema_version')}, expected {SCHEMA_VERSION}")
    except (ValueError, KeyError, TypeError) as e:
        raise QuantizeError(f"{path}: unreadable ({e}); run `autoseg quantize` again") from None
    return records


def int8_status(checkpoint: Path, digest: str, shape: Sequence[int]) -> tuple[Path | None, str]:
    """The int8 model of ``checkpoint`` usable for weights ``digest`` and input ``shape``, or None and why not."""
    checkpoint = Path(checkpoint).resolve()  # folds linked to one file share its int8 network
    record = read_records(checkpoint.parent).get(checkpoint.name)
    again = f"run `autoseg quantize` for {checkpoint.parent}"
    if record is None:
        return None, f"{checkpoint.parent} has no int8 network for {checkpoint.name}; {again}"
    xml = checkpoint.parent / record.get("model", "")
    if record.get("weights_sha256") != digest:
        return None, f"{xml.name} was made from other weights than the current {checkpoint.name} (retrained?); {again}"
    if list(record.get("input_shape", [])) != list(shape):
        return None, f"{xml.name} takes inputs {record.get('input_shape')}, not {list(shape)}; {again}"
    if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
        return None, f"{xml} (or its .bin) is missing; {again}"
    check = record.get("check", {})
    if not check.get("passed"):
        return None, (f"{xml.name} failed its check: Dice fell by {check.get('max_dice_drop')} on the validation "
                      f"cases (tolerance {check.get('tolerance')}); predict with --precision fp32")
    return xml, "ok"


def save_record(fold_dir: Path, checkpoint: Path, record: dict[str, Any] | None) -> None:
    """Set (or, with None, remove) the record of ``checkpoint`` in the fold's ``quantization.json``."""
    records = {}
    try:
        records = read_records(fold_dir)
    except QuantizeError:  # an unreadable file is replaced
        pass
    if record is None and checkpoint.name not in records:
        return
    if record is None:
        del records[checkpoint.name]
    else:
        records[checkpoint.name] = record
    atomic_write_json(fold_dir / QUANTIZATION_FILE, records_document(records))


def records_document(records: dict[str, Any]) -> dict[str, Any]:
    """The content of ``quantization.json`` for ``records`` (checkpoint file name -> record)."""
    return {"kind": "autoseg_quantization", "schema_version": SCHEMA_VERSION, "checkpoints": records}
