"""Activation extraction: forward hooks, pooling, a background writer and the runner."""

from repalign.extract.hooks import Recorder, record, select_layers
from repalign.extract.pooling import POOLINGS, pool

__all__ = ["POOLINGS", "Recorder", "pool", "record", "select_layers"]
