"""Paths and glob patterns given for feature, shard and score files."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PathsLike = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


_EXAMPLES = {"score": "'scores-*.nc'"}  # pattern examples by kind of file; shards by default


def is_pattern(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds glob characters (``*``, ``?``, ``[``)."""
    return glob.has_magic(os.fspath(path))


def expand_paths(paths: PathsLike, *, what: str = "shard") -> list[Path]:
    """A path, a glob pattern (``feats.shard*of4.nc``) or a list of either, as paths.

    Patterns expand in sorted order; one that matches nothing, or no path at all, is an
    error naming ``what`` files were looked for. Plain paths are returned as given.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if is_pattern(text):
            hits = sorted(glob.glob(text))
            if not hits:
                example = _EXAMPLES.get(what, "'feats.shard*of4.nc'")
                raise FileNotFoundError(
                    f"no file matches {text!r}; check the pattern (e.g. {example})"
                )
            out += [Path(h) for h in hits]
        else:
            out.append(Path(text))
    if not out:
        raise ValueError(f"no {what} file given")
    return out


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (``.NAME.partial``) to write; it replaces
    ``path`` when the block ends and is removed if the block fails, so an interrupted
    write never leaves a truncated file, nor one that looks finished."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
