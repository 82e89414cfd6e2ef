"""The ``compare`` pipeline: feature files in, score Dataset (with provenance) out.

Steps: open the feature files, check that their ``sample_id``s are the same
stimuli in the same order (refusing anything else unless ``align_on_ids``),
select layers by glob, score every pair with :func:`repalign.metrics.pairwise`
(each layer prepared once), optionally add a permutation null and a bootstrap
interval per pair, and return the score Dataset with its provenance
(:mod:`repalign.store.scores`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr

import repalign
from repalign._numerics import resolve_device
from repalign.compare.layers import Side, align_sample_ids, load_side
from repalign.compare.scoring import (
    MetricRequest,
    ScoringInterrupted,
    matched_pairs,
    metric_scores,
    parse_requests,
    score_layers,
)
from repalign.provenance import library_versions, sha256_file, sha256_ids
from repalign.store.scores import LayerAxis, scores_dataset

log = logging.getLogger(__name__)

StatsPairs = Literal["all", "matched"]


def run_config(
    files: Sequence[Any],
    requests: Sequence[MetricRequest],
    axis_a: LayerAxis,
    axis_b: LayerAxis,
    layers_a: Sequence[str],
    layers_b: Sequence[str] | None,
    **settings: Any,
) -> dict[str, Any]:
    """The ``config`` a score file records: inputs, metrics and layers, then ``settings``."""
    return {
        "files": [str(f) for f in files],
        "metrics": [
            {"name": r.name, "options": dict(r.options), "label": r.label} for r in requests
        ],
        "layers_a": list(layers_a),
        "layers_b": None if layers_b is None else list(layers_b),
        "selected_layers_a": list(axis_a.names),
        "selected_layers_b": list(axis_b.names),
        **settings,
    }


def provenance_attrs(
    files: Sequence[str | os.PathLike[str]],
    model_a: str,
    model_b: str,
    ids: Sequence[str],
    *,
    seed: int,
    config: Mapping[str, Any],
) -> dict[str, str | int | float]:
    """A score file's global attrs: versions, time, data and file hashes, resolved config.

    ``files`` may hold shard globs; every matching file is listed and hashed.
    """
    from repalign.store.paths import expand_paths

    paths = [p for f in files for p in expand_paths(f)]
    return {
        "title": "repalign alignment scores",
        "repalign_version": repalign.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "n_samples": len(ids),
        "sample_ids_sha256": sha256_ids(ids),
        "feature_files": json.dumps([str(p.resolve()) for p in paths]),
        "feature_files_sha256": json.dumps([sha256_file(p) for p in paths]),
        "model_a": model_a,
        "model_b": model_b,
        "config_json": json.dumps(dict(config), default=str),
        "versions_json": json.dumps(library_versions("torch", "numpy", "xarray", "netCDF4", "POT")),
    }


def compare(
    files: Sequence[str | os.PathLike[str]],
    metrics: Sequence[str | tuple[str, Mapping[str, Any]] | MetricRequest],
    *,
    layers_a: Sequence[str] = ("*",),
    layers_b: Sequence[str] | None = None,
    permutations: int = 0,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    device: str | torch.device = "cpu",
    align_on_ids: bool = False,
    allow_incomplete: bool = False,
    stats_pairs: StatsPairs = "all",
    progress: bool = True,
) -> xr.Dataset:
    """Score layers of feature files against each other; return the score Dataset.

    One file: the layers matching ``layers_a`` against those matching
    ``layers_b`` (every selected layer against every other when ``layers_b`` is
    ``None``). Two files: layers of the first against layers of the second
    (``layers_b`` defaults to all). ``stats_pairs="matched"`` restricts the
    permutation and bootstrap statistics to the depth-matched pairs
    (:func:`matched_pairs`), which is much cheaper on large grids.
    """
    if not 1 <= len(files) <= 2:
        raise ValueError(f"compare takes one or two feature files, got {len(files)}")
    if stats_pairs not in ("all", "matched"):
        raise ValueError(
            f"stats_pairs (--stats-pairs) must be 'all' (every layer pair) or 'matched' "
            f"(the depth-matched pairs), got {stats_pairs!r}"
        )
    for name, value in (("permutations", permutations), ("bootstrap", bootstrap)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    requests = parse_requests(metrics)
    dev = resolve_device(device)

    side_a = load_side(files[0], layers_a, allow_incomplete=allow_incomplete)
    if len(files) == 1:
        same = layers_b is None
        side_b = (
            side_a if same else load_side(files[0], layers_b, allow_incomplete=allow_incomplete)
        )
    else:
        same = False
        side_b = load_side(files[1], layers_b or ("*",), allow_incomplete=allow_incomplete)
    idx_a, idx_b = align_sample_ids(
        side_a.sample_ids,
        side_b.sample_ids,
        align_on_ids=align_on_ids,
        names=(str(side_a.path), str(side_b.path)),
    )
    ids = [side_a.sample_ids[i] for i in idx_a]

    def tensors(side: Side, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            k: torch.from_numpy(np.ascontiguousarray(v[idx])).to(dev)
            for k, v in side.arrays.items()
        }

    xs = tensors(side_a, idx_a)
    ys = None if same else tensors(side_b, idx_b)
    log.info(
        "comparing %d x %d layers over %d samples with %s",
        len(xs),
        len(ys or xs),
        len(ids),
        ", ".join(r.label for r in requests),
    )

    def dataset(results: list[tuple[MetricRequest, np.ndarray, dict[str, np.ndarray]]]):
        done = [req for req, _, _ in results]
        scored = [metric_scores(req, score, stats) for req, score, stats in results]
        return _scores(files, done, scored, side_a, side_b, ids, layers_a, layers_b,
                       permutations=permutations, bootstrap=bootstrap, level=level, seed=seed,
                       device=str(dev), align_on_ids=align_on_ids, stats_pairs=stats_pairs)  # fmt: skip

    try:
        results = score_layers(
            xs,
            ys,
            requests,
            permutations=permutations,
            bootstrap=bootstrap,
            level=level,
            seed=seed,
            stat_cells=matched_pairs(side_a.axis, side_b.axis, same=len(files) == 1)
            if stats_pairs == "matched"
            else None,
            progress=progress,
        )
    except ScoringInterrupted as stop:
        finished = dataset(stop.results) if stop.results else None
        remaining = [r.label for r in requests[len(stop.results) :]]
        raise ComparisonInterrupted(finished, remaining) from None
    return dataset(results)


class ComparisonInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during :func:`compare`. ``finished`` is the score Dataset of the
    metrics that completed before it (None if none did): complete for those metrics, to be
    written and later merged with the rest (:func:`repalign.store.scores.open_scores`);
    ``remaining`` lists the labels of the metrics not done."""

    def __init__(self, finished: xr.Dataset | None, remaining: list[str]) -> None:
        super().__init__(f"interrupted; not done: {', '.join(remaining)}")
        self.finished = finished
        self.remaining = remaining


def _scores(
    files: Sequence[str | os.PathLike[str]],
    requests: Sequence[MetricRequest],
    scored: list[Any],
    side_a: Side,
    side_b: Side,
    ids: list[str],
    layers_a: Sequence[str],
    layers_b: Sequence[str] | None,
    **settings: Any,
) -> xr.Dataset:
    """The score Dataset of ``scored`` metrics with the run's config (``settings``: the
    statistics and device options, ``seed`` among them) and provenance."""
    config = run_config(
        [Path(f) for f in files],
        requests,
        side_a.axis,
        side_b.axis,
        layers_a,
        layers_b,
        **settings,
    )
    attrs = provenance_attrs(
        files,
        str(side_a.attrs.get("model", side_a.path.stem)),
        str(side_b.attrs.get("model", side_b.path.stem)),
        ids,
        seed=settings["seed"],
        config=config,
    )
    return scores_dataset(side_a.axis, side_b.axis, scored, attrs)
