"""Tiny feature files written with xarray, following ``repalign.store.schema``.

The layers share a latent signal ``z``; noise grows with depth for the text
stream and shrinks with depth for the vision stream, so scores have structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from repalign.store.schema import SAMPLE_DIM, SAMPLE_ID, feature_dim


def write_features(
    path: Path,
    *,
    n: int = 40,
    streams: Sequence[str] = ("text", "vision"),
    depth: int = 3,
    width: int = 6,
    seed: int = 0,
    ids: Sequence[str] | None = None,
    model: str = "toy",
    complete: int = 1,
) -> Path:
    """Write ``{stream}.layer.{k}`` for each stream and ``k < depth``; return ``path``."""
    rng = np.random.default_rng(seed)
    z = np.random.default_rng(1234).normal(size=(n, 4))
    ids = list(ids) if ids is not None else [f"s{i:04d}" for i in range(n)]
    data_vars = {}
    for s, stream in enumerate(streams):
        for k in range(depth):
            noise = (k + 1) / depth if s % 2 == 0 else (depth - k) / depth
            x = z @ rng.normal(size=(4, width)) + noise * rng.normal(size=(n, width))
            name = f"{stream}.layer.{k}"
            data_vars[name] = xr.Variable(
                (SAMPLE_DIM, feature_dim(name)),
                x.astype(np.float32),
                attrs={
                    "module_path": f"enc.{stream}.{k}",
                    "stream": stream,
                    "depth": k + 1,
                    "relative_depth": (k + 1) / depth,
                    "pooling": "mean",
                },
            )
    ds = xr.Dataset(
        data_vars,
        coords={SAMPLE_ID: (SAMPLE_DIM, np.array(ids, dtype=object))},
        attrs={"model": model, "pooling": "mean", "complete": complete, "n_written": n},
    )
    ds.to_netcdf(path, engine="netcdf4")
    return path
