"""Names shared by every file repalign writes: dimensions, coordinates, attributes.

Feature files (one per model x dataset x pooling):
  dims       ``sample`` (unlimited) and one width dim per layer, ``feature_dim(layer)``
             (plus ``token_dim(layer)`` for ``tokens`` pooling)
  coords     ``sample_id`` (string, along ``sample``)
  data vars  one float32 variable per layer, named by its canonical layer name
             (``text.layer.5``), attrs in ``LAYER_ATTRS``
  attrs      ``GLOBAL_FEATURE_ATTRS``; ``complete`` is 1 only once every sample is written

Score files:
  dims       ``metric``, ``layer_a``, ``layer_b``
  coords     ``layer_a``/``layer_b`` (names), ``stream_a``/``stream_b``,
             ``depth_a``/``depth_b`` (relative depth in [0, 1])
  data vars  ``score`` and optionally ``ci_low``, ``ci_high``, ``pvalue``, ``null_mean``
"""

from __future__ import annotations

SAMPLE_DIM = "sample"
SAMPLE_ID = "sample_id"
STREAMS = ("text", "vision", "fused")

# attrs every layer variable carries
LAYER_ATTRS = ("module_path", "stream", "depth", "relative_depth", "pooling")

# global attrs of a feature file
GLOBAL_FEATURE_ATTRS = (
    "repalign_version",
    "created",
    "model",
    "checkpoint",
    "checkpoint_sha256",
    "dataset",
    "pooling",
    "compute_dtype",
    "config_json",
    "versions_json",
    "complete",
)

#: a score file's per-pair statistics, besides ``score`` (in this order)
STAT_VARS = ("pvalue", "null_mean", "null_std", "ci_low", "ci_high")
METRIC_DIM = "metric"
LAYER_A, LAYER_B = "layer_a", "layer_b"


def feature_dim(layer: str) -> str:
    """Name of the width dimension of ``layer``'s variable."""
    return f"{layer}.dim"


def token_dim(layer: str) -> str:
    """Name of the token dimension of ``layer``'s variable under ``tokens`` pooling."""
    return f"{layer}.token"


# progress attrs of a feature file, updated after every appended batch (resume reads them)
N_WRITTEN = "n_written"  # rows whose every variable is written; rows past it are ignored
NEXT_INDEX = "next_index"  # dataset positions consumed so far (written + skipped at load time)
N_TOTAL = "n_total"  # dataset positions the run covers (len(dataset), or --limit)
SKIPPED_JSON = "skipped_json"  # JSON list of [sample_id, reason] for samples that could not be read
PROGRESS_FEATURE_ATTRS = (N_WRITTEN, NEXT_INDEX, N_TOTAL, SKIPPED_JSON)
SHARD = "shard"  # "K/N" when the file holds shard K of N of a sharded extraction, else ""


def parse_shard(spec: str) -> tuple[int, int]:
    """``(K, N)`` from a shard spec ``"K/N"``; ValueError unless ``0 <= K < N``."""
    try:
        k, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"a shard is K/N (e.g. 0/4), got {spec!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"shard {spec}: need 0 <= K < N")
    return k, n
