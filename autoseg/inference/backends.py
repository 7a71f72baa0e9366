"""How the networks run: PyTorch eager (fp32, or bf16/fp16 autocast) or OpenVINO on the CPU.

Every backend hands :func:`autoseg.inference.sliding.predict_logits` (and so MONAI's
``sliding_window_inference``) plain ``nn.Module`` s that map a float32 batch of patches
``(B, C, *patch)`` to float32 logits ``(B, K, *patch)``; precision is either an autocast dtype
(torch) or compiled into the OpenVINO model. Choices:

- ``--backend torch`` (PyTorch eager) on cpu, cuda or mps; ``--precision fp32``, ``bf16`` or ``fp16``
  (fp16 on GPUs only);
- ``--backend openvino`` (CPU only; ``pip install openvino``): the torch network is converted once
  with ``ov.convert_model`` from an example patch, compiled with ``PERFORMANCE_HINT=LATENCY`` and
  ``INFERENCE_PRECISION_HINT`` ``f32`` (exact; OpenVINO's own default on bf16 CPUs is bf16) or
  ``bf16``;
- ``auto`` (default): on CUDA torch with fp16 autocast (what nnU-Net predicts with); on other devices
  :data:`CPU_AUTO`, which stays torch fp32 until a faster path is shown to keep Dice on trained
  weights (``benchmarks/predict_backends.py``; docs/benchmarks.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU default of --backend auto / --precision auto. OpenVINO f32 is faster than torch fp32 here
# (REFERENCE.md section 10: 1.35 s vs 2.37 s per batch of 8, identical argmax), but it is an optional
# dependency and its conversion costs seconds per fold, so torch fp32 stays the default; bf16 paths
# change the argmax of ~1% of voxels and are only used when asked for.
CPU_AUTO = ("torch", "fp32")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
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
        backend = CPU_AUTO[0] if device.type == "cpu" else "torch"
    if precision == "auto":
        precision = {"cuda": "fp16", "cpu": CPU_AUTO[1]}.get(device.type, "fp32")
    if backend == "openvino" and device.type != "cpu":
        raise BackendError(f"--backend openvino runs on the CPU only, not on {device.type}; use --device cpu "
                           "or --backend torch")
    if backend == "openvino" and precision not in _OV_PRECISION:
        raise BackendError(f"--backend openvino supports --precision {' or '.join(_OV_PRECISION)}, not {precision}")
    if precision == "fp16" and device.type == "cpu":
        raise BackendError("--precision fp16 is for GPUs; on the CPU use fp32 or bf16")
    return backend, precision


class OpenVINONetwork(nn.Module):
    """A network compiled by OpenVINO for a fixed patch shape, callable like the torch module.

    The model is compiled for batch 1; a batch of several patches runs patch by patch (the fixed
    shape is faster than a dynamic one, and the CPU time per patch does not depend on the batch)."""

    def __init__(self, network: nn.Module, example_shape: Sequence[int], precision: str = "fp32"):
        super().__init__()
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("--backend openvino needs the openvino package: pip install openvino") from None
        shape = (1, *example_shape[1:])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracing warnings about shape checks that hold for a fixed shape
            model = ov.convert_model(network.eval(), example_input=torch.zeros(shape), input=[tuple(shape)])
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
        self._compiled = ov.Core().compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.input_shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise BackendError(f"OpenVINO network compiled for patches {self.input_shape[1:]}, got {tuple(x.shape[1:])}")
        arr = x.detach().to("cpu", torch.float32).numpy()
        outs = []
        for b in range(arr.shape[0]):
            self._request.infer({0: np.ascontiguousarray(arr[b:b + 1])})
            outs.append(np.array(self._request.get_output_tensor(0).data, copy=True))
        return torch.from_numpy(np.concatenate(outs))


def make_engine(networks: Sequence[nn.Module], backend: str, precision: str, device: torch.device,
                example_shape: Sequence[int]) -> Engine:
    """Prepare ``networks`` (torch modules on the CPU, eval mode) to run with the chosen backend.

    ``example_shape`` is one batch of patches ``(B, C, *patch)``. torch networks are moved to
    ``device`` in place; OpenVINO networks are converted copies."""
    device = torch.device(device)
    backend, precision = resolve_choice(backend, precision, device)
    if backend == "openvino":
        converted = tuple(OpenVINONetwork(n, example_shape, precision) for n in networks)
        return Engine(backend, precision, device, converted, None)
    moved = tuple(n.to(device).eval() for n in networks)
    return Engine(backend, precision, device, moved, _AMP[precision])
