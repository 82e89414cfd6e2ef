"""Similarity and distance metrics between representations ``x (n, d1)`` and ``y (n, d2)``."""

from repalign.metrics._registry import MetricSpec, get_metric, list_metrics, register_metric

__all__ = ["MetricSpec", "get_metric", "list_metrics", "register_metric"]
