"""Reading the layers of feature files for comparison: pattern selection, streams and
depths, and the check that two files hold the same stimuli in the same order."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from repalign._patterns import select
from repalign.store.schema import SAMPLE_ID, SHARD
from repalign.store.scores import LayerAxis

log = logging.getLogger(__name__)


@dataclass
class Side:
    """Selected layers of one feature file, as ``(n, d)`` float32 arrays in sample order."""

    path: Path
    axis: LayerAxis
    arrays: dict[str, np.ndarray]
    sample_ids: list[str]
    attrs: dict[str, Any]


def select_layers(available: Sequence[str], patterns: Sequence[str], *, where: str) -> list[str]:
    """Layers of ``available`` matching any of ``patterns``, in file order.

    A pattern is a glob (``text.*``, ``*.layer.1?``), an exact name, or a regular
    expression prefixed ``re:``. A pattern that matches nothing is an error that
    names the closest layers.
    """
    return select(available, patterns, where=where, listing="`repalign info FILE` lists them all")


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
