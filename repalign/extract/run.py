"""The extraction runner: dataset -> adapter -> hooks -> background writer -> feature file.

:func:`extract` loops over a dataset in batches under ``torch.no_grad()`` with the
model in ``eval()`` mode, pools the selected layers inside forward hooks, and
streams the pooled features to a netCDF file from a background thread while the
next batches are loaded (worker threads) and run. Each batch is committed to disk
as soon as it is written: Ctrl-C or a SIGTERM stops after writing the batches already
computed, a killed process loses at most the batches in flight, and ``resume=True``
continues from the last committed batch to the same file an uninterrupted run writes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repalign._numerics import resolve_device
from repalign._progress import progress_bar
from repalign._signals import sigterm_as_keyboard_interrupt
from repalign._tensors import to_device
from repalign.data.base import Sample
from repalign.extract.hooks import record, select_layers
from repalign.extract.loader import BatchLoader
from repalign.extract.pooling import check_pooling
from repalign.extract.writer import AsyncWriter
from repalign.models.base import Adapter, LayerInfo
from repalign.provenance import library_versions
from repalign.store import schema
from repalign.store.features import FeatureFile
from repalign.store.outputs import FEATURES, check_output_file

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# attrs that must agree between a partial file and the run resuming it
_RESUME_KEYS = (
    "model", "checkpoint_sha256", "dataset", "pooling", "compute_dtype", schema.N_TOTAL, schema.SHARD,
)  # fmt: skip


@dataclass
class ExtractConfig:
    """Everything about a run except the model and the data."""

    layers: list[str] | None = None  # names, globs or re:REGEX; None = all
    pool: str = "mean"
    dtype: str = "float32"
    batch_size: int = 32
    workers: int = 2  # threads loading and collating batches ahead of the model
    device: str = "cpu"
    limit: int | None = None
    shard: str | None = None  # "K/N": only the K-th of N contiguous parts of the dataset
    resume: bool = False
    overwrite: bool = False
    stop_early: bool = True
    progress: bool = True
    dataset_name: str = ""


@dataclass
class ExtractResult:
    path: Path
    layers: list[str]
    n_written: int
    n_total: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False
    already_complete: bool = False  # --resume found a finished file and did nothing


def _check_resume(
    file: FeatureFile,
    attrs: Mapping[str, Any],
    layers: Sequence[LayerInfo],
    dataset: Sequence[Sample],
    lo: int,
) -> None:
    """Refuse to resume ``file`` with a different run or changed data (``lo``: first position)."""
    old = file.attrs
    diffs = [
        f"{k}: file has {old.get(k)!r}, this run {attrs[k]!r}"
        for k in _RESUME_KEYS
        if str(old.get(k)) != str(attrs[k])
    ]
    want = [info.name for info in layers]
    if sorted(file.layer_names) != sorted(want):
        diffs.append(f"layers: file has {file.layer_names}, this run {want}")
    if diffs:
        raise ValueError(
            f"cannot resume {file.path}: it was written by a different run ("
            + "; ".join(diffs)
            + "). Use --overwrite to start over, or another --out"
        )
    old_run = json.loads(old.get("config_json", "{}")).get("run", {})
    new_run = json.loads(attrs["config_json"])["run"]
    if old_run.get("batch_size") != new_run["batch_size"]:
        log.warning(
            "resuming with batch size %s (the file was started with %s): values can differ from "
            "an uninterrupted run in the last bits, as padding and kernels follow the batch",
            new_run["batch_size"], old_run.get("batch_size"),
        )  # fmt: skip
    ids = file.sample_ids()
    known = getattr(dataset, "sample_ids", None)
    if ids and known is not None:
        skipped_at_load = {s for s, _ in json.loads(old.get(schema.SKIPPED_JSON, "[]"))}
        expected = [s for s in known[lo : int(old[schema.NEXT_INDEX])] if s not in skipped_at_load]
        if expected != ids:
            raise ValueError(
                f"cannot resume {file.path}: its sample ids are not the start of this dataset "
                "(the data file changed?). Use --overwrite to start over"
            )


def shard_range(n: int, shard: str | None) -> tuple[int, int]:
    """Dataset positions ``[start, stop)`` of shard ``"K/N"`` of ``n`` (all of them for None)."""
    if not shard:
        return 0, n
    from repalign.distributed import shard_range as part

    try:
        return part(n, *schema.parse_shard(shard))
    except ValueError as exc:
        raise ValueError(f"--shard: {exc}") from None


def _file_attrs(adapter: Adapter, cfg: ExtractConfig, how: str, n_total: int) -> dict[str, Any]:
    """The global attrs of the feature file this run writes (provenance)."""
    prov = adapter.provenance()
    run_cfg = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite", "progress")}
    versions = library_versions("torch", "numpy", "xarray", "netCDF4", "transformers", "timm")
    return {
        "repalign_version": versions["repalign"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": adapter.name,
        "checkpoint": prov["checkpoint"],
        "checkpoint_sha256": prov["checkpoint_sha256"],
        "dataset": cfg.dataset_name,
        "pooling": how,
        "compute_dtype": cfg.dtype,
        "config_json": json.dumps(
            {"adapter": json.loads(prov["config_json"]), "run": run_cfg}, sort_keys=True
        ),
        "versions_json": json.dumps(versions, sort_keys=True),
        schema.N_TOTAL: n_total,
        schema.SHARD: cfg.shard or "",
    }


def _open_for_resume(
    out: Path,
    attrs: Mapping[str, Any],
    layers: Sequence[LayerInfo],
    dataset: Sequence[Sample],
    lo: int,
) -> FeatureFile:
    file = FeatureFile.append_to(out)
    try:
        _check_resume(file, attrs, layers, dataset, lo)
    except BaseException:
        file.close()
        raise
    return file


def extract(
    adapter: Adapter,
    dataset: Sequence[Sample],
    out: str | Path,
    config: ExtractConfig | None = None,
    **overrides: Any,
) -> ExtractResult:
    """Extract pooled features of ``config.layers`` for every sample of ``dataset`` into ``out``.

    ``dataset`` is any sequence of samples; a repalign dataset's ``skipped`` (records left
    out when listing) is recorded in the file, and its ``sample_ids`` (if it has them)
    let ``resume`` check that the data did not change. Keyword ``overrides`` replace
    fields of ``config`` (e.g. ``pool="cls"``).
    """
    cfg = ExtractConfig(**{**asdict(config or ExtractConfig()), **overrides})
    how = check_pooling(cfg.pool)
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown compute dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {cfg.batch_size}")
    out = check_output_file(out, FEATURES, overwrite=cfg.overwrite, resume=cfg.resume)
    available = adapter.layers()
    layers = select_layers(available, cfg.layers)
    if how == "tokens" and any(info.is_derived for info in layers):
        derived = [info.name for info in layers if info.is_derived]
        raise ValueError(
            f"tokens pooling cannot produce derived layers {derived}; leave them out of --layers"
        )
    n_all = len(dataset) if cfg.limit is None else min(cfg.limit, len(dataset))
    lo, hi = shard_range(n_all, cfg.shard)
    if cfg.shard and hi == lo and n_all > 0:
        raise ValueError(
            f"--shard {cfg.shard} of {n_all} samples holds none: split into at most {n_all} shards"
        )
    n_total = hi - lo
    attrs = _file_attrs(adapter, cfg, how, n_total)

    start = lo
    skipped: list[tuple[str, str]] = [tuple(s) for s in getattr(dataset, "skipped", ())]  # type: ignore[misc]
    file: FeatureFile | None = None
    if cfg.resume and out.exists():
        file = _open_for_resume(out, attrs, layers, dataset, lo)
        old = file.attrs
        skipped = [tuple(s) for s in json.loads(old[schema.SKIPPED_JSON])]  # type: ignore[misc]
        if int(old.get("complete", 0)) == 1:
            file.close()
            log.info(
                "%s is already complete (%d samples); nothing to do",
                out,
                int(old[schema.N_WRITTEN]),
            )
            return ExtractResult(out, [i.name for i in layers], int(old[schema.N_WRITTEN]), n_total,
                                 skipped, 0.0, complete=True, already_complete=True)  # fmt: skip
        start = int(old[schema.NEXT_INDEX])
        log.info(
            "resuming %s at dataset position %d (%d samples written)", out, start, file.n_written
        )
    # with --overwrite the old file is replaced when the first batch is written (not before),
    # so a run that fails early leaves it as it was

    def open_new(example: Mapping[str, np.ndarray]) -> FeatureFile:
        return FeatureFile.create(out, layers, example, pooling=how, attrs=attrs)

    device = resolve_device(cfg.device)  # "auto": CUDA when there is one
    dtype = DTYPES[cfg.dtype]
    adapter.to(device, dtype)
    adapter.model.eval()
    writer = AsyncWriter(open_new, file=file)
    loader = BatchLoader(adapter, dataset, start, hi, cfg.batch_size, workers=cfg.workers,
                         pin_memory=device.type == "cuda")  # fmt: skip
    t0 = time.perf_counter()
    finished = False
    try:
        with sigterm_as_keyboard_interrupt(), \
                record(adapter.model, layers, how, available=available, stop_early=cfg.stop_early) as rec, \
                torch.no_grad(), progress_bar(f"extract {out.name}", n_total, start=start - lo, enabled=cfg.progress) as advance:  # fmt: skip
            skipped_changed = True  # the file gets the list with its first batch
            # a file exists, or is queued to be opened, once a batch with samples is submitted;
            # the writer thread sets writer.file only when it gets to that batch
            opened = file is not None
            for batch in loader:
                skipped += batch.skipped
                progress: dict[str, Any] = {schema.NEXT_INDEX: batch.next_index}
                if skipped_changed or batch.skipped:  # rewriting it every batch would be O(n^2)
                    progress[schema.SKIPPED_JSON] = json.dumps(skipped)
                if batch.sample_ids:
                    inputs = to_device(batch.inputs, device, dtype)
                    feats = rec.run(
                        lambda inputs=inputs: adapter.forward(inputs),
                        masks=adapter.token_masks(inputs),
                    )
                    writer.submit(batch.sample_ids, feats, progress)
                    skipped_changed, opened = False, True
                elif opened:
                    writer.submit([], {}, progress)
                    skipped_changed = False
                advance(batch.next_index - lo)
        finished = True
    except KeyboardInterrupt:
        log.warning("interrupted: finishing the batches already computed; continue with --resume")
        raise
    finally:
        writer.close()
        written_file = writer.file
        n_written = written_file.n_written if written_file is not None else 0
        if written_file is not None:
            if finished:
                written_file.mark_complete()
            written_file.close()
    seconds = time.perf_counter() - t0
    if finished and written_file is None:
        raise ValueError(
            f"no sample could be read from {cfg.dataset_name or 'the dataset'}; nothing written"
        )
    if skipped:
        log.warning("%d sample(s) skipped (unreadable images); their ids are in the file's %s",
                    len(skipped), schema.SKIPPED_JSON)  # fmt: skip
    return ExtractResult(
        out, [i.name for i in layers], n_written, n_total, skipped, seconds, finished
    )
