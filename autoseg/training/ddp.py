"""Distributed data parallel training through ``torchrun`` (NCCL on GPUs, gloo on CPU).

``torchrun --nproc-per-node N -m autoseg train ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The command line reads them once
(:func:`detect`) and passes the :class:`DistContext` down. Rank 0 alone writes files; every rank
samples its own batches (the loaders take ``rank`` and ``world_size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


COLLECTIVE_TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def detect(environ: Mapping[str, str]) -> DistContext:
    """The context torchrun describes in ``environ``; a single process when it says nothing."""
    if "WORLD_SIZE" not in environ or "RANK" not in environ:
        return SINGLE
    try:
        ctx = DistContext(rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                          local_rank=int(environ.get("LOCAL_RANK", environ["RANK"])))
    except ValueError:
        raise ValueError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None
    if not 0 <= ctx.rank < ctx.world_size:
        raise ValueError(f"RANK {ctx.rank} is outside 0..{ctx.world_size - 1}")
    return ctx


def init(ctx: DistContext, device: torch.device) -> None:
    """Join the process group: NCCL for CUDA devices, gloo otherwise. No-op for one process.

    The timeout is long because rank 0 alone runs the end-of-training validation of a fold while
    the other ranks wait at the next fold's first collective."""
    if not ctx.is_distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size, timeout=COLLECTIVE_TIMEOUT)


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def local_device(ctx: DistContext, device: torch.device) -> torch.device:
    """The CUDA device of this rank (``cuda:LOCAL_RANK``); other devices unchanged."""
    if device.type == "cuda" and ctx.is_distributed:
        return torch.device("cuda", ctx.local_rank)
    return device


def wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed. The networks build no head whose
    output goes unused (see autoseg.models.registry), so ``find_unused_parameters`` stays off."""
    if not ctx.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place) and return it; unchanged for one process."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Maximum of ``tensor`` over ranks (in place) and return it; unchanged for one process."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.barrier()


def batch_share(batch_size: int, ctx: DistContext) -> int:
    """This rank's part of the plan's (global) batch size; every rank gets at least one sample."""
    if batch_size < ctx.world_size:
        return 1
    return batch_size // ctx.world_size + (1 if ctx.rank < batch_size % ctx.world_size else 0)
