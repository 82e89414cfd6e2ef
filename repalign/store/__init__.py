"""Feature and score files (netCDF via xarray) and their plots."""

from repalign.store.scores import merge_scores, open_scores, write_scores

__all__ = ["merge_scores", "open_scores", "write_scores"]
