"""Scoring a grid with statistics prepares each layer once: the statistics reuse the states
the grid was scored from (an SVD per layer for SVCCA, a neighbour search for k-NN)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from repalign.compare.scoring import MetricRequest, score_layers
from repalign.metrics import _registry, pair_statistics
from tests.metrics._data import related_pair


@pytest.fixture
def counted(monkeypatch):
    """Every registered metric's ``prepare``, counting calls by (metric, rows, width)."""
    calls: Counter = Counter()
    for name, spec in list(_registry._METRICS.items()):

        def prepare(x, _inner=spec.prepare, _name=name, **options):
            calls[(_name, *x.shape)] += 1
            return _inner(x, **options)

        monkeypatch.setitem(_registry._METRICS, name, dataclasses.replace(spec, prepare=prepare))
    return calls


def _layers(n: int = 60) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    x, y = related_pair(n, 7, 5)
    xs = {"a0": x, "a1": x[:, :6] + 0.1 * y[:, :1]}
    ys = {"b0": y, "b1": torch.cat([y, x[:, :3]], dim=1), "b2": y[:, :4]}  # widths all differ
    return xs, ys


@pytest.mark.parametrize(
    "request_",
    [MetricRequest("cka"), MetricRequest("svcca"), MetricRequest("mutual_knn", {"k": 4})],
)
def test_grid_with_statistics_prepares_each_layer_once(counted, request_):
    xs, ys = _layers()
    (_, score, stats), = score_layers(
        xs, ys, [request_], permutations=4, bootstrap=3, stat_cells=[(0, 0), (1, 2)],
        progress=False,
    )  # fmt: skip
    widths = [t.shape[1] for t in (*xs.values(), *ys.values())]
    # each whole layer once, for the grid and its statistics (svcca's bootstrap prepares
    # its 30-row subsamples: other calls)
    full = {w: counted[(request_.name, 60, w)] for w in widths}
    assert full == dict.fromkeys(widths, 1), full
    assert np.isfinite(stats["pvalue"][0, 0]) and np.isnan(stats["pvalue"][0, 1])


def test_statistics_from_the_grid_states_equal_pair_statistics():
    xs, ys = _layers()
    for req in (MetricRequest("cka"), MetricRequest("svcca"), MetricRequest("cknna", {"k": 4})):
        (_, _, stats), = score_layers(
            xs, ys, [req], permutations=5, bootstrap=4, seed=3, stat_cells=[(1, 1)],
            progress=False,
        )  # fmt: skip
        direct = pair_statistics(
            req.name, {"x": xs["a1"], "y": ys["b1"]}, [("x", "y")], permutations=5, bootstrap=4,
            seed=3, **dict(req.options),
        )[("x", "y")]  # fmt: skip
        for key in ("pvalue", "null_mean", "null_std", "ci_low", "ci_high"):
            assert stats[key][1, 1] == float(direct[key]), (req.name, key)
