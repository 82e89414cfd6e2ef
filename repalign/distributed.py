"""Thin helpers over ``torch.distributed`` for runs launched with ``torchrun``.

repalign has no distributed engine of its own: ``torchrun`` starts one process
per device and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; this module
reads them, opens the process group (``nccl`` on CUDA, ``gloo`` on CPU) and
offers the few collectives the trainer and the extractor need. Every helper is
a no-op (or the identity) in a plain single-process run, so callers never
branch on "am I distributed?" beyond :func:`is_distributed`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 outside one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env() -> DistEnv:
    """The job layout from the variables ``torchrun`` sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"malformed torchrun environment variable: {exc}") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return DistEnv(rank=rank, local_rank=local, world_size=world)


def launched_by_torchrun() -> bool:
    """True when the environment describes a job of more than one process."""
    return env().world_size > 1


def is_distributed() -> bool:
    """True when a process group with more than one member is open."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (also true in a single-process run): the process that logs and writes."""
    return get_rank() == 0


def init_from_env(device: str | torch.device = "cpu", *, timeout_s: float = 600.0) -> DistEnv:
    """Open the default process group if ``torchrun`` launched this process.

    Backend: ``nccl`` for CUDA devices, ``gloo`` otherwise. On CUDA each rank is
    pinned to ``cuda:LOCAL_RANK``. Safe to call twice and in single-process runs
    (then it does nothing). Returns the job layout.
    """
    job = env()
    if job.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return job
    if not dist.is_available():
        raise RuntimeError(
            "torchrun started several processes but this torch build has no torch.distributed"
        )
    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        if torch.cuda.device_count() <= job.local_rank:
            raise RuntimeError(
                f"rank {job.rank} wants cuda:{job.local_rank} but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible; lower --nproc-per-node"
            )
        torch.cuda.set_device(job.local_rank)
    from datetime import timedelta

    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    log.info("process group: rank %d of %d (%s)", job.rank, job.world_size, backend)
    return job


def local_device(device: str | torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; anything else is returned as is."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and launched_by_torchrun():
        return torch.device("cuda", env().local_rank)
    return dev


def destroy() -> None:
    """Close the default process group if one is open."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single-process run)."""
    if is_distributed():
        dist.barrier()


def rank_zero_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Decorator: run ``fn`` on rank 0 only; other ranks get ``None``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks along dim 0, in rank order.

    Gradients flow back to every rank's ``x`` (``torch.distributed.nn.functional.all_gather``),
    which a contrastive loss over the global batch needs. Identity without a process group.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a detached copy; for logging losses, not for gradients)."""
    if not is_distributed():
        return x.detach()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the ``rank``-th of ``world_size`` contiguous, near-equal parts of ``n``.

    Part sizes differ by at most one; concatenating the parts in rank order gives ``0..n-1``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return rank * n // world_size, (rank + 1) * n // world_size
