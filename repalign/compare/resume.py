"""Continuing an interrupted ``compare``: the metrics that finished before a Ctrl-C or
SIGTERM are in ``OUT.partial.nc`` (``OUT.partial2.nc`` ...); ``compare --resume`` reads them,
checks they come from the same feature files and settings, and computes only the rest."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

#: run settings that must match for scores to be merged (the device may change; the
#: feature files are compared by content, so they may be named differently)
RESUME_KEYS = ("layers_a", "layers_b", "permutations", "bootstrap", "level", "seed",
               "align_on_ids", "stats_pairs")  # fmt: skip


def partial_path(out: str | os.PathLike[str]) -> Path:
    """A new ``OUT.partial.nc`` name next to ``out`` (``OUT.partial2.nc`` ... if taken)."""
    out = Path(out)
    path, k = out.with_name(f"{out.stem}.partial{out.suffix}"), 2
    while path.exists():
        path, k = out.with_name(f"{out.stem}.partial{k}{out.suffix}"), k + 1
    return path


def partial_files(out: str | os.PathLike[str]) -> list[Path]:
    """The partial score files an interrupted ``compare --out OUT`` left, oldest name first."""
    out = Path(out)
    found = [p for p in out.parent.glob(f"{out.stem}.partial*{out.suffix}")]
    return sorted(found, key=lambda p: (len(p.name), p.name))


def finished_metrics(
    out: str | os.PathLike[str], settings: Mapping[str, Any], files_sha256: Sequence[str]
) -> tuple[xr.Dataset, list[Path]]:
    """The score Dataset of the metrics finished toward ``out`` and the files it came from.

    ``settings`` are this run's values of :data:`RESUME_KEYS`; ``files_sha256`` the hashes
    of this run's feature files. Raises ValueError when there is nothing to resume or when
    a partial file was computed from other files or with other settings.
    """
    from repalign.store.scores import merge_scores, open_scores

    paths = partial_files(out)
    if not paths:
        raise ValueError(
            f"--resume: no {Path(out).stem}.partial*.nc next to {out} (an interrupted "
            "compare writes one); run without --resume"
        )
    parts = [open_scores(path) for path in paths]  # each read once
    for path, part in zip(paths, parts, strict=True):
        attrs = part.attrs
        config = json.loads(attrs.get("config_json", "{}"))
        differ = [k for k in RESUME_KEYS if _plain(config.get(k)) != _plain(settings.get(k))]
        if json.loads(attrs.get("feature_files_sha256", "[]")) != list(files_sha256):
            differ.append("the feature files' contents")
        if differ:
            raise ValueError(
                f"--resume: {path} was computed with other {', '.join(differ)}; run with the "
                "settings it records (`repalign info` shows them) or without --resume"
            )
    return (parts[0] if len(parts) == 1 else merge_scores(parts)), paths


def _plain(value: Any) -> Any:
    """Tuples and lists compare alike (JSON has only lists)."""
    return json.loads(json.dumps(value, default=str))
