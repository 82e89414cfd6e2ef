"""What a result file records about how it was made: input hashes, library versions."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Sequence
from importlib import metadata


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_ids(ids: Sequence[str]) -> str:
    """Hex sha256 of the sample ids, in order, joined by newlines (UTF-8)."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def library_versions(*distributions: str) -> dict[str, str]:
    """``repalign`` and ``python`` versions, then each installed distribution's (those not
    installed are left out)."""
    import repalign

    out = {"repalign": repalign.__version__, "python": platform.python_version()}
    for dist in distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
