"""A preprocessed image cache: resized uint8 images in one memory-mapped file.

``build_cache(dataset, out)`` decodes every image once, centre-crops and
resizes it to ``size x size`` RGB and writes

- ``images.u8``: a raw ``(n, size, size, 3)`` uint8 array (memory-mapped on read);
- ``index.jsonl``: one line per cached sample (id, text, label, JSON-safe meta);
- ``cache.json``: shape, source and ``complete: true``, written last.

Later epochs read :class:`CachedImages`, which decodes no image files and opens
the memory map lazily in each process, so it can be handed to DataLoader
worker processes (the map itself is never pickled). Building writes to a
temporary folder renamed into place at the end: an interrupted build leaves
no half cache behind, and an existing complete cache of the same source and
size is reused instead of rebuilt. Unreadable images are skipped and listed in
``cache.json``; a build in which no image at all can be read is an error, not
an empty cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from repalign._progress import progress_bar
from repalign.data.base import Sample
from repalign.data.captions import UnreadableImage
from repalign.data.synthetic import Scene

log = logging.getLogger(__name__)

IMAGES, INDEX, HEADER = "images.u8", "index.jsonl", "cache.json"
VERSION = 1


def _meta_to_json(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, Scene):
            out[key] = {"__scene__": dataclasses.asdict(value)}
        else:
            try:
                json.dumps(value)
            except TypeError:
                continue  # not representable; a cache only keeps JSON-safe meta
            out[key] = value
    return out


def _meta_from_json(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        k: Scene(**v["__scene__"]) if isinstance(v, dict) and "__scene__" in v else v
        for k, v in meta.items()
    }


def resize_image(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to square and resize to ``(size, size, 3)`` uint8."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def build_cache(
    dataset: Sequence[Sample],
    out: str | Path,
    *,
    size: int = 64,
    source: str = "",
    progress: bool = True,
) -> Path:
    """Write the cache of ``dataset`` at ``out`` (skipped if a matching one exists)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; the cache is a folder: give a new one")
    header_path = out / HEADER
    if header_path.is_file():
        header = json.loads(header_path.read_text())
        if header.get("complete") and header.get("n", 0) == 0:
            raise _empty_cache(out, len(header.get("skipped", [])))
        if header.get("complete") and header.get("size") == size and header.get("source") == source:
            log.info("cache %s already holds %d images of %s; reusing it", out, header["n"], source)
            return out
        raise FileExistsError(
            f"{out} already holds a different cache (source={header.get('source')!r}, "
            f"size={header.get('size')}); pass another --out or delete it"
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an image cache; pass an empty or new --out")
    tmp = out.with_name(f".{out.name}.building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        kept, skipped = _write_images(dataset, tmp, size, progress)
        if kept == 0:
            # An empty cache could not be memory-mapped, and would be silently reused by
            # the next build even after the images are fixed: refuse to write one.
            raise ValueError(_nothing_readable(skipped, source))
        header = {
            "version": VERSION,
            "n": kept,
            "size": size,
            "source": source,
            "skipped": [list(s) for s in skipped],
            "complete": True,
        }
        (tmp / HEADER).write_text(json.dumps(header, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-built cache left behind
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    if skipped:
        log.warning("cache %s: skipped %d unreadable sample(s)", out, len(skipped))
    log.info("cached %d images of %dx%d at %s", kept, size, size, out)
    return out


def _write_images(
    dataset: Sequence[Sample], tmp: Path, size: int, progress: bool
) -> tuple[int, list[tuple[str, str]]]:
    """Write ``images.u8`` and ``index.jsonl`` into ``tmp``; the kept count and the skips."""
    n = len(dataset)
    array = np.memmap(tmp / IMAGES, dtype=np.uint8, mode="w+", shape=(max(n, 1), size, size, 3))
    skipped = [tuple(s) for s in getattr(dataset, "skipped", ())]
    kept = 0
    with (
        (tmp / INDEX).open("w") as index,
        progress_bar("caching images", n, enabled=progress) as update,
    ):
        for i in range(n):
            try:
                sample = dataset[i]
            except UnreadableImage as err:
                skipped.append((err.sample_id, err.reason))
                sample = None
            if sample is not None and sample.image is None:
                skipped.append((sample.sample_id, "no image"))
            elif sample is not None:
                array[kept] = resize_image(sample.image, size)
                record = {
                    "sample_id": sample.sample_id,
                    "text": sample.text,
                    "label": sample.label,
                    "meta": _meta_to_json(sample.meta),
                }
                index.write(json.dumps(record) + "\n")
                kept += 1
            update(i + 1)
    array.flush()
    del array
    # Trim the file to the images actually kept (skips leave a tail).
    with (tmp / IMAGES).open("r+b") as f:
        f.truncate(kept * size * size * 3)
    return kept, skipped


def _nothing_readable(skipped: Sequence[tuple[str, str]], source: str) -> str:
    """The error for a build in which no image could be read."""
    what = f"{source!r}" if source else "the dataset"
    if not skipped:
        return f"{what} holds no samples; there is nothing to cache"
    shown = "; ".join(f"{sid}: {reason}" for sid, reason in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (
        f"no image of {what} could be read: all {len(skipped)} sample(s) were skipped "
        f"({shown}{more}); check the image files and the image folder (--images), "
        "then build the cache again"
    )


def _empty_cache(path: Path, n_skipped: int) -> ValueError:
    """An empty cache (older versions wrote one when no image was readable) is unusable."""
    return ValueError(
        f"the cache at {path} holds no images ({n_skipped} sample(s) were skipped as "
        "unreadable); fix the images, delete it and build it again"
    )


class CachedImages(Sequence[Sample]):
    """The samples of a cache; images come from the memory map, no decoding."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        header_path = self.path / HEADER
        if not header_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a complete image cache (no {HEADER}); build it with "
                f"`repalign data cache DATA --out {self.path}`"
            )
        header = json.loads(header_path.read_text())
        if not header.get("complete"):
            raise ValueError(f"the cache at {self.path} is incomplete; rebuild it")
        self.size: int = header["size"]
        self.n: int = header["n"]
        self.source: str = header.get("source", "")
        self._skipped = [tuple(s) for s in header.get("skipped", [])]
        if self.n == 0:  # only older versions wrote these; build_cache now refuses
            raise _empty_cache(self.path, len(self._skipped))
        expected = self.n * self.size * self.size * 3
        actual = (self.path / IMAGES).stat().st_size
        if actual != expected:
            raise ValueError(
                f"{self.path / IMAGES} has {actual} bytes, expected {expected} for {self.n} images "
                f"of {self.size}x{self.size}; the cache is corrupted, rebuild it"
            )
        lines = (self.path / INDEX).read_text().splitlines()
        self._records = [json.loads(x) for x in lines if x.strip()]
        if len(self._records) != self.n:
            raise ValueError(
                f"{self.path / INDEX} lists {len(self._records)} samples, expected {self.n}"
            )
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # each worker process maps the file itself
        return state

    def array(self) -> np.ndarray:
        """The ``(n, size, size, 3)`` uint8 memory map (read-only)."""
        if self._array is None:
            self._array = np.memmap(
                self.path / IMAGES,
                dtype=np.uint8,
                mode="r",
                shape=(self.n, self.size, self.size, 3),
            )
        return self._array

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for a cache of {self.n} images")
        index %= self.n
        record = self._records[index]
        image = Image.fromarray(np.array(self.array()[index]))
        return Sample(
            sample_id=record["sample_id"],
            text=record["text"],
            image=image,
            label=record["label"],
            meta=_meta_from_json(record["meta"]),
        )

    @property
    def skipped(self) -> Sequence[tuple[str, str]]:
        return tuple(self._skipped)
