"""A background thread that writes pooled features while the model runs the next batch.

On CUDA, :meth:`AsyncWriter.submit` starts asynchronous device-to-host copies into
pinned buffers, records an event and returns at once; the writer thread waits on
that event, then appends the batch to the :class:`~repalign.store.features.FeatureFile`
and hands the buffers back for reuse (a bounded pool: at most ``max_pending`` batches
are queued, so memory stays flat and a slow disk applies back-pressure). On CPU the
pooled tensors are already host memory and go straight to the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repalign.store.features import FeatureFile

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class _Item:
    sample_ids: list[str]
    tensors: dict[str, torch.Tensor]  # host tensors (pinned buffers on CUDA)
    event: Any  # torch.cuda.Event or None
    progress: dict[str, Any]
    buffers_key: tuple | None


class PinnedBuffers:
    """Reusable pinned host buffer sets (one tensor per layer), matched by exact shapes.

    At most ``max_sets`` free sets are kept in all, oldest dropped first, so batches of
    varying shape (``tokens`` pooling of text) cannot pile up pinned memory.
    """

    def __init__(self, max_sets: int) -> None:
        self.max_sets = max_sets
        self._free: list[tuple[tuple, dict[str, torch.Tensor]]] = []
        self._lock = threading.Lock()

    @staticmethod
    def key(tensors: Mapping[str, torch.Tensor]) -> tuple:
        return tuple((name, tuple(t.shape)) for name, t in tensors.items())

    def take(self, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple, dict[str, torch.Tensor]]:
        key = self.key(tensors)
        with self._lock:
            for i, (k, bufs) in enumerate(self._free):
                if k == key:
                    del self._free[i]
                    return key, bufs
        bufs = {
            n: torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
            for n, t in tensors.items()
        }
        return key, bufs

    def give_back(self, key: tuple, bufs: dict[str, torch.Tensor]) -> None:
        with self._lock:
            self._free.append((key, bufs))
            if len(self._free) > self.max_sets:
                self._free.pop(0)


class AsyncWriter:
    """Writes submitted batches to a feature file from a background thread.

    ``open_file(example)`` is called in the writer thread with the first batch's
    arrays (so variable widths are known) unless ``file`` is given (resume).
    Errors in the thread are re-raised by the next :meth:`submit` or by :meth:`close`.
    """

    def __init__(
        self,
        open_file: Callable[[Mapping[str, np.ndarray]], FeatureFile] | None = None,
        *,
        file: FeatureFile | None = None,
        max_pending: int = 2,
    ) -> None:
        if open_file is None and file is None:
            raise ValueError("AsyncWriter needs open_file or file")
        self._open_file = open_file
        self.file = file
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        # in use at once: max_pending queued + one being written + one being filled
        self._buffers = PinnedBuffers(max_sets=max_pending + 2)
        self._error: BaseException | None = None
        self.rows_written = 0
        self.seconds_writing = 0.0
        self._thread = threading.Thread(target=self._loop, name="repalign-writer", daemon=True)
        self._thread.start()

    def submit(
        self,
        sample_ids: Sequence[str],
        features: Mapping[str, torch.Tensor],
        progress: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one batch of pooled features (device tensors) for writing; returns at once
        unless ``max_pending`` batches are already waiting."""
        self._raise_if_failed()
        on_cuda = any(t.is_cuda for t in features.values())
        if on_cuda:
            key, bufs = self._buffers.take(features)
            for name, t in features.items():
                bufs[name].copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            item = _Item(list(sample_ids), bufs, event, dict(progress or {}), key)
        else:
            host = {n: t.detach().to(torch.float32) for n, t in features.items()}
            item = _Item(list(sample_ids), host, None, dict(progress or {}), None)
        while True:  # wait for room, but notice if the writer died meanwhile
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            try:
                if item.event is not None:
                    item.event.synchronize()
                arrays = {n: t.numpy() for n, t in item.tensors.items()}
                t0 = time.perf_counter()
                if self.file is None:
                    assert self._open_file is not None
                    self.file = self._open_file(arrays)
                self.file.append(item.sample_ids, arrays, progress=item.progress)
                self.seconds_writing += time.perf_counter() - t0
                self.rows_written += len(item.sample_ids)
                if item.buffers_key is not None:
                    self._buffers.give_back(item.buffers_key, item.tensors)
            except BaseException as exc:  # reported to the main thread
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing features failed: {self._error}") from self._error

    def close(self) -> None:
        """Write everything still queued, stop the thread, re-raise a writer error."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        self._raise_if_failed()
