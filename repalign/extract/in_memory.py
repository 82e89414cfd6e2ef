"""Features in memory, for a notebook: the streaming extractor run into a temporary file
that is read back and removed."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from repalign.data.base import Sample
from repalign.models.base import Adapter


def extract_features(adapter: Adapter, dataset: Sequence[Sample], **options: Any) -> xr.Dataset:
    """Pooled features of ``dataset`` as an in-memory ``xarray.Dataset`` (one variable per
    layer, indexed by ``sample_id``, with the provenance attrs a feature file has).

    ``options`` are :class:`~repalign.extract.run.ExtractConfig` fields (``layers``,
    ``pool``, ``batch_size``, ``device``, ``dtype`` ...). The same code path as
    :func:`~repalign.extract.run.extract` writes a temporary file, so the values equal a
    feature file's; for datasets larger than memory write a file instead.
    """
    from repalign.extract.run import extract
    from repalign.store.features import open_features

    for key in ("resume", "overwrite", "shard"):
        if options.get(key):
            raise ValueError(f"{key} applies to feature files; use extract(...) with a path")
    with tempfile.TemporaryDirectory(prefix="repalign-") as tmp:
        path = Path(tmp) / "features.nc"
        extract(adapter, dataset, path, **options)
        with open_features(path, require_complete=True) as ds:
            return ds.load()
