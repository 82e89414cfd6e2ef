"""Score files: ``score(metric, layer_a, layer_b)`` as an xarray Dataset stored in netCDF.

Layout (names from :mod:`repalign.store.schema`)::

    dims       metric, layer_a, layer_b
    coords     metric (label, e.g. "cka" or "cka[unbiased=true]")
               metric_name, metric_params (JSON), bound_low, bound_high,
               higher_is_more_similar (0/1)                      along metric
               layer_a, stream_a, depth_a (relative depth)       along layer_a
               layer_b, stream_b, depth_b                        along layer_b
    data vars  score, and optionally pvalue, null_mean, null_std, ci_low, ci_high
               (NaN where a statistic was not computed for that metric)
    attrs      provenance: title, repalign_version, created, seed, n_samples,
               sample_ids_sha256, feature_files (JSON), feature_files_sha256 (JSON),
               model_a, model_b, config_json, versions_json; a merge of several
               runs adds runs_json (every run's attrs)

Only strings and numbers are stored (no pickles), so any netCDF reader opens
the file; ``open_scores(path).sel(metric="cka").score.plot()`` works in a notebook.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from repalign.store.outputs import SCORES, check_output_file
from repalign.store.paths import atomic_path, expand_paths
from repalign.store.schema import LAYER_A, LAYER_B, METRIC_DIM, STAT_VARS

log = logging.getLogger(__name__)

SCORE_DIMS = (METRIC_DIM, LAYER_A, LAYER_B)


def holds_scores(ds: xr.Dataset) -> bool:
    """Whether ``ds`` is a score Dataset: a ``score`` over (metric, layer_a, layer_b)."""
    return "score" in ds.variables and set(ds["score"].dims) == set(SCORE_DIMS)


@dataclass(frozen=True)
class LayerAxis:
    """One side of the grid: layer names with their stream and relative depth."""

    names: tuple[str, ...]
    streams: tuple[str, ...]
    depths: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.streams) == len(self.depths)):
            raise ValueError(
                f"layer axis lengths differ: {len(self.names)} names, "
                f"{len(self.streams)} streams, {len(self.depths)} depths"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"layer names must be unique, got {list(self.names)}")


@dataclass
class MetricScores:
    """Scores of one metric (with one set of options) over the grid.

    ``score`` and every statistic are ``(len(layers_a), len(layers_b))`` arrays;
    a statistic that was not computed is ``None`` (stored as NaN).
    """

    label: str
    name: str
    params: Mapping[str, Any]
    bounds: tuple[float, float]
    higher_is_more_similar: bool
    score: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)


def layer_axis(ds: xr.Dataset, side: str) -> LayerAxis:
    """The ``"a"`` or ``"b"`` layer axis of a score Dataset."""
    return LayerAxis(
        tuple(str(v) for v in ds[f"layer_{side}"].values),
        tuple(str(v) for v in ds[f"stream_{side}"].values),
        tuple(float(v) for v in ds[f"depth_{side}"].values),
    )


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


def from_one_file(ds: xr.Dataset) -> bool:
    """Whether both layer axes of ``ds`` come from one feature file.

    Then a name on both axes is one layer (a pair of it with itself is trivial);
    with two files, equal names are two models' counterparts. The inputs given to
    ``compare`` (``files`` in ``config_json``) decide: one glob of shard files is
    one input although ``feature_files`` lists every shard.
    """
    config = ds.attrs.get("config_json")
    if isinstance(config, str) and config:
        inputs = json.loads(config).get("files")
        if isinstance(inputs, list) and inputs:
            return len(inputs) == 1
    files = ds.attrs.get("feature_files")
    if isinstance(files, str) and files:
        return len(json.loads(files)) == 1
    return [str(v) for v in ds.layer_a.values] == [str(v) for v in ds.layer_b.values]


def metric_label(name: str, params: Mapping[str, Any]) -> str:
    """Coordinate label of a metric run: its name, plus any options in brackets.

    ``metric_label("cka", {})`` is ``"cka"``; ``metric_label("cka", {"unbiased": True})``
    is ``"cka[unbiased=true]"``, so both can live in one file.
    """
    if not params:
        return name
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items()))
    return f"{name}[{inner}]"


def scores_dataset(
    layers_a: LayerAxis,
    layers_b: LayerAxis,
    metrics: Sequence[MetricScores],
    attrs: Mapping[str, str | int | float] | None = None,
) -> xr.Dataset:
    """Assemble the score Dataset from per-metric grids and provenance ``attrs``."""
    if not metrics:
        raise ValueError("no metrics to store; pass at least one MetricScores")
    labels = [m.label for m in metrics]
    if len(set(labels)) != len(labels):
        raise ValueError(f"metric labels must be unique, got {labels}")
    shape = (len(layers_a.names), len(layers_b.names))
    for m in metrics:
        for key, arr in [("score", m.score), *m.stats.items()]:
            if np.shape(arr) != shape:
                raise ValueError(
                    f"{m.label}: {key} has shape {np.shape(arr)}, expected {shape} "
                    "(layers_a x layers_b)"
                )
        unknown = set(m.stats) - set(STAT_VARS)
        if unknown:
            raise ValueError(f"{m.label}: unknown statistics {sorted(unknown)}; use {STAT_VARS}")

    def stack(key: str) -> np.ndarray:
        return np.stack(
            [
                np.asarray(m.score if key == "score" else m.stats.get(key, np.nan), dtype=float)
                * np.ones(shape)
                for m in metrics
            ]
        )

    present = [k for k in STAT_VARS if any(k in m.stats for m in metrics)]
    data_vars = {key: (SCORE_DIMS, stack(key)) for key in ("score", *present)}
    coords = {
        METRIC_DIM: np.array(labels, dtype=str),
        "metric_name": (METRIC_DIM, np.array([m.name for m in metrics], dtype=str)),
        "metric_params": (
            METRIC_DIM,
            np.array([json.dumps(dict(m.params), sort_keys=True) for m in metrics], dtype=str),
        ),
        "bound_low": (METRIC_DIM, np.array([m.bounds[0] for m in metrics], dtype=float)),
        "bound_high": (METRIC_DIM, np.array([m.bounds[1] for m in metrics], dtype=float)),
        "higher_is_more_similar": (
            METRIC_DIM,
            np.array([int(m.higher_is_more_similar) for m in metrics], dtype=np.int8),
        ),
        LAYER_A: np.array(layers_a.names, dtype=str),
        "stream_a": (LAYER_A, np.array(layers_a.streams, dtype=str)),
        "depth_a": (LAYER_A, np.array(layers_a.depths, dtype=float)),
        LAYER_B: np.array(layers_b.names, dtype=str),
        "stream_b": (LAYER_B, np.array(layers_b.streams, dtype=str)),
        "depth_b": (LAYER_B, np.array(layers_b.depths, dtype=float)),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))
    ds["score"].attrs["long_name"] = "alignment score"
    for key, text in {
        "pvalue": "permutation p-value (Phipson & Smyth 2010)",
        "null_mean": "mean of the permutation null",
        "null_std": "standard deviation of the permutation null",
        "ci_low": "bootstrap percentile interval, lower end",
        "ci_high": "bootstrap percentile interval, upper end",
    }.items():
        if key in ds:
            ds[key].attrs["long_name"] = text
    _check_attrs(ds.attrs)
    return ds


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        if not isinstance(value, (str, int, float, np.integer, np.floating)) or isinstance(
            value, bool
        ):
            raise TypeError(
                f"attribute {key!r} is a {type(value).__name__}; netCDF attributes hold only "
                "strings and numbers (encode structures as JSON)"
            )


def write_scores(ds: xr.Dataset, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``ds`` to netCDF4 at ``path`` atomically (a temporary file, then a rename).

    ``path`` is checked first (:func:`repalign.store.outputs.check_output_file`): a
    netCDF name (``.nc``) in an existing folder, never one of the feature files the
    scores were computed from (``feature_files`` in the attrs), and an existing file
    replaced only with ``overwrite=True``. An interrupted write never leaves a
    truncated score file behind.
    """
    path = check_output_file(path, SCORES, overwrite=overwrite, inputs=_feature_files(ds.attrs),
                             inputs_are="one of the feature files the scores come from")  # fmt: skip
    _check_attrs(ds.attrs)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
    log.info("wrote scores to %s", path)
    return path


def _feature_files(attrs: Mapping[str, Any]) -> list[str]:
    """The feature files a score Dataset was computed from: its ``feature_files`` and,
    for a merge of runs, every run's (JSON lists in the attrs; anything else is ignored)."""
    runs = attrs.get("runs_json")
    runs = json.loads(runs) if isinstance(runs, str) and runs else []
    files: list[str] = []
    for a in [attrs, *(r for r in runs if isinstance(r, dict))]:
        value = a.get("feature_files")
        listed = json.loads(value) if isinstance(value, str) and value.startswith("[") else []
        files += [f for f in listed if isinstance(f, str)]
    return files


def _expand(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    out = expand_paths(paths, what="score")
    for p in out:
        if p.is_dir():
            raise ValueError(f"{p} is a directory, not a score file (.nc from `repalign compare`)")
        if not p.is_file():
            raise FileNotFoundError(
                f"score file {p} does not exist; write it with `repalign compare`"
            )
    return out


def _load_one(path: Path) -> xr.Dataset:
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds = ds.load()
    except OSError as exc:  # netCDF4 reports a foreign or damaged file as OSError
        raise ValueError(
            f"{path} is not a readable netCDF score file ({exc.strerror or exc}); "
            "score files are written by `repalign compare --out NAME.nc`"
        ) from None
    if not holds_scores(ds):
        raise ValueError(
            f"{path} is not a repalign score file: it needs a variable 'score' over "
            f"{SCORE_DIMS}; feature files go to `repalign compare`, not `repalign plot`"
        )
    return ds


def open_scores(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> xr.Dataset:
    """Open one score file, or merge several (a list or a glob) into one Dataset.

    The data are loaded into memory and the file is closed, so it can be
    overwritten afterwards.
    """
    files = _expand(paths)
    datasets = [_load_one(p) for p in files]
    return datasets[0] if len(datasets) == 1 else merge_scores(datasets)


def merge_scores(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """Merge score Datasets from several compare runs into one.

    Metrics and layers are outer-joined (missing cells are NaN); a cell present
    in two runs must hold the same value, otherwise xarray raises a
    ``MergeError``. The provenance of every run is kept as a JSON list in the
    ``runs_json`` attribute; the other attributes are those of the first run.
    """
    if not datasets:
        raise ValueError("nothing to merge")
    names = [str(ds.encoding.get("source", f"dataset {i}")) for i, ds in enumerate(datasets)]
    _check_same_data(datasets, names)
    runs: list[dict[str, Any]] = []
    for ds in datasets:
        runs.extend(json.loads(ds.attrs["runs_json"]) if "runs_json" in ds.attrs else [ds.attrs])
    try:
        merged = xr.merge(
            [ds.drop_attrs() if hasattr(ds, "drop_attrs") else _no_attrs(ds) for ds in datasets],
            join="outer",
            compat="no_conflicts",
            combine_attrs="drop",
        )
    except xr.MergeError as exc:
        found = re.search(r"variable '([^']+)'", str(exc))
        var = found.group(1) if found else "a variable"
        raise xr.MergeError(
            f"the score files {names} hold different values of {var!r} for the same metric "
            "label and layer pair (another seed, options or feature file?); plot them "
            "separately, or leave one of them out"
        ) from None
    for var in merged.variables.values():
        # the first file's on-disk encoding (e.g. a '<U3' string width for its labels) would
        # truncate the other runs' longer labels when the merge is written
        var.encoding = {}
    merged.attrs = dict(datasets[0].attrs)
    merged.attrs.pop("runs_json", None)
    merged.attrs["runs_json"] = json.dumps([dict(r) for r in runs], default=_jsonable)
    for var in merged.data_vars:
        for ds in datasets:
            if var in ds:
                merged[var].attrs = dict(ds[var].attrs)
                break
    return merged


#: global attrs that must agree for runs to share one grid: the samples and the two models
_SAME_DATA_ATTRS = ("sample_ids_sha256", "model_a", "model_b")


def _check_same_data(datasets: Sequence[xr.Dataset], names: Sequence[str]) -> None:
    """Refuse runs over other samples or models: the merged file keeps one set of
    attrs, so its ``n_samples`` and model names would be wrong for some cells."""
    for key in _SAME_DATA_ATTRS:
        values = {str(ds.attrs[key]) for ds in datasets if key in ds.attrs}
        if len(values) > 1:
            what = "different samples" if key == "sample_ids_sha256" else "different models"
            found = {n: ds.attrs.get(key) for n, ds in zip(names, datasets, strict=True)}
            raise ValueError(
                f"cannot merge score files over {what} ({key}: {found}); merging is for runs "
                "over the same feature files (more metrics or layers): plot them separately"
            )


def _no_attrs(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = {}
    return ds


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
