"""Activation extraction: forward hooks, pooling, a background writer and the runner."""

from repalign.extract.hooks import Recorder, record, select_layers
from repalign.extract.in_memory import extract_features
from repalign.extract.pooling import POOLINGS, pool
from repalign.extract.run import ExtractConfig, ExtractResult, extract

__all__ = [
    "POOLINGS",
    "ExtractConfig",
    "ExtractResult",
    "Recorder",
    "extract",
    "extract_features",
    "pool",
    "record",
    "select_layers",
]
