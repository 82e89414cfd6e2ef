"""Shard files of one sharded extraction, seen as one feature file.

A sharded extraction (``--shard K/N``, or one process per rank under
``torchrun``) writes N files, shard K holding a contiguous slice of the
samples. :func:`open_merged` presents them as a single ``xarray.Dataset`` in the
order of an unsharded run, **lazily**: a layer variable is a view over the
shards' netCDF variables and reading rows ``[i:j]`` touches only the shards
that hold them, so a merged dataset larger than memory can be read chunk by
chunk (:mod:`repalign.compare.streaming` does). :func:`write_merged` writes the
same thing to one file, a bounded number of samples at a time, in the layout
:class:`repalign.store.features.FeatureFile` writes.

Checks before anything is read: every shard ``0..N-1`` exactly once, each
complete, all from one extraction (same model, checkpoint, dataset, pooling,
dtype and layers), and no sample id in two shards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from repalign._progress import progress_bar
from repalign.store import schema
from repalign.store.outputs import FEATURES, check_output_file
from repalign.store.paths import PathsLike, atomic_path, expand_paths

log = logging.getLogger(__name__)

#: global attrs that must agree between the shards of one extraction
SAME_IN_EVERY_SHARD = ("model", "checkpoint_sha256", "dataset", "pooling", "compute_dtype")
_FILL = np.float32(np.nan)


def shard_index(attrs: dict[str, Any], path: Path) -> tuple[int, int]:
    """``(K, N)`` from a shard file's ``shard`` attr ``"K/N"``."""
    spec = str(attrs.get(schema.SHARD, ""))
    try:
        return schema.parse_shard(spec)
    except ValueError:
        raise ValueError(
            f"{path} is not a shard file (its {schema.SHARD!r} attr is {spec!r}, not K/N); "
            "only the files of one `repalign extract --shard K/N` (or torchrun) run can be merged"
        ) from None


def _ordered_shards(paths: Sequence[Path]) -> list[tuple[Path, xr.Dataset]]:
    """Open every shard (complete ones only), check they form one extraction, sort by K."""
    from repalign.store.features import open_features

    opened: dict[int, tuple[Path, xr.Dataset]] = {}
    totals: set[int] = set()
    try:
        for path in paths:
            ds = open_features(path, require_complete=True)
            k, n = shard_index(ds.attrs, path)
            if totals and n not in totals:
                ds.close()
                first = next(iter(opened.values()))[0]
                raise ValueError(
                    f"{path} is shard {k}/{n} but {first} is one of {next(iter(totals))} shards: "
                    "they come from different extractions; merge the files of one run only"
                )
            if k in opened:
                ds.close()
                raise ValueError(f"shard {k}/{n} given twice: {opened[k][0]} and {path}")
            opened[k] = (path, ds)
            totals.add(n)
        if len(totals) != 1 or sorted(opened) != list(range(next(iter(totals)))):
            raise ValueError(
                f"need every shard 0..N-1 of one extraction exactly once; got shards "
                f"{sorted(opened)} of N = {sorted(totals)}"
            )
        parts = [opened[k] for k in sorted(opened)]
        _check_same_extraction(parts)
    except BaseException:
        for _, ds in opened.values():
            ds.close()
        raise
    return parts


def _check_same_extraction(parts: Sequence[tuple[Path, xr.Dataset]]) -> None:
    path0, first = parts[0]
    for path, ds in parts[1:]:
        diffs = [
            f"{k} ({ds.attrs.get(k)!r} vs {first.attrs.get(k)!r})"
            for k in SAME_IN_EVERY_SHARD
            if str(ds.attrs.get(k)) != str(first.attrs.get(k))
        ]
        if list(ds.data_vars) != list(first.data_vars):
            diffs.append(f"layers ({list(ds.data_vars)} vs {list(first.data_vars)})")
        else:
            diffs += [
                f"width of {name}"
                for name in ds.data_vars
                if ds[name].shape[-1] != first[name].shape[-1] or ds[name].ndim != first[name].ndim
            ]
        if diffs:
            raise ValueError(
                f"{path} is not from the same extraction as {path0}: it differs in "
                + "; ".join(diffs)
            )


class _ConcatRows(BackendArray):
    """Lazy concatenation along dim 0 of the same variable in every shard.

    Only the shards holding the requested rows are read; token dims shorter than
    the longest shard's are NaN-padded (as an unsharded file pads short samples).
    """

    def __init__(self, parts: Sequence[xr.DataArray], shape: tuple[int, ...]) -> None:
        self.parts = list(parts)
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.offsets = np.cumsum([0] + [p.shape[0] for p in parts])

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        n, first = self.shape[0], key[0]
        if isinstance(first, slice):  # no n-long index array per read
            rows = np.arange(*first.indices(n))
        else:
            rows = np.asarray(first, dtype=np.int64)
            rows = np.where(rows < 0, rows + n, rows)
        scalar_row = rows.ndim == 0
        rows = np.atleast_1d(rows)
        full = np.full((len(rows), *self.shape[1:]), _FILL, dtype=np.float32)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(which):
            sel = np.nonzero(which == p)[0]
            local = rows[sel] - self.offsets[p]
            lo, hi = int(local.min()), int(local.max()) + 1
            block = self.parts[p][lo:hi].values  # one contiguous read per shard
            region = (sel, *(slice(0, s) for s in block.shape[1:]))
            full[region] = block[local - lo]
        axis = 1  # outer indexing: apply the other dims' keys one at a time
        for k in key[1:]:
            full = full[(slice(None),) * axis + (k,)]
            axis += 0 if np.ndim(k) == 0 and not isinstance(k, slice) else 1
        return full[0] if scalar_row else full


def open_merged(paths: PathsLike) -> xr.Dataset:
    """Open the shard files of one sharded extraction as one lazy feature Dataset.

    ``paths``: the shard files in any order, or a glob pattern. The result is
    indexed like :func:`repalign.store.features.open_features`' (``sample`` dim,
    ``sample_id`` coord, one variable per layer with its attrs) and its global
    attrs are those of an unsharded run (``shard`` empty, progress attrs summed).
    Closing it closes the shard files.
    """
    return _merge_opened(_ordered_shards(expand_paths(paths)))


def _merge_opened(parts: Sequence[tuple[Path, xr.Dataset]]) -> xr.Dataset:
    """:func:`open_merged` of shards already opened and ordered by :func:`_ordered_shards`."""
    datasets = [ds for _, ds in parts]
    try:
        ids = np.concatenate([ds[schema.SAMPLE_ID].values.astype(str) for ds in datasets])
        if len(set(ids.tolist())) != len(ids):
            raise ValueError(
                "the shards share sample ids; they are not the shards of one extraction"
            )
        first = datasets[0]
        variables = {}
        for name in first.data_vars:
            arrays = [ds[name] for ds in datasets]
            shape = (len(ids), *(max(a.shape[i] for a in arrays) for i in range(1, arrays[0].ndim)))
            lazy = indexing.LazilyIndexedArray(_ConcatRows(arrays, shape))
            variables[name] = xr.Variable(first[name].dims, lazy, attrs=dict(first[name].attrs))
        id_attrs = dict(first[schema.SAMPLE_ID].attrs)
        merged = xr.Dataset(
            variables, coords={schema.SAMPLE_ID: (schema.SAMPLE_DIM, ids, id_attrs)}
        )
        merged.attrs = merged_attrs(datasets)
    except BaseException:
        for ds in datasets:
            ds.close()
        raise

    def close() -> None:
        for ds in datasets:
            ds.close()

    merged.set_close(close)
    return merged


def merged_attrs(datasets: Sequence[xr.Dataset]) -> dict[str, Any]:
    """Global attrs of the merge: shard 0's, with the progress attrs of the whole run."""
    skipped: list[list[str]] = []  # first-seen order, no duplicates
    seen: set[tuple[str, ...]] = set()  # the same entries, for O(1) membership
    for ds in datasets:
        for entry in json.loads(ds.attrs.get(schema.SKIPPED_JSON, "[]")):
            key = tuple(entry)
            if key not in seen:
                seen.add(key)
                skipped.append(entry)
    attrs = dict(datasets[0].attrs)
    attrs.update({
        schema.SHARD: "",
        schema.N_WRITTEN: sum(ds.sizes[schema.SAMPLE_DIM] for ds in datasets),
        schema.N_TOTAL: sum(int(ds.attrs[schema.N_TOTAL]) for ds in datasets),
        schema.NEXT_INDEX: int(datasets[-1].attrs[schema.NEXT_INDEX]),
        schema.SKIPPED_JSON: json.dumps(skipped),
        "complete": 1,
    })  # fmt: skip
    return attrs


def write_merged(
    paths: PathsLike,
    out: str | Path,
    *,
    overwrite: bool = False,
    chunk_size: int = 4096,
    progress: bool = False,
) -> Path:
    """Merge shard files into one feature file, ``chunk_size`` samples in memory at a time.

    ``out`` is checked first (:func:`repalign.store.outputs.check_output_file`): a
    netCDF name in an existing folder, not one of the shards, replaced only with
    ``overwrite``. The file is written under ``.OUT.partial`` and renamed when
    complete, so an interrupted merge never leaves a file that looks finished.
    """
    import netCDF4

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shard_paths = expand_paths(paths)
    out = check_output_file(out, FEATURES, overwrite=overwrite, inputs=shard_paths,
                            inputs_are="one of the shards")  # fmt: skip
    parts = _ordered_shards(shard_paths)
    first_shard = parts[0][0]
    merged = _merge_opened(parts)
    try:
        with (
            atomic_path(out) as tmp,
            netCDF4.Dataset(first_shard) as src,
            netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc,
        ):
            _create_like(src, merged, nc)
            n = merged.sizes[schema.SAMPLE_DIM]
            with progress_bar(f"merge {out.name}", n, enabled=progress) as advance:
                for lo in range(0, n, chunk_size):
                    hi = min(lo + chunk_size, n)
                    for name in merged.data_vars:
                        nc.variables[name][lo:hi] = merged[name][lo:hi].values
                    nc.variables[schema.SAMPLE_ID][lo:hi] = (
                        merged[schema.SAMPLE_ID].values[lo:hi].astype(object)
                    )
                    nc.setncatts({schema.N_WRITTEN: hi})
                    advance(hi)
            nc.setncatts({"complete": 1})
    finally:
        merged.close()
    log.info("merged %d shards (%d samples) into %s", len(shard_paths), n, out)
    return out


def _create_like(src: Any, merged: xr.Dataset, nc: Any) -> None:
    """Dims, variables and attrs of ``src`` (a shard) in ``nc``, with the merge's global attrs."""
    nc.createDimension(schema.SAMPLE_DIM, None)
    ids = nc.createVariable(schema.SAMPLE_ID, str, (schema.SAMPLE_DIM,))
    src_ids = src.variables[schema.SAMPLE_ID]
    ids.setncatts({k: src_ids.getncattr(k) for k in src_ids.ncattrs()})
    for name in merged.data_vars:
        var = src.variables[name]
        for dim in var.dimensions[1:]:
            if dim not in nc.dimensions:
                unlimited = src.dimensions[dim].isunlimited()
                nc.createDimension(dim, None if unlimited else len(src.dimensions[dim]))
        chunks = var.chunking()  # keep the shard's HDF5 chunk shape (read speed)
        new = nc.createVariable(
            name,
            "f4",
            var.dimensions,
            fill_value=_FILL,
            chunksizes=None if chunks == "contiguous" else chunks,
        )
        new.setncatts({k: var.getncattr(k) for k in var.ncattrs() if k != "_FillValue"})
    attrs = {**merged.attrs, "complete": 0, schema.N_WRITTEN: 0}
    nc.setncatts(attrs)
