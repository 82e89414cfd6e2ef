"""The depth-matched layer pairs of a score file, with their statistics: what
``repalign info SCORES.nc`` prints and the demo's summary is written from."""

from __future__ import annotations

import os
from dataclasses import dataclass

import xarray as xr

from repalign.store.scores import from_one_file, holds_scores, layer_axis, matched_pairs

_NAN = float("nan")


@dataclass(frozen=True)
class MatchedRow:
    """One depth-matched layer pair of a score file, with its statistics (NaN if absent)."""

    layer_a: str
    layer_b: str
    depth: float
    score: float
    null_mean: float = _NAN
    null_std: float = _NAN
    pvalue: float = _NAN
    ci_low: float = _NAN
    ci_high: float = _NAN

    @property
    def z(self) -> float:
        """How many null standard deviations the score lies from the null mean."""
        return (self.score - self.null_mean) / self.null_std if self.null_std > 0 else _NAN


def matched_rows(ds: xr.Dataset, metric: str) -> list[MatchedRow]:
    """The depth-matched pairs of ``ds`` (see :func:`repalign.store.scores.matched_pairs`) by depth."""
    m = ds.sel(metric=metric)
    rows = []
    for i, j in matched_pairs(layer_axis(ds, "a"), layer_axis(ds, "b"), same=from_one_file(ds)):
        stats = {str(k): float(m[k].values[i, j]) for k in m.data_vars}
        rows.append(
            MatchedRow(
                str(ds.layer_a.values[i]),
                str(ds.layer_b.values[j]),
                float(ds.depth_a.values[i]),
                **{k: v for k, v in stats.items() if k in MatchedRow.__dataclass_fields__},
            )
        )
    return sorted(rows, key=lambda r: r.depth)


def is_score_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable netCDF file holding a ``score`` over metrics (a file
    ``repalign compare`` wrote); False for feature files and anything unreadable."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return holds_scores(ds)
    except (OSError, ValueError):
        return False
