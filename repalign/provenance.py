"""What a result file records about how it was made: input hashes, library versions."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    return _hash_file(hashlib.sha256(), path, chunk).hexdigest()


def sha256_of_path(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """sha256 over a file, or over every file of a directory (relative names and contents,
    sorted), so the same checkpoint always hashes the same. Empty string if it does not exist."""
    p = Path(path)
    if not p.exists():
        return ""
    if p.is_file():
        return sha256_file(p, chunk)
    digest = hashlib.sha256()
    for f in sorted(f for f in p.rglob("*") if f.is_file()):
        digest.update(str(f.relative_to(p)).encode())
        _hash_file(digest, f, chunk)
    return digest.hexdigest()


def _hash_file(digest: Any, path: str | os.PathLike[str], chunk: int) -> Any:
    """``digest`` updated with the bytes of ``path``, read ``chunk`` bytes at a time."""
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest


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
