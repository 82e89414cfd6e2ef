"""Shared timing helpers for the benchmarks: warm-up, device sync, median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(
    fn: Callable[[], object], device: torch.device, *, repeat: int = 3, warmup: int = 1
) -> float:
    """Median wall time of ``fn()`` in seconds, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
