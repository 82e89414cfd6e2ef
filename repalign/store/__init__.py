"""Feature and score files (netCDF via xarray) and their plots."""
