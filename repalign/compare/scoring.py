"""Scoring in-memory layers: metric requests, every layer pair of a grid with
:func:`repalign.metrics.pairwise`, depth-matched pairs, and the permutation null and
bootstrap interval of chosen cells (:func:`repalign.metrics.pair_statistics`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from repalign._progress import task_progress
from repalign.store.scores import MetricScores, matched_pairs, metric_label

__all__ = [
    "MetricRequest",
    "ScoringInterrupted",
    "matched_pairs",
    "metric_scores",
    "parse_requests",
    "score_layers",
]


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
    Ctrl-C (or SIGTERM) raises :class:`ScoringInterrupted` with the metrics finished so far.
    """
    from repalign.metrics import get_metric

    specs = [get_metric(m.name) for m in metrics]
    for m, spec in zip(metrics, specs, strict=True):
        spec.check_options(dict(m.options))
    if stat_cells is None:
        stat_cells = [(i, j) for i in range(len(xs)) for j in range(len(xs if ys is None else ys))]
    results: list[tuple[MetricRequest, np.ndarray, dict[str, np.ndarray]]] = []
    try:
        _score_each(xs, ys, metrics, specs, results, stat_cells, progress=progress,
                    permutations=permutations, bootstrap=bootstrap, level=level, seed=seed)  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: hand on what is finished
        raise ScoringInterrupted(results) from None
    return results


class ScoringInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while scoring; ``results`` holds the metrics that finished
    before it, as :func:`score_layers` returns them."""

    def __init__(self, results: list[tuple[MetricRequest, np.ndarray, dict[str, np.ndarray]]]):
        super().__init__(f"interrupted after {len(results)} finished metric(s)")
        self.results = results


def _score_each(
    xs: Mapping[str, torch.Tensor],
    ys: Mapping[str, torch.Tensor] | None,
    metrics: Sequence[MetricRequest],
    specs: Sequence[Any],
    results: list[tuple[MetricRequest, np.ndarray, dict[str, np.ndarray]]],
    stat_cells: Sequence[tuple[int, int]],
    *,
    progress: bool,
    permutations: int,
    bootstrap: int,
    level: float,
    seed: int,
) -> None:
    """Append ``(request, score, stats)`` to ``results`` as each metric finishes."""
    from repalign.metrics.grid import pairwise_prepared

    same = ys is None
    names_x = list(xs)
    names_y = names_x if same else list(ys)
    shape = (len(names_x), len(names_y))
    do_stats = permutations > 0 or bootstrap > 0
    with task_progress(enabled=progress) as bar:
        task = bar.add_task("metrics", total=len(metrics))
        for req, spec in zip(metrics, specs, strict=True):
            bar.update(task, description=f"{req.label}: {shape[0]}x{shape[1]} layer pairs")
            opts = dict(req.options)
            grid, states_x, states_y = pairwise_prepared(
                xs, None if same else ys, metric=req.name, **opts
            )
            score = grid.detach().to("cpu", torch.float64).numpy()
            stats: dict[str, np.ndarray] = {}
            if do_stats:  # the statistics reuse the layers' prepared states
                prepared = {("x", a): s for a, s in zip(names_x, states_x, strict=True)}
                if not same:
                    prepared.update({("y", b): s for b, s in zip(names_y, states_y, strict=True)})
                stats = _cell_stats(
                    req, spec, xs, ys, stat_cells, bar, prepared,
                    permutations=permutations, bootstrap=bootstrap, level=level, seed=seed,
                )  # fmt: skip
            del states_x, states_y
            results.append((req, score, stats))
            bar.advance(task)


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
    prepared: Mapping[tuple[str, str], Any],
    *,
    permutations: int,
    bootstrap: int,
    level: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Permutation null and bootstrap interval of the ``cells`` of the grid, NaN elsewhere.

    All cells share each layer's preparation and each draw's permuted or resampled layer
    states; the same seed for every cell, so all face the same permutations and resamples.
    A symmetric metric scores a cell and its mirror once. ``prepared``: the layers' states
    from scoring the grid, keyed like the layers (``("x", name)``, ``("y", name)``).
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
        req.name, layers, list(pairs.values()), permutations=permutations,
        bootstrap=bootstrap, level=level, seed=seed, on_draw=lambda: bar.advance(task),
        prepared=prepared, **dict(req.options),
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
