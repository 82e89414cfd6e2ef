"""Compare feature files: every selected layer of A against every selected layer of B.

This is the library behind ``repalign compare``::

    from repalign.compare import compare
    scores = compare(["vilbert.nc"], ["cka", ("cka", {"unbiased": True}), "mutual_knn"],
                     layers_a=["text.*"], layers_b=["vision.*"], permutations=200)

- :mod:`~repalign.compare.layers`: select layers by pattern, read them, check that two
  files hold the same stimuli in the same order;
- :mod:`~repalign.compare.scoring`: score in-memory layers (a grid, depth-matched pairs,
  permutation null and bootstrap interval);
- :mod:`~repalign.compare.pipeline`: files in, score Dataset with provenance out;
- :mod:`~repalign.compare.streaming`: the same for linear CKA and CCA over files larger
  than memory, from streamed moments (``compare --streaming``).
- :mod:`~repalign.compare.resume`: the metrics an interrupted compare finished
  (``OUT.partial.nc``), for ``compare --resume``.
"""

from repalign.compare.layers import (
    Side,
    align_sample_ids,
    describe_layers,
    load_side,
    select_layers,
)
from repalign.compare.pipeline import (
    ComparisonInterrupted,
    StatsPairs,
    compare,
    provenance_attrs,
    run_config,
)
from repalign.compare.scoring import (
    MetricRequest,
    matched_pairs,
    metric_scores,
    parse_requests,
    score_layers,
)
from repalign.compare.streaming import streaming_compare

__all__ = [
    "ComparisonInterrupted",
    "MetricRequest",
    "Side",
    "StatsPairs",
    "align_sample_ids",
    "compare",
    "describe_layers",
    "load_side",
    "matched_pairs",
    "metric_scores",
    "parse_requests",
    "provenance_attrs",
    "run_config",
    "score_layers",
    "select_layers",
    "streaming_compare",
]
