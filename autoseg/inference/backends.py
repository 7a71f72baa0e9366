"""How the networks run: PyTorch eager (fp32, or bf16/fp16 autocast) or OpenVINO on the CPU.

Every backend hands :func:`autoseg.inference.sliding.predict_logits` plain ``nn.Module`` s that
map a float32 batch of patches ``(B, C, *patch)`` to float32 logits ``(B, K, *patch)``; precision
is either an autocast dtype (torch) or compiled into the OpenVINO model. Choices:

- ``--backend torch`` (PyTorch eager) on cpu, cuda or mps; ``--precision fp32``, ``bf16`` or ``fp16``
  (fp16 on GPUs only);
- ``--backend openvino`` (CPU only; ``pip install openvino``): the torch network is converted once
  with ``ov.convert_model`` from an example patch, compiled with ``PERFORMANCE_HINT=LATENCY`` and
  ``INFERENCE_PRECISION_HINT`` ``f32`` (exact; OpenVINO's own default on bf16 CPUs is bf16) or
  ``bf16``;
- ``--precision int8`` (OpenVINO only): the folds' int8 networks made and checked by
  ``autoseg quantize`` (:mod:`autoseg.inference.quantize`); not exact;
- ``auto`` (default): on CUDA torch with fp16 autocast (what nnU-Net predicts with); on the CPU
  :func:`cpu_auto`: OpenVINO f32 when the package is installed, else torch fp32 -- or OpenVINO int8
  when every fold has an int8 network that passed its Dice check against f32 for the current weights.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# CPU default of --backend auto / --precision auto, decided with benchmarks/predict_backends.py on
# trained weights (docs/benchmarks.md): OpenVINO f32 gave the same label in every voxel and the same
# Dice as torch fp32 at 0.52x its time per case (toy CT, 6 cases with TTA, 2-core EPYC); REFERENCE.md
# section 10 has 1.35 s vs 2.37 s per batch of 8 on another CPU. OpenVINO is an optional dependency,
# so without it torch fp32 runs. bf16 changes the argmax of ~1% of voxels (random weights) and is
# emulated, hence slower, on CPUs without native bf16: it runs only when asked for.
CPU_FALLBACK = ("torch", "fp32")
CPU_FAST = ("openvino", "fp32")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: quantized layers int8, the rest f32
OPENVINO_CACHE = ".openvino"  # converted networks, in each fold folder next to the checkpoint
GRAPH_VERSION = 2  # of what _convert makes (2: norms as one MVN each); part of the cache file names
_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class BackendError(ValueError):
    """A backend/precision/device combination that cannot run (the message says what to use)."""


@dataclass(frozen=True)
class Engine:
    """Networks ready to run: ``networks`` go to ``predict_logits`` with ``device`` and ``amp_dtype``."""

    backend: str
    precision: str
    device: torch.device
    networks: tuple[nn.Module, ...]
    amp_dtype: torch.dtype | None

    def describe(self) -> str:
        return f"{self.backend} {self.precision} on {self.device.type}"


def resolve_choice(backend: str, precision: str, device: torch.device) -> tuple[str, str]:
    """The concrete ``(backend, precision)`` for the requested ones on ``device`` (validates them)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend '{backend}'; choices: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision '{precision}'; choices: {', '.join(PRECISIONS)}")
    if backend == "auto":
        backend = cpu_auto()[0] if device.type == "cpu" else "torch"
    if precision == "auto":
        precision = {"cuda": "fp16", "cpu": cpu_auto()[1]}.get(device.type, "fp32")
    if backend == "openvino" and device.type != "cpu":
        raise BackendError(f"--backend openvino runs on the CPU only, not on {device.type}; use --device cpu "
                           "or --backend torch")
    if backend == "openvino" and precision not in _OV_PRECISION:
        raise BackendError(f"--backend openvino supports --precision {' or '.join(_OV_PRECISION)}, not {precision}")
    if precision == "int8" and backend != "openvino":
        raise BackendError("--precision int8 runs with --backend openvino on the CPU "
                           "(networks made by `autoseg quantize`)")
    if precision == "fp16" and device.type == "cpu":
        raise BackendError("--precision fp16 is for GPUs; on the CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise BackendError("--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 would be "
                           "emulated and many times slower than fp32; use --precision fp32")
    return backend, precision


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cpu_auto() -> tuple[str, str]:
    """``(backend, precision)`` that ``auto`` runs on the CPU: the fastest exact path installed."""
    return CPU_FAST if openvino_available() else CPU_FALLBACK


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (else torch emulates it and OpenVINO falls back to f32)."""
    from autoseg.training.trainer import cpu_supports_bf16

    return cpu_supports_bf16()


def _ir_path(cache: Path, source: Path, shape: Sequence[int]) -> Path:
    """Cache file of the converted network: named after the checkpoint's name, size and modification
    time, the input shape, the OpenVINO version and :data:`GRAPH_VERSION`, so a changed checkpoint,
    or a conversion made by an earlier autoseg, is converted again."""
    import openvino as ov

    st = source.stat()
    key = (f"{source.stem}-{st.st_size}-{st.st_mtime_ns}-{'x'.join(map(str, shape))}"
           f"-ov{ov.__version__.split('-')[0]}-g{GRAPH_VERSION}")
    return cache / f"{key}.xml"


def _save_ir(model, path: Path) -> None:
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
            _save_ir(model, cached)
            _remove_stale_ir(cached, source)
        except OSError:  # a read-only model folder: convert again next time
            pass
    return model


def _convert(network: nn.Module, shape: Sequence[int]):
    """``ov.convert_model`` of a copy of ``network`` whose per-channel norms are written out for
    OpenVINO (:func:`~autoseg.models.norms.spatial_instance_norms`: one MVN each instead of
    reshape -> MVN -> reshape and two layout conversions)."""
    import copy

    import openvino as ov

    from autoseg.models.norms import spatial_instance_norms

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
        ov = _require_openvino()
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
        return tuple(cls(c, input_shape, release_memory) for c in _compile_on_own_threads(ov, models, config))

    @classmethod
    def convert(cls, network: nn.Module, example_shape: Sequence[int], precision: str = "fp32",
                source: Path | None = None, release_memory: bool = False) -> "OpenVINONetwork":
        """``network`` converted (or read from the cache) for patches of ``example_shape[1:]``."""
        _require_openvino()
        shape = (1, *example_shape[1:])
        return cls.compile_all([convert_to_openvino(network, shape, source)], shape, precision, release_memory)[0]

    @classmethod
    def read(cls, xml: Path, input_shape: Sequence[int], release_memory: bool = False) -> "OpenVINONetwork":
        """A saved OpenVINO model (the int8 network of a fold)."""
        ov = _require_openvino()
        return cls.compile_all([ov.Core().read_model(str(xml))], input_shape, "int8", release_memory)[0]

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


def _require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise BackendError("--backend openvino needs the openvino package: pip install openvino") from None
    return ov


def _int8_networks(networks: Sequence[nn.Module], sources: Sequence[Path | None], shape: Sequence[int],
                   release: bool, required: bool) -> tuple[OpenVINONetwork, ...] | None:
    """The folds' int8 networks (``autoseg quantize``), or None when one has none that passed its check
    for the current weights; with ``required`` that is an error saying why."""
    from autoseg.inference.quantize import QUANTIZATION_FILE, QuantizeError, int8_status

    found = []
    for i, source in enumerate(sources):
        if not required and (source is None or not (Path(source).resolve().parent / QUANTIZATION_FILE).is_file()):
            return None
        if source is None:
            reason = "--precision int8 needs the networks' checkpoint files (their int8 networks lie next to them)"
            xml = None
        else:
            try:
                xml, reason = int8_status(source, _digest(networks, i), shape)
            except QuantizeError as e:
                xml, reason = None, str(e)
        if xml is None:
            if required:
                raise BackendError(f"--precision int8: {reason}")
            return None
        found.append(xml)
    ov = _require_openvino()
    return OpenVINONetwork.compile_all([ov.Core().read_model(str(x)) for x in found], shape, "int8", release)


def _digest(networks: Sequence[nn.Module], index: int) -> str:
    """Weights digest of ``networks[index]``, without building it when ``networks`` builds lazily
    (:class:`~autoseg.inference.predictor.FoldNetworks`)."""
    from autoseg.inference.quantize import weights_digest

    digest = getattr(networks, "digest", None)
    return digest(index) if digest is not None else weights_digest(networks[index])


def make_engine(networks: Sequence[nn.Module], backend: str, precision: str, device: torch.device,
                example_shape: Sequence[int], sources: Sequence[Path] | None = None) -> Engine:
    """Prepare ``networks`` (torch modules on the CPU, eval mode) to run with the chosen backend.

    ``example_shape`` is one batch of patches ``(B, C, *patch)``. torch networks are moved to
    ``device`` in place; OpenVINO networks are converted copies (cached next to their checkpoint
    files ``sources`` when given; a cached or int8 network is read without touching ``networks[i]``,
    so lazily built ones stay unbuilt). Several OpenVINO networks (folds) free their intermediate
    buffers after each call, so memory does not grow with the number of folds."""
    device = torch.device(device)
    requested = precision
    backend, precision = resolve_choice(backend, precision, device)
    if backend == "openvino":
        sources = list(sources) if sources is not None else [None] * len(networks)
        release = len(networks) > 1
        shape = (1, *example_shape[1:])
        if precision == "int8" or (requested == "auto" and all(s is not None for s in sources)):
            int8 = _int8_networks(networks, sources, shape, release, required=precision == "int8")
            if int8 is not None:
                return Engine(backend, "int8", device, int8, None)
        _require_openvino()
        models = [cached_openvino(src, shape) for src in sources]
        models = [m if m is not None else convert_to_openvino(networks[i], shape, sources[i])
                  for i, m in enumerate(models)]
        return Engine(backend, precision, device, OpenVINONetwork.compile_all(models, shape, precision, release), None)
    moved = tuple(n.to(device).eval() for n in networks)
    return Engine(backend, precision, device, moved, _AMP[precision])
