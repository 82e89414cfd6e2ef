"""Similarity and distance metrics between representations ``x (n, d1)`` and ``y (n, d2)``.

Rows are the same ``n`` stimuli in the same order. Inputs are torch tensors
(any device) or numpy arrays; results are 0-d tensors on the input's device,
computed in float64 unless ``dtype=torch.float32`` is passed.
"""

from repalign.metrics._registry import MetricSpec, get_metric, list_metrics, register_metric
from repalign.metrics.cca import cca, pwcca, svcca
from repalign.metrics.cka import cka
from repalign.metrics.grid import pairwise
from repalign.metrics.knn import cknna, mutual_knn
from repalign.metrics.stats import bootstrap_ci, pair_statistics, permutation_test
from repalign.metrics.streaming import StreamingCCA, StreamingCKA
from repalign.metrics.wasserstein import wasserstein_distance

__all__ = [
    "MetricSpec",
    "StreamingCCA",
    "StreamingCKA",
    "bootstrap_ci",
    "cca",
    "cka",
    "cknna",
    "get_metric",
    "list_metrics",
    "mutual_knn",
    "pair_statistics",
    "pairwise",
    "permutation_test",
    "pwcca",
    "register_metric",
    "svcca",
    "wasserstein_distance",
]
