"""Feature files: written batch by batch with netCDF4, read back with xarray.

Layout (names from :mod:`repalign.store.schema`): an unlimited ``sample``
dimension, a ``sample_id`` string coordinate, and one float32 variable per layer,
named by its canonical name, of dims ``(sample, feature_dim(layer))`` or, for
``tokens`` pooling, ``(sample, token_dim(layer), feature_dim(layer))`` (the token
dim is unlimited too; positions past a sample's length are NaN).

Each append writes the layer variables, then the sample ids, then the progress
attrs (``n_written`` ...) and syncs the file to disk. A run killed part-way
therefore leaves ``n_written`` at the last complete batch: readers ignore any
rows after it, and a resumed run overwrites them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from repalign.models.base import LayerInfo
from repalign.store import schema
from repalign.store.paths import is_pattern

log = logging.getLogger(__name__)

_FILL = np.float32(np.nan)


class FeatureFile:
    """An open feature file that batches are appended to. Use :meth:`create` or :meth:`append_to`."""

    def __init__(self, nc: Any, path: Path) -> None:
        self._nc = nc
        self.path = path

    @classmethod
    def create(
        cls,
        path: str | Path,
        layers: Sequence[LayerInfo],
        example: Mapping[str, np.ndarray],
        *,
        pooling: str,
        attrs: Mapping[str, str | int | float],
    ) -> FeatureFile:
        """Create ``path`` with one variable per layer, shaped like ``example[layer.name]``
        (one batch of features), and the global ``attrs``; ``complete`` starts at 0."""
        import netCDF4

        path = Path(path)
        nc = netCDF4.Dataset(path, "w", format="NETCDF4")
        try:
            nc.createDimension(schema.SAMPLE_DIM, None)
            ids = nc.createVariable(schema.SAMPLE_ID, str, (schema.SAMPLE_DIM,))
            ids.long_name = "stable id of each sample, from the data file"
            for info in layers:
                arr = example[info.name]
                nc.createDimension(schema.feature_dim(info.name), arr.shape[-1])
                dims = (schema.SAMPLE_DIM, schema.feature_dim(info.name))
                if arr.ndim == 3:
                    nc.createDimension(schema.token_dim(info.name), None)
                    dims = (
                        schema.SAMPLE_DIM,
                        schema.token_dim(info.name),
                        schema.feature_dim(info.name),
                    )
                var = nc.createVariable(
                    info.name, "f4", dims, fill_value=_FILL, chunksizes=_chunks(arr.shape)
                )
                var.setncatts(layer_attrs(info, pooling))
                var.coordinates = schema.SAMPLE_ID
            nc.setncatts({**attrs, "complete": 0, schema.N_WRITTEN: 0, schema.SKIPPED_JSON: "[]"})
            nc.sync()
        except BaseException:
            nc.close()
            raise
        return cls(nc, path)

    @classmethod
    def append_to(cls, path: str | Path) -> FeatureFile:
        """Open an existing file to append more batches (for ``--resume``)."""
        import netCDF4

        path = Path(path)
        try:
            nc = netCDF4.Dataset(path, "a")
        except OSError as exc:
            raise ValueError(
                f"cannot open {path} to resume ({exc}): another process may have it open (close "
                "it there), or it is damaged (then start again with --overwrite)"
            ) from None
        return cls(nc, path)

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: self._nc.getncattr(k) for k in self._nc.ncattrs()}

    @property
    def layer_names(self) -> list[str]:
        return [name for name in self._nc.variables if name != schema.SAMPLE_ID]

    @property
    def n_written(self) -> int:
        return int(self._nc.getncattr(schema.N_WRITTEN))

    def sample_ids(self) -> list[str]:
        return [str(s) for s in self._nc.variables[schema.SAMPLE_ID][: self.n_written]]

    def append(
        self,
        sample_ids: Sequence[str],
        features: Mapping[str, np.ndarray],
        *,
        progress: Mapping[str, str | int] | None = None,
    ) -> None:
        """Write one batch after the last complete row, then commit it (see module docstring).

        ``progress`` holds attrs updated in the same commit (``next_index``, ``skipped_json``).
        """
        start = self.n_written
        stop = start + len(sample_ids)
        if not sample_ids:  # every sample of the batch was unreadable: record progress only
            self._nc.setncatts(dict(progress or {}))
            self._nc.sync()
            return
        for name in self.layer_names:
            arr = features[name]
            if arr.shape[0] != len(sample_ids):
                raise ValueError(f"{name}: {arr.shape[0]} rows for {len(sample_ids)} sample ids")
            var = self._nc.variables[name]
            if arr.ndim == 3:
                var[start:stop, : arr.shape[1], :] = arr
            else:
                var[start:stop, :] = arr
        self._nc.variables[schema.SAMPLE_ID][start:stop] = np.array(list(sample_ids), dtype=object)
        self._nc.setncatts({**(progress or {}), schema.N_WRITTEN: stop})
        self._nc.sync()

    def set_attrs(self, attrs: Mapping[str, str | int | float]) -> None:
        self._nc.setncatts(dict(attrs))
        self._nc.sync()

    def mark_complete(self) -> None:
        self.set_attrs({"complete": 1})

    def close(self) -> None:
        if self._nc.isopen():
            self._nc.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(batch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """HDF5 chunk shape for a variable appended in batches of ``batch_shape``.

    netCDF's default for an unlimited dimension is one row per chunk, which makes every
    append touch thousands of chunks (measured: ~4x slower at 128-row batches). Rows per
    chunk follow the batch (32-128); token variables get about 4 MB chunks.
    """
    rows, width = batch_shape[0], batch_shape[-1]
    if len(batch_shape) == 2:
        return (min(max(rows, 32), 128), width)
    tokens = min(batch_shape[1], 256)
    return (max(1, min(rows, (1 << 20) // (tokens * width))), tokens, width)


def layer_attrs(info: LayerInfo, pooling: str) -> dict[str, str | int | float]:
    """The per-variable attrs of ``schema.LAYER_ATTRS`` (plus ``sources`` for derived layers)."""
    attrs: dict[str, str | int | float] = {
        "module_path": info.module_path,
        "stream": info.stream,
        "depth": int(info.depth),
        "relative_depth": float(info.relative_depth),
        "pooling": pooling,
    }
    if info.sources:
        attrs["sources"] = ",".join(info.sources)
    return attrs


def open_features(
    path: str | Path | Sequence[str | Path], *, require_complete: bool = False
) -> xr.Dataset:
    """Open a feature file as an ``xarray.Dataset`` indexed by ``sample_id``.

    Rows past ``n_written`` (a batch interrupted mid-write) are dropped. An
    incomplete file (``complete == 0``) is returned with a warning, or refused
    with ``require_complete=True``. A list of paths or a glob pattern opens the
    shard files of a sharded extraction as one lazy Dataset
    (:func:`repalign.store.merge.open_merged`; every shard must be complete).
    """
    if not isinstance(path, str | Path) or (not Path(path).exists() and is_pattern(path)):
        from repalign.store.merge import open_merged

        return open_merged(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no feature file at {path}; create one with `repalign extract`")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a feature file (.nc from `repalign extract`)")
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable netCDF feature file: {exc}") from None
    if schema.SAMPLE_ID not in ds.variables:
        ds.close()
        from repalign.store.scores import holds_scores

        if holds_scores(ds):
            raise ValueError(
                f"{path} is a score file (written by `repalign compare`), not a feature file: "
                f"draw it with `repalign plot {path}`, print it with `repalign info {path}`, or "
                "open it in Python with repalign.store.scores.open_scores; feature files come "
                "from `repalign extract`"
            )
        raise ValueError(
            f"{path} has no {schema.SAMPLE_ID!r} variable; it is not a repalign feature file"
        )
    n = int(ds.attrs.get(schema.N_WRITTEN, ds.sizes[schema.SAMPLE_DIM]))
    if n < ds.sizes[schema.SAMPLE_DIM]:
        ds = ds.isel({schema.SAMPLE_DIM: slice(0, n)})
    if schema.SAMPLE_ID not in ds.coords:
        ds = ds.set_coords(schema.SAMPLE_ID)
    if int(ds.attrs.get("complete", 0)) != 1:
        msg = f"{path} is incomplete ({n} of {ds.attrs.get(schema.N_TOTAL, '?')} samples written)"
        if require_complete:
            ds.close()
            raise ValueError(msg + "; finish it with `repalign extract ... --resume`")
        log.warning(msg)
    return ds


def skipped_samples(ds: xr.Dataset) -> list[tuple[str, str]]:
    """``(sample_id, reason)`` for samples the extraction skipped (unreadable images)."""
    return [tuple(x) for x in json.loads(ds.attrs.get(schema.SKIPPED_JSON, "[]"))]  # type: ignore[misc]
