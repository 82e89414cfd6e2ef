"""Image-caption pairs from files: the Conceptual Captions layout (TSV + image folder).

The TSV has one pair per row, ``caption<TAB>image``; the image path is relative
to ``images`` (default: the TSV's folder). The image column may instead hold the
Conceptual Captions image URL: URLs are resolved through ``url_map.tsv`` in the image
folder (``url<TAB>local path`` per line, written by whatever downloaded them); a URL
without a local file is skipped like a missing image. An optional header row ``caption
image`` (any case) is skipped. ``sample_id`` is the 0-based data-row number,
zero-padded (``"0000012"``), so it never shifts when other rows are skipped.

Images are checked when the dataset is built (exists, and PIL reads its header):
unreadable ones go to :attr:`ImageTextRecords.skipped` and are left out. An image
that only fails when decoded later raises :class:`UnreadableImage`, which the
extraction runner also records as skipped.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from repalign.data.base import Sample

log = logging.getLogger(__name__)


class UnreadableImage(Exception):
    """An image that could not be decoded when its sample was loaded."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"{sample_id}: {reason}")
        self.sample_id, self.reason = sample_id, reason


@dataclass(frozen=True)
class Record:
    """One row of a data file, before its image is loaded."""

    sample_id: str
    text: str | None
    image_path: Path | None
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def check_image(path: Path) -> str | None:
    """``None`` if ``path`` looks like a readable image, else why not."""
    if not path.is_file():
        return f"missing image {path}"
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018  (parses the header)
    except Exception as exc:  # PIL raises many types for bad files
        return f"unreadable image {path}: {type(exc).__name__}: {exc}"
    return None


class ImageTextRecords(Sequence[Sample]):
    """Samples from file records; images are opened lazily, unreadable ones skipped."""

    def __init__(
        self,
        records: Iterable[Record],
        *,
        check_images: bool = True,
        skipped: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._records: list[Record] = []
        self._skipped: list[tuple[str, str]] = list(skipped)  # found by the file reader
        for rec in records:
            reason = check_image(rec.image_path) if (check_images and rec.image_path) else None
            if reason is None:
                self._records.append(rec)
            else:
                self._skipped.append((rec.sample_id, reason))
        if self._skipped:
            log.warning(
                "skipped %d sample(s) with missing or unreadable images (first: %s)",
                len(self._skipped),
                self._skipped[0][1],
            )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        rec = self._records[index]
        image = None
        if rec.image_path is not None:
            try:
                with Image.open(rec.image_path) as im:
                    image = im.convert("RGB")
            except Exception as exc:
                raise UnreadableImage(rec.sample_id, f"{type(exc).__name__}: {exc}") from exc
        return Sample(rec.sample_id, rec.text, image, rec.label, dict(rec.meta))

    @property
    def skipped(self) -> Sequence[tuple[str, str]]:
        return tuple(self._skipped)

    @property
    def sample_ids(self) -> list[str]:
        return [r.sample_id for r in self._records]


def read_captions_tsv(path: str | Path, images: str | Path | None = None) -> ImageTextRecords:
    """A Conceptual-Captions-style TSV (``caption<TAB>image``) as samples (see module docstring)."""
    path = Path(path)
    root = Path(images) if images is not None else path.parent
    records = []
    skipped: list[tuple[str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read captions TSV {path}: {exc}") from None
    url_map = _read_url_map(root / URL_MAP)
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["caption", "image"]:
        rows = rows[1:]
    width = max(len(str(max(len(rows) - 1, 0))), 7)
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise ValueError(
                f"{path}, data row {i}: expected 'caption<TAB>image', got {len(row)} column(s)"
            )
        sample_id = f"{i:0{width}d}"
        image = row[1].strip()
        if image.startswith(("http://", "https://")):
            local = url_map.get(image)
            if local is None:
                skipped.append((sample_id, f"image URL not downloaded (not in {URL_MAP}): {image}"))
                continue
            image = local
        records.append(Record(sample_id, row[0], root / image))
    return ImageTextRecords(records, skipped=skipped)


URL_MAP = "url_map.tsv"


def _read_url_map(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 2:
                out[row[0].strip()] = row[1].strip()
    return out
