"""Where and in which precision a network runs, and seeding: choices every stage makes the same way.

``resolve_device`` turns ``--device`` into a torch device, ``resolve_amp`` turns ``--amp`` into an
autocast dtype (and whether gradients need scaling), ``cpu_supports_bf16`` tells whether this CPU
computes bf16 natively; training, validation and prediction all ask these functions.
"""

from __future__ import annotations

import random
import types

import numpy as np
import torch

AMP_CHOICES = ("auto", "fp32", "bf16", "fp16")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
# CPU mixed precision under "auto" (benchmarks/bf16_cpu.py): bf16 autocast leaves Dice unchanged
# (bf16 - fp32 after 120 iterations, 3 seeds: -0.0005, +0.0001, -0.0001; seed-to-seed sd 0.0076), so it
# is used where the CPU computes bf16 natively (issue 3: 2-2.5x faster step on such a CPU). Checked on
# Dataset004_Hippocampus too (docs/benchmarks.md, "Short schedules"): 160 iterations at batch 7, the
# same seed in bf16 and fp32 took the same path and ended within 0.001 foreground Dice (3 seeds), at
# 2.1x the speed.
# Without native bf16 (AVX2 only) bf16 convolutions are emulated and ~20x slower, so fp32 is used there.
CPU_BF16_BY_DEFAULT = True


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for ``device`` (disabled when ``dtype`` is None)."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


# PyTorch's CPU bf16 autocast computes wrong 3D convolution gradients when the input is 2 voxels deep
# (measured on torch 2.13.0+cpu, AMD Zen 4: a 3-kernel Conv3d on 2x3x2 or 2x4x4 inputs gave weight
# gradients off by up to 1e36 or inf, different on each call with the same input; 3x3x3 and larger
# agreed with fp32 to 0.4%; only the first axis at 2 failed in the sweep, every axis <= 2 is guarded
# to be safe on other CPUs and versions). Such layers are a network's deepest (2 voxels left after the last
# halving: SegResNet, MedNeXt, UNet++ on a 32-voxel edge, Swin UNETR's last stage) and cheap, so
# they run in fp32 (guard_tiny_convolutions); Swin UNETR and SegResNet otherwise diverged (NaN).
TINY_EDGE = 2


def guard_tiny_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """Make every ``Conv3d`` of ``model`` run in fp32 under CPU autocast when an edge of its input is
    at most :data:`TINY_EDGE` voxels (see the comment above); elsewhere nothing changes. Returns
    ``model`` (changed in place; a deep copy keeps the behaviour)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.forward = types.MethodType(_conv3d_forward_guarded, module)
    return model


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _conv3d_forward_guarded(self: torch.nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and _cpu_autocast_enabled() and min(x.shape[2:]) <= TINY_EDGE:
        with torch.autocast("cpu", enabled=False):
            return torch.nn.Conv3d.forward(self, x.float())
    return torch.nn.Conv3d.forward(self, x)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to this torch build; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple MPS is not available here; use --device cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


def resolve_amp(setting: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler) for an ``amp`` setting on ``device``."""
    if setting == "fp32":
        return None, False
    if setting == "fp16":
        return torch.float16, device.type == "cuda"
    if setting == "bf16":
        return torch.bfloat16, False
    if device.type == "cuda":
        return torch.float16, True
    if device.type == "cpu" and CPU_BF16_BY_DEFAULT and cpu_supports_bf16():
        return torch.bfloat16, False
    return None, False


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from the run's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
