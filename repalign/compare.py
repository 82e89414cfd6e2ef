"""Compare feature files: every selected layer of A against every selected layer of B.

This is the library behind ``repalign compare``::

    from repalign.compare import compare
    scores = compare(["vilbert.nc"], ["cka", ("cka", {"unbiased": True}), "mutual_knn"],
                     layers_a=["text.*"], layers_b=["vision.*"], permutations=200)

Steps: open the feature files, check that their ``sample_id``s are the same
stimuli in the same order (refusing anything else unless ``align_on_ids``),
select layers by glob, score every pair with :func:`repalign.metrics.pairwise`
(each layer prepared once), optionally add a permutation null and a bootstrap
interval per pair, and return the score Dataset with its provenance
(:mod:`repalign.store.scores`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from rich.progress import Progress

import repalign
from repalign._numerics import resolve_device
from repalign._progress import task_progress
from repalign.provenance import library_versions, sha256_file, sha256_ids
from repalign.store.schema import SAMPLE_ID, SHARD
from repalign.store.scores import LayerAxis, MetricScores, metric_label, scores_dataset

log = logging.getLogger(__name__)

StatsPairs = Literal["all", "matched"]


@dataclass(frozen=True)
class MetricRequest:
    """One metric to run, with its keyword options (``cka`` with ``unbiased=True`` ...)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return metric_label(self.name, self.options)

    @classmethod
    def parse(cls, item: str | tuple[str, Mapping[str, Any]] | MetricRequest) -> MetricRequest:
        """Accept ``"cka"``, ``("cka", {"unbiased": True})`` or a :class:`MetricRequest`."""
        if isinstance(item, MetricRequest):
            return item
        if isinstance(item, str):
            return cls(item)
        name, options = item
        return cls(name, dict(options))


@dataclass
class Side:
    """Selected layers of one feature file, as ``(n, d)`` float32 arrays in sample order."""

    path: Path
    axis: LayerAxis
    arrays: dict[str, np.ndarray]
    sample_ids: list[str]
    attrs: dict[str, Any]


# ---------------------------------------------------------------- loading & checks


def select_layers(available: Sequence[str], patterns: Sequence[str], *, where: str) -> list[str]:
    """Layers of ``available`` matching any of ``patterns``, in file order.

    A pattern is a glob (``text.*``, ``*.layer.1?``), an exact name, or a regular
    expression prefixed ``re:``. A pattern that matches nothing is an error that
    lists what is there.
    """
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as exc:
                raise ValueError(f"layer pattern {pattern!r} is not a valid regex: {exc}") from None
            hits = {name for name in available if rx.fullmatch(name)}
        else:
            hits = {name for name in available if fnmatch.fnmatchcase(name, pattern)}
        if not hits:
            raise ValueError(
                f"layer pattern {pattern!r} matches no layer of {where}; it has: "
                f"{', '.join(available)} (globs like 'text.*' or 're:text\\.layer\\.\\d+')"
            )
        chosen |= hits
    return [name for name in available if name in chosen]


def _layer_variables(ds: xr.Dataset) -> list[str]:
    return [str(name) for name, var in ds.data_vars.items() if "sample" in var.dims]


def load_side(
    path: str | os.PathLike[str],
    patterns: Sequence[str],
    *,
    allow_incomplete: bool = False,
) -> Side:
    """Open a feature file and read the layers matching ``patterns`` into memory."""
    from repalign.store.features import open_features

    path = Path(path)
    ds = open_features(path, require_complete=not allow_incomplete)
    try:
        axis = describe_layers(ds, patterns, where=str(path))
        arrays = {name: np.asarray(ds[name].values, dtype=np.float32) for name in axis.names}
        ids = [str(s) for s in ds[SAMPLE_ID].values]
        attrs = dict(ds.attrs)
    finally:
        ds.close()
    return Side(path, axis, arrays, ids, attrs)


def describe_layers(ds: xr.Dataset, patterns: Sequence[str], *, where: str) -> LayerAxis:
    """The layers of an open feature file matching ``patterns``, with their streams and
    relative depths; unpooled layers (one vector per token) are refused."""
    shard = str(ds.attrs.get(SHARD, ""))
    if shard:
        log.warning(
            "%s is shard %s of a sharded extraction: it holds only that part of the samples; "
            "pass all shards (a glob such as 'feats.shard*.nc') or `repalign merge` them first",
            where,
            shard,
        )
    names = select_layers(_layer_variables(ds), patterns, where=where)
    for name in names:
        if ds[name].ndim != 2:
            raise ValueError(
                f"layer {name!r} of {where} has dims {ds[name].dims} (unpooled tokens); compare "
                "needs one vector per sample: extract with --pool mean or cls"
            )
    streams = tuple(str(ds[name].attrs.get("stream", "unknown")) for name in names)
    depths = tuple(_relative_depth(ds[name].attrs, i, len(names)) for i, name in enumerate(names))
    return LayerAxis(tuple(names), streams, depths)


def _relative_depth(attrs: Mapping[str, Any], index: int, count: int) -> float:
    if "relative_depth" in attrs:
        return float(attrs["relative_depth"])
    # files without the attr: spread the selected layers evenly over [0, 1]
    return index / (count - 1) if count > 1 else 0.0


def align_sample_ids(
    ids_a: Sequence[str],
    ids_b: Sequence[str],
    *,
    align_on_ids: bool,
    names: tuple[str, str] = ("A", "B"),
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into A and B that put the same stimuli on the same row.

    Identical id lists give the identity. Anything else (reordered ids, or
    different samples) is refused unless ``align_on_ids``: then B is reordered to
    A's order and, if the sets differ, both are cut to the ids they share.
    """
    for ids, name in ((ids_a, names[0]), (ids_b, names[1])):
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if list(ids).count(i) > 1)
            raise ValueError(f"{name} lists sample id {dup!r} more than once; ids must be unique")
    if list(ids_a) == list(ids_b):
        idx = np.arange(len(ids_a))
        return idx, idx
    set_a, set_b = set(ids_a), set(ids_b)
    fix = "pass --align-on-ids (align_on_ids=True) to match rows by sample id explicitly"
    if not align_on_ids:
        if set_a == set_b:
            pos = next(i for i, (a, b) in enumerate(zip(ids_a, ids_b, strict=True)) if a != b)
            raise ValueError(
                f"{names[1]} holds the same {len(ids_a)} samples as {names[0]} but in a different "
                f"order (first difference at row {pos}: {ids_a[pos]!r} vs {ids_b[pos]!r}); "
                f"comparing row by row would silently misalign them and look like low "
                f"alignment. Extract both from the same data in the same order, or {fix}"
            )
        only_a, only_b = sorted(set_a - set_b), sorted(set_b - set_a)
        raise ValueError(
            f"{names[0]} and {names[1]} hold different samples ({len(ids_a)} vs {len(ids_b)} "
            f"ids; {len(only_a)} only in {names[0]}, e.g. {only_a[:3]}; {len(only_b)} only in "
            f"{names[1]}, e.g. {only_b[:3]}). Extract both from the same data, or {fix} "
            "(it keeps the shared ids)"
        )
    where_b = {s: i for i, s in enumerate(ids_b)}
    keep = [i for i, s in enumerate(ids_a) if s in where_b]
    if not keep:
        raise ValueError(f"{names[0]} and {names[1]} share no sample id; nothing to compare")
    if len(keep) < len(ids_a) or len(keep) < len(ids_b):
        log.warning(
            "aligning on ids: keeping the %d shared samples (%s had %d, %s had %d)",
            len(keep),
            names[0],
            len(ids_a),
            names[1],
            len(ids_b),
        )
    idx_a = np.asarray(keep)
    idx_b = np.asarray([where_b[ids_a[i]] for i in keep])
    return idx_a, idx_b


# ---------------------------------------------------------------- scoring


def matched_pairs(
    axis_a: LayerAxis, axis_b: LayerAxis, same: bool = False
) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` matching each layer of A to the layer of B at the nearest relative depth.

    Matching happens separately for every stream of B (a text layer is matched to
    its nearest vision layer and to its nearest fused layer). With ``same`` (both
    axes from one file) a layer is never matched with itself. These are the pairs
    a depth profile plots.
    """
    pairs = []
    for i, (name_a, depth_a) in enumerate(zip(axis_a.names, axis_a.depths, strict=True)):
        for stream in dict.fromkeys(axis_b.streams):
            candidates = [
                j
                for j, (name_b, s) in enumerate(zip(axis_b.names, axis_b.streams, strict=True))
                if s == stream and not (same and name_b == name_a)
            ]
            if candidates:
                pairs.append((i, min(candidates, key=lambda j: abs(axis_b.depths[j] - depth_a))))
    return pairs


def score_layers(
    xs: Mapping[str, torch.Tensor],
    ys: Mapping[str, torch.Tensor] | None,
    metrics: Sequence[MetricRequest],
    *,
    permutations: int = 0,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    stat_cells: Sequence[tuple[int, int]] | None = None,
    progress: bool = True,
) -> list[tuple[MetricRequest, np.ndarray, dict[str, np.ndarray]]]:
    """Score every layer of ``xs`` against every layer of ``ys`` (``xs`` itself if ``None``).

    ``permutations`` > 0 adds ``pvalue``, ``null_mean``, ``null_std`` per pair,
    ``bootstrap`` > 0 adds ``ci_low``/``ci_high`` at ``level`` (from
    :func:`repalign.metrics.bootstrap_ci`: a percentile interval, or a subsampling one for
    metrics that duplicated samples bias). Statistics are computed for the ``(i, j)`` cells in
    ``stat_cells`` (all cells when ``None``), NaN elsewhere.
    Returns ``(request, score, stats)`` per metric, arrays ``(len(xs), len(ys))``.
    """
    from repalign.metrics import get_metric, pairwise

    specs = [get_metric(m.name) for m in metrics]
    for m, spec in zip(metrics, specs, strict=True):
        spec.check_options(dict(m.options))
    same = ys is None
    names_x = list(xs)
    names_y = names_x if same else list(ys)
    shape = (len(names_x), len(names_y))
    if stat_cells is None:
        stat_cells = [(i, j) for i in range(shape[0]) for j in range(shape[1])]
    do_stats = permutations > 0 or bootstrap > 0
    results = []
    with task_progress(enabled=progress) as bar:
        task = bar.add_task("metrics", total=len(metrics))
        for req, spec in zip(metrics, specs, strict=True):
            bar.update(task, description=f"{req.label}: {shape[0]}x{shape[1]} layer pairs")
            opts = dict(req.options)
            grid = pairwise(xs, None if same else ys, metric=req.name, **opts)
            score = grid.detach().to("cpu", torch.float64).numpy()
            stats: dict[str, np.ndarray] = {}
            if do_stats:
                stats = _cell_stats(
                    req, spec, xs, ys, stat_cells, bar,
                    permutations=permutations, bootstrap=bootstrap, level=level, seed=seed,
                )  # fmt: skip
            results.append((req, score, stats))
            bar.advance(task)
    return results


def _stat_keys(permutations: int, bootstrap: int) -> list[str]:
    return (["pvalue", "null_mean", "null_std"] if permutations else []) + (
        ["ci_low", "ci_high"] if bootstrap else []
    )


def _cell_stats(
    req: MetricRequest,
    spec: Any,
    xs: Mapping[str, torch.Tensor],
    ys: Mapping[str, torch.Tensor] | None,
    cells: Sequence[tuple[int, int]],
    bar: Progress,
    *,
    permutations: int,
    bootstrap: int,
    level: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Permutation null and bootstrap interval of the ``cells`` of the grid, NaN elsewhere.

    All cells share each layer's preparation and each draw's permuted or resampled layer
    states; the same seed for every cell, so all face the same permutations and resamples.
    A symmetric metric scores a cell and its mirror once.
    """
    from repalign.metrics import pair_statistics

    same = ys is None
    names_x, names_y = list(xs), list(xs if same else ys)
    layers = {("x", a): t for a, t in xs.items()}
    side_y = "x" if same else "y"
    if not same:
        layers.update({("y", b): t for b, t in ys.items()})
    pairs: dict[tuple[int, int], tuple[tuple[str, str], tuple[str, str]]] = {}
    for i, j in cells:
        key = (i, j)
        if same and spec.symmetric and (j, i) in pairs:
            key = (j, i)
        pairs.setdefault(key, (("x", names_x[key[0]]), (side_y, names_y[key[1]])))
    task = bar.add_task(f"  {req.label} statistics", total=permutations + bootstrap)
    out = pair_statistics(
        req.name, layers, list(pairs.values()), permutations=permutations, bootstrap=bootstrap,
        level=level, seed=seed, on_draw=lambda: bar.advance(task), **dict(req.options),
    )  # fmt: skip
    bar.remove_task(task)
    shape = (len(names_x), len(names_y))
    stats = {k: np.full(shape, np.nan) for k in _stat_keys(permutations, bootstrap)}
    for i, j in cells:
        key = (j, i) if same and spec.symmetric and (j, i) in pairs else (i, j)
        result = out[pairs[key]]
        for k in stats:
            stats[k][i, j] = float(result[k])
    return stats


# ---------------------------------------------------------------- the pipeline


def parse_requests(
    metrics: Sequence[str | tuple[str, Mapping[str, Any]] | MetricRequest],
) -> list[MetricRequest]:
    """The requested metrics, checked before any file is read: at least one, no label
    twice, every name and option known to the registry."""
    from repalign.metrics import get_metric

    requests = [MetricRequest.parse(m) for m in metrics]
    if not requests:
        raise ValueError("no metric given; pass at least one (e.g. --metric cka)")
    labels = [r.label for r in requests]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the same metric with the same options is listed twice: {labels}")
    for r in requests:
        get_metric(r.name).check_options(dict(r.options))
    return requests


def metric_scores(
    req: MetricRequest, score: np.ndarray, stats: dict[str, np.ndarray] | None = None
) -> MetricScores:
    """The score-file entry of one requested metric: its grid of scores and statistics."""
    from repalign.metrics import get_metric

    spec = get_metric(req.name)
    return MetricScores(
        label=req.label,
        name=req.name,
        params=dict(req.options),
        bounds=(float(spec.bounds[0]), float(spec.bounds[1])),
        higher_is_more_similar=spec.higher_is_more_similar,
        score=score,
        stats=dict(stats or {}),
    )


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
        raise ValueError(f"stats_pairs must be 'all' or 'matched', got {stats_pairs!r}")
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
    scored = [metric_scores(req, score, stats) for req, score, stats in results]
    config = run_config(
        [Path(f) for f in files],
        requests,
        side_a.axis,
        side_b.axis,
        layers_a,
        layers_b,
        permutations=permutations,
        bootstrap=bootstrap,
        level=level,
        seed=seed,
        device=str(dev),
        align_on_ids=align_on_ids,
        stats_pairs=stats_pairs,
    )
    attrs = provenance_attrs(
        files,
        str(side_a.attrs.get("model", side_a.path.stem)),
        str(side_b.attrs.get("model", side_b.path.stem)),
        ids,
        seed=seed,
        config=config,
    )
    return scores_dataset(side_a.axis, side_b.axis, scored, attrs)
