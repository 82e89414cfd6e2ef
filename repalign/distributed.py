"""Thin helpers over ``torch.distributed`` for runs launched with ``torchrun``.

repalign has no distributed engine of its own: ``torchrun`` starts one process
per device and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; this module
reads them, opens the process group (``nccl`` on CUDA, ``gloo`` on CPU) and
offers the few collectives the trainer and the extractor need. Every helper is
a no-op (or the identity) in a plain single-process run, so callers never
branch on "am I distributed?" beyond :func:`is_distributed`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from repalign.train.batches import BatchStream

log = logging.getLogger(__name__)


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
    world = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local = _int_env("LOCAL_RANK", rank)
    if world < 1:
        raise ValueError(
            f"WORLD_SIZE={world}: a job needs at least 1 process; unset WORLD_SIZE "
            "or launch with torchrun"
        )
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    if local < 0:
        raise ValueError(f"LOCAL_RANK={local}: must be >= 0 (torchrun sets it per node)")
    return DistEnv(rank=rank, local_rank=local, world_size=world)


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{name}={text!r} is not an integer; torchrun sets it, so unset it "
            "for a single-process run or launch with torchrun"
        ) from None


def launched_by_torchrun() -> bool:
    """True when the environment describes a job of more than one process."""
    return env().world_size > 1


def is_distributed() -> bool:
    """True when a process group with more than one member is open."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank: the process group's, else ``RANK`` from torchrun, else 0."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else env().rank


def get_world_size() -> int:
    """Processes in the job: the process group's size, else ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return env().world_size


def is_main_process() -> bool:
    """Rank 0 (also true in a single-process run): the process that logs and writes."""
    return get_rank() == 0


def init_from_env(device: str | torch.device = "cpu", *, timeout_s: float = 600.0) -> DistEnv:
    """Open the default process group if ``torchrun`` launched this process.

    Backend: ``nccl`` for CUDA devices, ``gloo`` otherwise. On CUDA each rank is
    pinned to ``cuda:LOCAL_RANK``. Safe to call twice and in single-process runs
    (then it does nothing). Ranks other than 0 raise the root logger to WARNING.
    Returns the job layout.
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
    if not job.is_main:  # one voice: the other ranks report warnings and errors only
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
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


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks along dim 0, in rank order.

    Gradients flow back to every rank's ``x`` (``torch.distributed.nn.functional.all_gather``),
    which a contrastive loss over the global batch needs. Identity without a process group.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks along dim 0; no gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _flag_tensor(flag: bool) -> torch.Tensor:
    """``flag`` as a one-element tensor on the device the process group's backend uses."""
    return torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank (for decisions only rank 0 can make)."""
    if not is_distributed():
        return flag
    t = _flag_tensor(flag)
    dist.broadcast(t, src=0)
    return bool(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-reduce)."""
    if not is_distributed():
        return flag
    t = _flag_tensor(flag)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a detached copy; for logging losses, not for gradients)."""
    out = x.detach().clone()
    if not is_distributed():
        return out
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


class ShardedBatchStream(Dataset):
    """This rank's part of every global batch of a :class:`~repalign.train.batches.BatchStream`.

    Global batch ``k`` is the stream's batch ``k`` (``batch_size`` samples from the
    per-epoch permutation seeded by ``(seed, epoch)``); rank ``r`` of ``W`` takes its
    samples ``r, r + W, ...``, the strided split ``DistributedSampler`` makes, so the
    ranks together see exactly the samples a single process sees at step ``k``, and
    batch ``k`` stays a pure function of ``(seed, k, rank)``: resume stays exact.
    Each rank collates only its own samples, with its own seed (masks and
    augmentations differ between ranks, as they would between batch halves).
    """

    def __init__(self, stream: BatchStream, rank: int, world_size: int) -> None:
        shard_range(stream.batch_size, rank, world_size)  # validates rank / world_size
        if stream.batch_size % world_size:
            raise ValueError(
                f"batch_size {stream.batch_size} is the global batch and must divide evenly "
                f"over the {world_size} processes; use a multiple of {world_size}"
            )
        self.stream, self.rank, self.world_size = stream, rank, world_size
        self.seed = stream.seed
        self.batch_size = stream.batch_size // world_size

    def __len__(self) -> int:
        return len(self.stream)

    def indices(self, k: int) -> np.ndarray:
        return self.stream.indices(k)[self.rank :: self.world_size]

    def __getitem__(self, k: int) -> Any:
        # imported here: repalign.train imports this module
        from repalign.train.batches import collate_seeded

        samples = [self.stream.dataset[int(i)] for i in self.indices(k)]
        return collate_seeded(self.stream.collate, samples, self.seed, k, 7 + self.rank)
