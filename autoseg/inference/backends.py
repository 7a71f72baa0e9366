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
  :func:`cpu_auto`: OpenVINO when the package is installed, else torch, with the precision of
  :func:`cpu_auto_precision` (bf16 on CPUs that compute it natively, for the backends where it was
  measured to keep the Dice of f32; else f32) -- or OpenVINO int8 when every fold has an int8
  network that passed its Dice check against f32 for the current weights.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoseg.core.checkpoint import weights_digest
from autoseg.core.runtime import cpu_supports_bf16
from autoseg.inference.conversion import (  # noqa: F401  (BackendError, OPENVINO_CACHE: part of this module's API)
    OPENVINO_CACHE,
    OV_PRECISION,
    QUANTIZATION_FILE,
    BackendError,
    OpenVINONetwork,
    QuantizeError,
    cached_openvino,
    convert_to_openvino,
    int8_status,
    require_openvino,
)

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# CPU default of --backend auto / --precision auto, decided with benchmarks/predict_backends.py on
# trained weights (docs/benchmarks.md): OpenVINO f32 gave the same label in every voxel and the same
# Dice as torch fp32 at 0.52x its time per case (toy CT, 6 cases with TTA, 2-core EPYC); on a
# 2-core Zen 4 EPYC with AVX-512 an earlier measurement gave 1.35 s vs 2.37 s per batch of 8.
# OpenVINO is an optional dependency,
# so without it torch runs. bf16 is emulated, hence slower, on CPUs without native bf16: there it
# runs only when asked for.
CPU_FALLBACK = "torch"
CPU_FAST = "openvino"
# Backends whose --precision auto is bf16 on CPUs with native bf16 (AVX-512 BF16 or AMX), decided
# with benchmarks/predict_backends.py on trained Hippocampus weights, 42 validation cases with TTA, on
# a 2-core Zen 4 EPYC with avx512_bf16 (docs/benchmarks.md, "bf16 on a CPU with native bf16"):
# OpenVINO bf16 foreground Dice 0.7354 vs f32 0.7355 (0.006% of voxels labelled differently) at
# 0.52x the time; torch bf16 autocast 0.7355 vs 0.7355 (0.006%) at 0.72x.
CPU_BF16_AUTO = frozenset({"openvino", "torch"})
_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Engine:
    """Networks ready to run: ``networks`` go to ``predict_logits`` with ``device`` and ``amp_dtype``."""

    backend: str
    precision: str
    device: torch.device
    networks: tuple[nn.Module, ...]
    amp_dtype: torch.dtype | None
    previous: Engine | None = None  # a cascade stage: the engine of its previous stage's networks

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
        precision = cpu_auto_precision(backend, cpu_has_bf16()) if device.type == "cpu" else \
            {"cuda": "fp16"}.get(device.type, "fp32")
    if backend == "openvino" and device.type != "cpu":
        raise BackendError(f"--backend openvino runs on the CPU only, not on {device.type}; use --device cpu "
                           "or --backend torch")
    if backend == "openvino" and precision not in OV_PRECISION:
        raise BackendError(f"--backend openvino supports --precision {' or '.join(OV_PRECISION)}, not {precision}")
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
    return importlib.util.find_spec("openvino") is not None


def cpu_auto() -> tuple[str, str]:
    """``(backend, precision)`` that ``auto`` runs on the CPU: the fastest path installed that keeps
    the Dice of f32 (int8, chosen later when ``autoseg quantize`` made it, aside)."""
    backend = CPU_FAST if openvino_available() else CPU_FALLBACK
    return backend, cpu_auto_precision(backend, cpu_has_bf16())


def cpu_auto_precision(backend: str, native_bf16: bool) -> str:
    """``--precision auto`` of ``backend`` on the CPU: bf16 where the CPU computes it natively
    (``native_bf16``) and the backend is one of :data:`CPU_BF16_AUTO`, else fp32."""
    return "bf16" if native_bf16 and backend in CPU_BF16_AUTO else "fp32"


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (else torch emulates it and OpenVINO falls back to f32)."""
    return cpu_supports_bf16()


def _int8_networks(networks: Sequence[nn.Module], sources: Sequence[Path | None], shape: Sequence[int],
                   release: bool, required: bool) -> tuple[OpenVINONetwork, ...] | None:
    """The folds' int8 networks (``autoseg quantize``), or None when one has none that passed its check
    for the current weights; with ``required`` that is an error saying why."""
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
    ov = require_openvino()
    return OpenVINONetwork.compile_all([ov.Core().read_model(str(x)) for x in found], shape, "int8", release)


def _digest(networks: Sequence[nn.Module], index: int) -> str:
    """Weights digest of ``networks[index]``, without building it when ``networks`` builds lazily
    (:class:`~autoseg.inference.predictor.FoldNetworks`)."""
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
        require_openvino()
        models = [cached_openvino(src, shape) for src in sources]
        models = [m if m is not None else convert_to_openvino(networks[i], shape, sources[i])
                  for i, m in enumerate(models)]
        return Engine(backend, precision, device, OpenVINONetwork.compile_all(models, shape, precision, release), None)
    moved = tuple(n.to(device).eval() for n in networks)
    return Engine(backend, precision, device, moved, _AMP[precision])
